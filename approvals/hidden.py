"""What no reviewer and no trail sees of a call in clear: the values of its tool's secret and
sensitive fields, wherever else they show up.

The arguments themselves are masked by path (``display.arguments`` for reviewers,
``audit.masking.mask_fields`` for the trail). The same values also reach what is made *from*
the arguments: the facts a queue row shows (to whom, on what), the risk signals stored at
intake ("the agent has never acted on cus_0003"), the phrase a reviewer types to approve,
the current state of the record a call would change. Each goes through here.
"""

from __future__ import annotations

from typing import Any

from audit.canonical import canonical_json
from audit.masking import mask_fields, masked, path_parts
from tools_registry.models import Tool

# A hidden value this short is not looked for inside longer text (it would mask digits of
# unrelated numbers); equal to a whole part, it is masked all the same.
SHORTEST_SEARCHED = 3
# A part of a list shorter than this is not taken for a piece of a hidden text (a plan's
# "pro" is not the note that mentions it); a link or an address quoted from it is longer.
SHORTEST_PIECE = 8


def covers(paths: list[str], path: str) -> bool:
    """Whether the argument at ``path`` is one of ``paths`` or inside one (dotted paths)."""
    return bool(path) and any(path == p or path.startswith(f"{p}.") for p in paths)


def values(tool: Tool, arguments: Any) -> list[str]:
    """The values of the tool's hidden fields in ``arguments``, as text, longest first.

    A hidden field that holds an object or a list (``changes``, ``attendees``) is masked
    whole as its JSON, but text quotes what is inside it, not that JSON ("called Zebulon"):
    the strings and numbers within it are hidden values too.
    """
    found: list[str] = []

    def collect(_kind: str, text: str) -> str:
        found.append(text)
        return text

    mask_fields(arguments, tool.hidden_fields, render=collect)
    for path in tool.hidden_fields:
        for held in _at(arguments, path_parts(path)):
            if isinstance(held, dict | list):
                found += _leaves(held)
    return sorted({v for v in found if v}, key=len, reverse=True)


def _at(data: Any, parts: list[str]) -> list[Any]:
    """The values at a dotted path, lists walked (as ``audit.masking.mask_fields`` does)."""
    if not parts:
        return [data]
    if isinstance(data, list):
        return [held for item in data for held in _at(item, parts)]
    if isinstance(data, dict) and parts[0] in data:
        return _at(data[parts[0]], parts[1:])
    return []


def _leaves(data: Any) -> list[str]:
    """The strings and numbers inside an object or a list, as text. Not its keys (a schema's
    own names, "name" or "email", are no secret), nor true, false and null."""
    if isinstance(data, dict):
        return [leaf for item in data.values() for leaf in _leaves(item)]
    if isinstance(data, list):
        return [leaf for item in data for leaf in _leaves(item)]
    if isinstance(data, str):
        return [data]
    if isinstance(data, int | float) and not isinstance(data, bool):
        return [canonical_json(data).decode()]
    return []


def quoted(value: str, tool: Tool, arguments: Any) -> str:
    """``value`` (words an agent wrote beside its arguments: its reasoning) with the values
    of the tool's hidden fields in ``arguments`` masked wherever it quotes them."""
    if not value or not tool.hidden_fields:
        return value
    return text(value, values(tool, arguments))


def text(value: str, hidden: list[str]) -> str:
    """``value`` with every hidden value in it masked (whole, as the trail masks a field),
    and every part of a list (", ") that is a piece of a hidden value: a link or an address
    quoted from a sensitive text."""
    if not hidden or not value:
        return value
    for secret in hidden:
        if len(secret) >= SHORTEST_SEARCHED and secret in value:
            value = value.replace(secret, masked("field", secret))
    parts = value.split(", ")
    return ", ".join(
        masked("field", part)
        if part in hidden or (len(part) >= SHORTEST_PIECE and any(part in s for s in hidden))
        else part
        for part in parts
    )


def value(data: Any, hidden: list[str]) -> Any:
    """A JSON value with ``text`` applied to every string in it (keys included)."""
    if not hidden:
        return data
    if isinstance(data, str):
        return text(data, hidden)
    if isinstance(data, list):
        return [value(item, hidden) for item in data]
    if isinstance(data, dict):
        return {text(k, hidden): value(v, hidden) for k, v in data.items()}
    return data
