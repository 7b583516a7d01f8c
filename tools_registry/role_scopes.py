"""Role scopes: which of an agent's tools the end user a call is for may use.

An agent's ``role_scopes`` maps each end-user role to the risk classes and the tools it may
use, within the agent's allowlist::

    {"viewer": {"risks": ["read"]},
     "support": {"risks": ["read", "write"]},
     "billing": {"risks": ["read"], "tools": ["issue_refund"]}}

A user may use what any of their roles may. A call that names no user, or a user none of
whose roles the agent scopes, gets the agent's ``unscoped_access``: by default the whole
allowlist, as before roles existed, so an agent whose admin set nothing works as it did.
The allowlist always applies first: no role widens it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk

MAX_ROLE_LENGTH = 64
MAX_SCOPED_ROLES = 100
# Roles come from identity providers in many spellings (admin, Billing Team, /org/admins):
# any printable text without control characters, but not empty or surrounded by spaces;
# nor an unpaired surrogate, which a token's claims may hold and nothing can store.
_ROLE = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]+")


# Characters a reader cannot see, or that reorder what they see, as regex escapes: the
# format characters (Unicode's category Cf: the bidirectional overrides and isolates, the
# zero-width spaces and joiners, the byte order mark, Unicode tags) and the rest of what the
# pages write out (audit.display.HIDDEN: the Hangul fillers, the combining grapheme joiner,
# the line and paragraph separators). An id holding one would be shown as another ("bob"
# with a right-to-left override), so ids refuse them. Those of the Basic Multilingual Plane
# apart: a JSON Schema pattern (ECMA-262 without the "u" flag) can say only those.
HIDDEN_BMP = (
    r"\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u180e"
    r"\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0"
    r"\ufff9-\ufffb"
)
HIDDEN_ASTRAL = (
    r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    r"\U000e0000-\U000e007f"
)

MAX_USER_ID_LENGTH = 150
# A user id, named in a call or read from a token: printable text, not only spaces (the
# API's schema says the same: gateway.schemas.USER_ID_PATTERN), nothing that cannot be
# stored (a token's claims may hold an unpaired surrogate), nothing hidden (above).
_NOT_IN_USER_ID = re.compile(rf"[\x00-\x1f\x7f-\x9f\ud800-\udfff{HIDDEN_BMP}{HIDDEN_ASTRAL}]")
# A session id (gateway.schemas.ToolCallIn): no control character, nothing hidden.
_NOT_IN_SESSION_ID = re.compile(rf"[\x00-\x1f\x7f-\x9f{HIDDEN_BMP}{HIDDEN_ASTRAL}]")


def is_visible_id(value: str) -> bool:
    """Whether ``value`` holds no control character and nothing a reader cannot see."""
    return _NOT_IN_SESSION_ID.search(value) is None


def is_user_id(value: Any) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_USER_ID_LENGTH
        and bool(value.strip())
        and _NOT_IN_USER_ID.search(value) is None
    )


def folded(name: str | None) -> str:
    """An end user's name as one person: the same whatever the case, the spaces around it
    or the Unicode form (é composed or not; accounts keep their names NFKC). Separation of
    duties and the per-user rate limits compare names so."""
    return unicodedata.normalize("NFKC", (name or "").strip()).casefold()


@dataclass(frozen=True)
class EndUser:
    """Whom a call is for: the user's id ("" for nobody), the roles the call is made in,
    and where they come from: "" (nobody named), "named" (an id without roles),
    "asserted" (by an agent trusted to) or "verified" (from the user's token).

    ``aliases``: the other names a verified user's token gives them that a reviewer's
    account may be known by (``user_tokens.aliases_of``), folded; separation of duties
    matches them too. Personal data: ``describe`` leaves them out."""

    id: str = ""
    roles: tuple[str, ...] = ()
    source: str = ""
    aliases: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The user as the audit trail and the errors show it (never a token)."""
        return {"id": self.id, "roles": list(self.roles), "source": self.source}


NOBODY = EndUser()


@dataclass(frozen=True)
class RoleScope:
    risks: frozenset[str]
    tools: frozenset[str]

    def covers(self, tool: Tool) -> bool:
        return tool.risk in self.risks or tool.name in self.tools


def is_role(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ROLE_LENGTH
        and value == value.strip()
        and _ROLE.fullmatch(value) is not None
    )


def clean_role_scopes(raw: Any, *, tool_names: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """``raw`` as stored: every role a valid role name, every risk class a real one, every
    tool one of ``tool_names``; raises ``ValueError`` listing every problem."""
    known_tools = set(tool_names)
    if not isinstance(raw, Mapping):
        raise ValueError(['Role scopes are an object: {"role": {"risks": [...], "tools": [...]}}.'])
    problems: list[str] = []
    if len(raw) > MAX_SCOPED_ROLES:
        problems.append(f"At most {MAX_SCOPED_ROLES} roles.")
    cleaned: dict[str, dict[str, list[str]]] = {}
    for role, scope in raw.items():
        if not is_role(role):
            problems.append(
                f"{role!r} is not a role name (1 to {MAX_ROLE_LENGTH} printable characters)."
            )
            continue
        if not isinstance(scope, Mapping) or set(scope) - {"risks", "tools"}:
            problems.append(f'{role}: give "risks" and/or "tools", lists of names.')
            continue
        risks, tools = scope.get("risks", []), scope.get("tools", [])
        if not isinstance(risks, list) or not all(r in Risk.values for r in risks):
            problems.append(f"{role}: risks are among {', '.join(Risk.values)}.")
            continue
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            problems.append(f"{role}: tools are a list of tool names.")
            continue
        if unknown := sorted(set(tools) - known_tools):
            # Quoted escaped when unprintable, as a role name is: an unpaired surrogate in a
            # name written into the page was a 500.
            named = (t if t.isprintable() else repr(t) for t in unknown)
            problems.append(f"{role}: no such tools: {', '.join(named)}.")
            continue
        cleaned[role] = {
            "risks": [r for r in Risk.values if r in risks],
            "tools": sorted(set(tools)),
        }
    if problems:
        raise ValueError(problems)
    return cleaned


def scopes_of(agent: Agent) -> dict[str, RoleScope]:
    """The agent's role scopes, as ``clean_role_scopes`` stored them."""
    return {
        role: RoleScope(
            risks=frozenset(scope.get("risks", ())), tools=frozenset(scope.get("tools", ()))
        )
        for role, scope in (agent.role_scopes or {}).items()
    }


def _unscoped_permits(agent: Agent, tool: Tool) -> bool:
    access = agent.unscoped_access
    if access == Agent.UnscopedAccess.ALLOWLIST:
        return True
    if access == Agent.UnscopedAccess.READS:
        return tool.risk == Risk.READ
    return False


def permits(agent: Agent, user: EndUser, tool: Tool) -> bool:
    """Whether ``user`` may use ``tool`` through ``agent`` (a tool on its allowlist)."""
    scopes = scopes_of(agent)
    theirs = [scopes[role] for role in user.roles if role in scopes]
    if not theirs:
        return _unscoped_permits(agent, tool)
    return any(scope.covers(tool) for scope in theirs)


def roles_allowed(agent: Agent, tool: Tool) -> list[str]:
    """The roles that may use ``tool`` through ``agent``: what a refused user would need,
    the narrowest first (least privilege), then by name."""
    fitting = [(role, scope) for role, scope in scopes_of(agent).items() if scope.covers(tool)]
    fitting.sort(key=lambda item: (len(item[1].risks) + len(item[1].tools), item[0]))
    return [role for role, _ in fitting]


def tools_for(agent: Agent, user: EndUser) -> list[Tool]:
    """The tools ``user`` may call through ``agent`` now: allowed, enabled, in scope."""
    allowed = agent.allowed_tools.filter(enabled=True, available=True).order_by("name")
    return [tool for tool in allowed if permits(agent, user, tool)]
