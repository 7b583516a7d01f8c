"""The end user of an agent's request, as the two doors carry it, and their refusals.

* REST: a call's body has ``on_behalf_of`` (the user's id, or ``{"id", "roles"}``); a tool
  list takes the same as the ``on_behalf_of`` and ``roles`` query parameters or the
  ``Countersign-On-Behalf-Of`` header; the user's token rides in ``Countersign-User-Token``.
* MCP: ``_meta["io.countersign/on-behalf-of"]`` and ``_meta["io.countersign/user-token"]``
  on a request, or the same two headers on the connection (a framework that cannot set
  ``_meta`` sets them once per user session).

Who the user is and what they may use is decided below the edge
(``tools_registry.end_users``, ``tools_registry.role_scopes``); here the refusals become the
API's errors, and a refused tool list is audited (a refused call is audited by intake, as
``call.refused``).
"""

from __future__ import annotations

import json
from typing import Any

from audit.log import record
from core.json_values import DuplicateKey, json_problem, reject_constant, unique_keys
from gateway import errors
from tools_registry import end_users
from tools_registry.end_users import Refused
from tools_registry.models import Agent
from tools_registry.role_scopes import EndUser

USER_TOKEN_HEADER = "Countersign-User-Token"  # noqa: S105 - a header name, not a secret
ON_BEHALF_OF_HEADER = "Countersign-On-Behalf-Of"
META_ON_BEHALF_OF = "io.countersign/on-behalf-of"
META_USER_TOKEN = "io.countersign/user-token"  # noqa: S105 - a _meta key


def api_error(refusal: Refused) -> errors.ApiError:
    if refusal.code == end_users.ROLE_NOT_ASSERTABLE:
        return errors.role_not_assertable(refusal.message, refusal.details)
    if refusal.code == end_users.USER_TOKEN_INVALID:
        return errors.user_token_invalid(refusal.message)
    if refusal.code == end_users.PROVIDER_UNAVAILABLE:
        return errors.identity_provider_unavailable(refusal.message)
    return errors.invalid_end_user(refusal.message, refusal.details)


def decode_header(value: str | None) -> Any:
    """What a ``Countersign-On-Behalf-Of`` header names: a JSON object, or else the
    user's id as it stands; None without the header."""
    if value is None:
        return None
    text = value.strip()
    if not text.startswith("{"):
        return text
    try:
        decoded = json.loads(text, parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        # {"id": "ada", "id": "bob"}: whom the call is for must not depend on the parser.
        raise Refused(
            end_users.INVALID_END_USER,
            f"The {ON_BEHALF_OF_HEADER} header names {json.dumps(exc.name[:100])} twice.",
            [{"path": ON_BEHALF_OF_HEADER, "message": "names a key twice"}],
        ) from None
    except (ValueError, RecursionError):
        raise Refused(
            end_users.INVALID_END_USER,
            f"The {ON_BEHALF_OF_HEADER} header is neither a user id nor a JSON object.",
            [{"path": ON_BEHALF_OF_HEADER, "message": "is not valid JSON"}],
        ) from None
    # The same JSON every door takes: a value that could not be stored (and so neither
    # audited nor answered) is refused here, as a body holding it would be.
    if problem := json_problem(decoded):
        raise Refused(
            end_users.INVALID_END_USER,
            f"The {ON_BEHALF_OF_HEADER} header cannot be accepted: {problem}.",
            [{"path": ON_BEHALF_OF_HEADER, "message": problem}],
        )
    return decoded


def listing_user(
    agent: Agent,
    *,
    on_behalf_of: Any,
    user_token: str | None,
    header: str | None = None,
    transport: str,
    client: str = "",
) -> EndUser:
    """The end user a tool list is for: ``on_behalf_of`` as given, else the header's.
    A refusal is audited (``end_user.refused``) and raised as the API's error."""
    try:
        if on_behalf_of is None:
            on_behalf_of = decode_header(header)
        elif problem := json_problem(on_behalf_of):
            # MCP's _meta, which no body check saw: a field's name is echoed in the refusal.
            raise Refused(
                end_users.INVALID_END_USER,
                f"The end user cannot be accepted: {problem}.",
                [{"path": "$.on_behalf_of", "message": problem}],
            )
        return end_users.identify(
            agent, on_behalf_of=on_behalf_of, user_token=user_token, roles_alone=True
        )
    except Refused as refusal:
        error = api_error(refusal)
        audit_refusal(agent, error, request="tools/list", transport=transport, client=client)
        raise error from None


def audit_refusal(
    agent: Agent, error: errors.ApiError, *, request: str, transport: str, client: str = ""
) -> None:
    """A request refused for its end user before anything was asked of a tool."""
    record(
        action="end_user.refused",
        actor=agent,
        outcome=error.code,
        agent=agent,
        data={
            "request": request,
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "transport": transport,
            "client": client,
        },
    )
