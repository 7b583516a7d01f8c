"""JSON that can be stored and hashed: what every door checks of a value a person or an
agent sends (the agent API, the MCP endpoint, a reviewer's corrected arguments)."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

MAX_JSON_DEPTH = 32
# NUL cannot be stored by PostgreSQL; lone surrogates cannot be encoded as UTF-8.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class DuplicateKey(ValueError):
    """An object of the JSON names one key twice; ``name`` is that key."""

    def __init__(self, name: str):
        super().__init__(f"an object names {name!r} more than once")
        self.name = name


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` for what a person must see as it was sent:
    an object that names one key twice is refused (``DuplicateKey``), not read as its last
    value. Which of the two counts is up to each parser (RFC 8259, 4): a proxy, a log
    reader or the agent's own framework may have taken the first, while the reviewer, the
    approval's hash and the handler would all see the last. Costs about 10 us on a typical
    call's body; the names are compared only when the object came out shorter."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateKey(name)
            seen.add(name)
    return value


def json_problem(value: Any) -> str:
    """Why a parsed body cannot be stored and hashed as JSON ("" when it can).

    Walks without recursion, so no nesting depth can exhaust the stack; everything past
    this check (hashing, masking, schema validation, jsonb) sees bounded, clean JSON.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"it nests deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return "a string holds a NUL character or an unpaired surrogate"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "a number is out of range"
        elif isinstance(item, dict):
            for name, child in item.items():
                if UNSTORABLE.search(name):
                    return "a key holds a NUL character or an unpaired surrogate"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return ""


def nests_within(value: Any, levels: int) -> bool:
    """Whether ``value`` nests at most ``levels`` JSON levels (objects and lists), walked
    without recursion: what another system sends (an upstream's schema or answer) is
    checked before anything recursive reads it."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > levels:
                return False
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return True


def as_stored(value: Any) -> Any:
    """``value`` as PostgreSQL's jsonb gives it back. jsonb keeps a number as a decimal and
    writes it without an exponent, so a float Python writes with one (1e+16: every float
    from 1e16 up, all whole numbers) comes back as an int (10000000000000000); a decimal
    has no negative zero, so -0.0 comes back 0.0. What is hashed or compared before the
    value is stored must be what is read after. Recursive: a value past ``json_problem``
    nests at most ``MAX_JSON_DEPTH`` levels."""
    if isinstance(value, float) and "e+" in repr(value):
        return int(Decimal(repr(value)))
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, dict):
        return {name: as_stored(child) for name, child in value.items()}
    if isinstance(value, list):
        return [as_stored(child) for child in value]
    return value


def unstorable_text(value: Any) -> str:
    """What in ``value`` (its strings and keys, however nested) PostgreSQL cannot store, in
    words ("a NUL character", "an unpaired surrogate"); "" when nothing is. Walks without
    recursion, as ``json_problem`` does, for what arrives from elsewhere whole."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if found := UNSTORABLE.search(item):
                return "a NUL character" if found.group() == "\x00" else "an unpaired surrogate"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return ""


REPLACEMENT = "\ufffd"


def storable(value: Any) -> Any:
    """``value`` with what PostgreSQL's jsonb cannot hold replaced: NUL and unpaired
    surrogates by U+FFFD (in keys too), numbers that are not finite by null. For what
    Countersign did not choose and must keep all the same: a tool's result or error, after
    its effect happened. Recursive: a result was encoded by ``json.dumps`` first, so its
    depth is one Python could encode."""
    if isinstance(value, str):
        return UNSTORABLE.sub(REPLACEMENT, value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {UNSTORABLE.sub(REPLACEMENT, str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
