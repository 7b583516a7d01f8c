"""What an upstream offers, read from its OpenAPI document or its MCP server's tool list,
before anything is stored: the tools Countersign can import, and the ones it cannot, each
with the reason (said to the admin, never a silent skip)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import jsonref

from core.json_values import nests_within, unstorable_text
from tools_registry.registry import TOOL_NAME
from tools_registry.schemas import schema_problems

JSON = dict[str, Any]
SEPARATOR = "__"


class ImportFailed(Exception):
    """The upstream's offer could not be read at all (unreachable, not a valid document or
    server); nothing is changed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ImportedTool:
    source_name: str  # the MCP tool's name, or the OpenAPI operationId
    name: str  # <upstream>__<source_name>
    description: str
    input_schema: JSON
    risk: str
    overwrites: bool
    idempotent: bool
    open_world: bool
    output_schema: JSON | None = None
    operation: JSON | None = None  # HTTP APIs: how a call becomes a request


@dataclass
class Offer:
    tools: list[ImportedTool] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def tool_name(upstream: str, source_name: str) -> str | None:
    """``<upstream>__<source_name>``, or None when that is not a name agents can use
    (OpenAI, Anthropic and MCP all take ``^[a-zA-Z0-9_-]{1,64}$``)."""
    name = f"{upstream}{SEPARATOR}{source_name}"
    # fullmatch: ``$`` alone also matches before a final line break.
    return name if TOOL_NAME.fullmatch(name) else None


def object_schema_problems(schema: Any) -> list[str]:
    """Why ``schema`` cannot be a tool's input schema (an object schema, valid 2020-12,
    nested at most ``MAX_SCHEMA_DEPTH`` levels)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return ["its input schema is not an object schema"]
    if not nests_within(schema, MAX_SCHEMA_DEPTH):
        # Checking a schema takes a dozen of Python's calls a level: a hundred nested
        # objects (a few KB) ran out of its stack, a 500 that imported none of the tools.
        return [f"its schema nests deeper than {MAX_SCHEMA_DEPTH} levels"]
    return schema_problems(schema)


# How deep an imported schema may nest (JSON levels): arguments nest at most 32 levels
# (``core.json_values.MAX_JSON_DEPTH``), each two of a schema's (properties, then a name).
MAX_SCHEMA_DEPTH = 64


def expansion_problems(schema: Any) -> list[str]:
    """Why a schema that keeps its ``$ref``s (an MCP server's) cannot check a tool's
    arguments, its references followed as a validator follows them on every call: one that
    reaches itself without going a level deeper into the arguments (an ``anyOf`` of itself,
    followed at the same place without end), or that expands past ``MAX_EXPANDED_NODES``
    (each step using the one before twice). A recursive model (a tree whose children are
    nodes) is fine: a validator follows it one level of the arguments at a time."""

    def fetch_nothing(uri: str) -> Any:
        raise ValueError(f"{uri[:100]!r} is outside the schema.")

    if _holds_key(schema, "$dynamicRef"):
        # Followed by a validator, never by jsonref: a loop through it would go unseen.
        return ["its schema uses $dynamicRef, which a tool's arguments cannot"]
    try:
        resolved = jsonref.replace_refs(
            _refs_apart(schema), proxies=False, lazy_load=False, loader=fetch_nothing
        )
    except (jsonref.JsonRefError, RecursionError) as exc:
        return [f"its $refs cannot be resolved: {str(exc)[:200]}"]
    if loops_in_place(resolved):
        return [
            "its schema refers to itself without going a level deeper into the arguments, "
            "so checking a call would never end"
        ]
    if expanded_size(resolved) > MAX_EXPANDED_NODES:
        return [f"its schema expands to more than {MAX_EXPANDED_NODES} nodes"]
    return []


def _refs_apart(value: Any) -> Any:
    """``value`` with each ``$ref`` that has keywords beside it moved into an ``allOf`` of
    its own (the same schema in 2020-12): jsonref replaces the whole object a ``$ref`` is in,
    and a loop or a doubling held by the keywords beside it went unseen."""
    if isinstance(value, dict):
        out = {key: _refs_apart(child) for key, child in value.items()}
        if "$ref" in out and len(out) > 1:
            out["allOf"] = [*(out.get("allOf") or []), {"$ref": out.pop("$ref")}]
        return out
    if isinstance(value, list):
        return [_refs_apart(child) for child in value]
    return value


def _holds_key(value: Any, key: str) -> bool:
    """Whether ``key`` is a key of an object anywhere in ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def drop_duplicates(offer: Offer) -> Offer:
    """Tools whose names collide are all left out: which one an agent meant is unknowable.
    So is a tool whose definition PostgreSQL cannot store (a NUL character, refused in text
    and jsonb alike, an unpaired surrogate, which UTF-8 cannot encode, or a number that is
    not finite): kept, it would fail the whole sync, the other tools with it."""
    held = [_unstorable([getattr(t, f.name) for f in dataclasses.fields(t)]) for t in offer.tools]
    offer = Offer(
        tools=[t for t, what in zip(offer.tools, held, strict=True) if not what],
        skipped=[
            *offer.skipped,
            *(
                f"{t.name}: its definition holds {what}, which cannot be stored"
                for t, what in zip(offer.tools, held, strict=True)
                if what
            ),
        ],
    )
    counts: dict[str, int] = {}
    for imported in offer.tools:
        counts[imported.name] = counts.get(imported.name, 0) + 1
    kept = [t for t in offer.tools if counts[t.name] == 1]
    skipped = [
        f"{name}: offered {n} times; none was imported" for name, n in counts.items() if n > 1
    ]
    return Offer(tools=kept, skipped=[*offer.skipped, *skipped])


def _unstorable(value: Any) -> str:
    """What in ``value`` PostgreSQL cannot store (``unstorable_text``), or a number that is
    not finite (``Infinity``, ``NaN``: Python's json.dumps writes them, the SDK's parser and
    Python's read them, YAML has ``.inf``), which jsonb and a tool's version refuse; ""."""
    if found := unstorable_text(value):
        return found
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "a number JSON cannot hold"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return ""


# The schema nodes an imported document may expand to, its $refs written out in full.
MAX_EXPANDED_NODES = 200_000


def cycle_heads(value: Any) -> set[int]:
    """The ids of the objects a resolved schema goes back to (a $ref cycle: a recursive
    model), found by a walk that visits each object once, however many times $refs share it:
    every cycle passes through one of them."""
    heads: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    open_: set[int] = set()
    while stack:
        item, leaving = stack.pop()
        if not isinstance(item, dict | list):
            continue
        key = id(item)
        if leaving:
            open_.discard(key)
            done.add(key)
            continue
        if key in open_:
            heads.add(key)
            continue
        if key in done:
            continue
        open_.add(key)
        stack.append((item, True))
        stack.extend(
            (child, False) for child in (item.values() if isinstance(item, dict) else item)
        )
    return heads


_DEF_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def cycles_as_refs(schema: JSON, heads: set[int]) -> JSON:
    """A resolved schema whose objects in ``heads`` are cycles' heads (see ``cycle_heads``),
    written out as a tree a validator and ``json.dumps`` can take: each head one entry of the
    root's ``$defs`` (named by its ``title`` where that is a plain name, as a pydantic model's
    is), each use of it a ``$ref`` to the entry. The form an MCP server sends a recursive
    model in. Raises RecursionError for a schema nested past Python's stack."""
    names: dict[int, str] = {}
    defs: JSON = {}

    def write(node: Any, *, defining: bool = False) -> Any:
        if isinstance(node, list):
            return [write(child) for child in node]
        if not isinstance(node, dict):
            return node
        if id(node) in heads and not defining:
            if id(node) not in names:
                title = node.get("title")
                name = title if isinstance(title, str) and _DEF_NAME.fullmatch(title) else ""
                number = len(defs)
                while not name or name in defs:
                    number += 1
                    name = f"schema{number}"
                names[id(node)] = name
                defs[name] = {}  # taken, before its own uses of itself are written
                defs[name] = write(node, defining=True)
            return {"$ref": f"#/$defs/{names[id(node)]}"}
        return {key: write(child) for key, child in node.items()}

    written = write(schema, defining=True)
    if defs:
        written["$defs"] = defs
    return written


def expanded_size(value: Any, limit: int = MAX_EXPANDED_NODES) -> int:
    """How many nodes ``value`` has written out (the objects $refs or YAML aliases resolve
    to counted each time they are used; a $ref back to a schema being written out, once),
    counted only up to just past ``limit``: a walk that stops."""
    count, on_path = 0, set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack and count <= limit:
        item, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            continue
        count += 1
        if not isinstance(item, dict | list) or id(item) in on_path:
            continue
        on_path.add(id(item))
        stack.append((item, True))
        stack.extend(
            (child, False) for child in (item.values() if isinstance(item, dict) else item)
        )
    return count


# The keywords whose schemas apply to the value itself, not to a part of it (a property's
# value, an item): a loop through these alone is followed at one place of the arguments.
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_ONES = ("not", "if", "then", "else")


def _in_place(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [b for k in _IN_PLACE_LISTS if isinstance(node.get(k), list) for b in node[k]]
    found += [node[k] for k in _IN_PLACE_ONES if k in node]
    dependent = node.get("dependentSchemas")
    if isinstance(dependent, dict):
        found += list(dependent.values())
    return [b for b in found if isinstance(b, dict)]


def loops_in_place(value: Any) -> bool:
    """Whether a resolved schema reaches one of its schemas again through keywords that
    apply to the same value only (``anyOf`` of itself): a loop a validator never leaves."""
    schemas: dict[int, dict[str, Any]] = {}
    stack: list[Any] = [value]
    while stack:  # every schema object in it, each once
        item = stack.pop()
        if isinstance(item, dict):
            if id(item) not in schemas:
                schemas[id(item)] = item
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    state: dict[int, bool] = {}  # False: on the path being walked; True: done
    for start in schemas.values():
        if id(start) in state:
            continue
        state[id(start)] = False
        path = [(start, iter(_in_place(start)))]
        while path:
            node, branches = path[-1]
            branch = next(branches, None)
            if branch is None:
                state[id(node)] = True
                path.pop()
            elif state.get(id(branch)) is False:
                return True
            elif id(branch) not in state:
                state[id(branch)] = False
                path.append((branch, iter(_in_place(branch))))
    return False
