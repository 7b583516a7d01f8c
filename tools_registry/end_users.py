"""Whom an agent's call is for: the end user, and the roles the call may use.

Two ways, chosen per agent by an admin (``Agent.user_roles_from``):

* *asserted*: the agent sends ``on_behalf_of`` as ``{"id": "...", "roles": [...]}``; it must
  be trusted to assert roles, and only the roles listed for it (``assertable_roles``);
* *verified*: the agent forwards the user's token from the organisation's identity
  provider; the id and roles are taken from its claims once it verifies
  (``user_tokens``).

A plain string ``on_behalf_of`` (or an object without roles) names a user without roles,
for any agent, as before roles existed. Anything else is refused with ``Refused``, whose
``code`` names the problem: a malformed or oversized user (``invalid_end_user``), roles the
agent may not assert (``role_not_assertable``), a token that does not verify
(``user_token_invalid``) or whose keys cannot be had (``identity_provider_unavailable``,
worth retrying). A token is never ignored: a call that carries one is verified or refused.
"""

from __future__ import annotations

from typing import Any

from tools_registry import user_tokens
from tools_registry.models import Agent
from tools_registry.role_scopes import (
    MAX_ROLE_LENGTH,
    MAX_USER_ID_LENGTH,
    NOBODY,
    EndUser,
    is_role,
    is_user_id,
)

MAX_ROLES = 32
# The JSON of an on_behalf_of object, at most: an id and a few roles fit many times over.

INVALID_END_USER = "invalid_end_user"
ROLE_NOT_ASSERTABLE = "role_not_assertable"
USER_TOKEN_INVALID = "user_token_invalid"  # noqa: S105 - an error code
PROVIDER_UNAVAILABLE = "identity_provider_unavailable"


class Refused(Exception):
    """The end user a request names cannot be accepted; ``code`` says why."""

    def __init__(self, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def identify(
    agent: Agent, *, on_behalf_of: Any, user_token: Any, roles_alone: bool = False
) -> EndUser:
    """The end user of a request from ``agent``: ``on_behalf_of`` as sent (a string, an
    object, or None), and the user's token if one came with it (as sent: MCP's ``_meta``
    may hold any JSON). ``roles_alone``: the object may give roles without an id (a tool
    list asked for "a viewer", not a call)."""
    if user_token is not None and not isinstance(user_token, str):
        raise Refused(USER_TOKEN_INVALID, "The user token is not valid: it is not a string.")
    user_id, roles = _named(on_behalf_of, id_required=not roles_alone)
    if user_token:
        return _verified(agent, user_token, named=user_id, asserted=roles)
    if not roles:  # none given, or an empty list: nothing asserted
        return EndUser(id=user_id, source="named") if user_id else NOBODY
    if agent.user_roles_from != Agent.UserRoles.ASSERTED:
        raise Refused(
            ROLE_NOT_ASSERTABLE,
            "This agent is not trusted to assert its users' roles."
            + (
                " Its users' roles come from their tokens."
                if agent.user_roles_from == Agent.UserRoles.VERIFIED
                else ""
            ),
            {"roles": list(roles)},
        )
    refused = [role for role in roles if role not in (agent.assertable_roles or [])]
    if refused:
        raise Refused(
            ROLE_NOT_ASSERTABLE,
            f"This agent may not assert the role(s) {', '.join(map(repr, refused))}.",
            {"roles": refused, "assertable": list(agent.assertable_roles or [])},
        )
    return EndUser(id=user_id, roles=roles, source="asserted")


def _named(on_behalf_of: Any, *, id_required: bool = True) -> tuple[str, tuple[str, ...] | None]:
    """The id and the roles (None when none were given) of ``on_behalf_of`` as sent."""
    if on_behalf_of is None or on_behalf_of == "":
        return "", None
    if isinstance(on_behalf_of, str):
        return _user_id(on_behalf_of, "$.on_behalf_of"), None
    if not isinstance(on_behalf_of, dict):
        raise _invalid("$.on_behalf_of", "is a string (the user's id) or an object {id, roles}")
    if unknown := sorted(set(on_behalf_of) - {"id", "roles"}):
        raise _invalid(f"$.on_behalf_of.{unknown[0]}", "is not a field: give only id and roles")
    if "id" not in on_behalf_of and id_required:
        raise _invalid("$.on_behalf_of.id", "is required")
    user_id = _user_id(on_behalf_of["id"], "$.on_behalf_of.id") if "id" in on_behalf_of else ""
    if "roles" not in on_behalf_of:
        return user_id, None
    roles = on_behalf_of["roles"]
    if not isinstance(roles, list) or len(roles) > MAX_ROLES:
        raise _invalid("$.on_behalf_of.roles", f"is a list of at most {MAX_ROLES} role names")
    for index, role in enumerate(roles):
        if not is_role(role):
            raise _invalid(
                f"$.on_behalf_of.roles[{index}]",
                f"is not a role name (a string of 1 to {MAX_ROLE_LENGTH} printable characters)",
            )
    return user_id, tuple(dict.fromkeys(roles))


def _user_id(value: Any, path: str) -> str:
    if not is_user_id(value):
        raise _invalid(path, f"is not a user id (1 to {MAX_USER_ID_LENGTH} printable characters)")
    return value


def _invalid(path: str, problem: str) -> Refused:
    return Refused(
        INVALID_END_USER,
        f"The end user is not valid: {path} {problem}.",
        [{"path": path, "message": problem}],
    )


def _verified(agent: Agent, token: str, *, named: str, asserted: tuple[str, ...] | None) -> EndUser:
    provider = agent.identity_provider
    if agent.user_roles_from != Agent.UserRoles.VERIFIED or provider is None:
        raise Refused(
            USER_TOKEN_INVALID,
            "This agent is not set up to verify user tokens, so the token cannot be used.",
        )
    if asserted:
        raise Refused(
            ROLE_NOT_ASSERTABLE,
            "Roles come from the user's token for this agent; on_behalf_of may not add any.",
            {"roles": list(asserted)},
        )
    try:
        claims = user_tokens.verify(provider, token)
        user_id, roles = user_tokens.user_of(provider, claims)
    except user_tokens.TokenInvalid as exc:
        raise Refused(USER_TOKEN_INVALID, f"The user token is not valid: {exc.reason}.") from None
    except user_tokens.ProviderUnavailable as exc:
        raise Refused(
            PROVIDER_UNAVAILABLE, f"The user token cannot be checked now: {exc.reason}."
        ) from None
    if named and named != user_id:
        raise _invalid("$.on_behalf_of", "names another user than the user token")
    aliases = user_tokens.aliases_of(claims, user_id)
    return EndUser(id=user_id, roles=roles, source="verified", aliases=aliases)
