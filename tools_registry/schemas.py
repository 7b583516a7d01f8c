"""Validation of call arguments against a tool's JSON Schema (Draft 2020-12).

Every error comes back (up to ``MAX_REPORTED``, and how many there are in all), each with
the JSON path of the value it is about. A missing required argument is reported at the path
it should have had (``$.customer_id``) and each unexpected argument at its own path, so an
agent can fix all of them in one go.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, islice
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import Unresolvable

from audit.canonical import canonical_json
from audit.masking import cut_short, field_path, path_parts

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# How much of an offending value (or key) a message quotes, and how long a message may be.
# jsonschema quotes the value whole: a 200 KB string past its ``maxLength`` came back twice
# in the answer and went into the append-only trail with the refusal.
QUOTED_MAX = 200
MESSAGE_MAX = 1_000
# How many problems one check describes. Each was described: 15,000 made-up argument names
# were 15,000 problems in the answer (more than the official MCP client reads in one event)
# and in the trail's refusal. Past it they are counted, not described.
MAX_REPORTED = 50


@dataclass(frozen=True)
class ArgumentError:
    path: str  # JSON path of the offending value, "$" for the arguments object itself
    message: str
    validator: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "validator": self.validator}


class ArgumentErrors(list[ArgumentError]):
    """At most ``MAX_REPORTED`` problems of a check, and how many it found in all
    (``total``); a list, empty when the arguments are valid."""

    def __init__(self, reported: Iterable[ArgumentError] = (), *, total: int | None = None):
        super().__init__(reported)
        self.total = len(self) if total is None else total

    def summary(self) -> str:
        """The problems in one line ("$.to: ...; $.cc: ..."), and how many more there are."""
        text = "; ".join(f"{p.path}: {p.message}" for p in self)
        if self.total > len(self):
            text += f"; and {self.total - len(self):,} more"
        return text


def json_path(parts: Iterable[Any]) -> str:
    """``$.changes.email``, ``$.items[2]``, ``$['odd key']``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(str(part)):
            path += f".{part}"
        else:
            # RFC 9535 normalized path: single quotes, with \ and ' escaped.
            escaped = str(part).replace("\\", "\\\\").replace("'", "\\'")
            path += f"['{escaped}']"
    return path


# A registry that retrieves nothing: a schema's ``$ref`` resolves within the schema or not
# at all. jsonschema's default would fetch any URL a ``$ref`` names (or read a file: URL) on
# every validation, from an imported tool's schema, which its upstream wrote.
_NOTHING_FETCHED: Registry[Any] = Registry()


# The steps (a keyword of a schema applied to a value) one check of a call's arguments may
# take. A recursive model whose branches share one property (anyOf of two objects each with
# an "and" of the model) makes them 2**depth for arguments nested that deep: without a bound
# an agent's deep arguments held a web worker for hours. A legitimate check of the largest
# body takes a fraction of it.
MAX_CHECK_STEPS = 250_000
# ... or this many steps per value checked, if more: a flat list of 100,000 small numbers,
# three keywords each, is a legitimate body that needs more than the bound above.
STEPS_PER_VALUE = 8
_steps_left: ContextVar[list[int] | None] = ContextVar("schema_steps_left", default=None)


class TooComplex(Exception):
    """A check took more than ``MAX_CHECK_STEPS`` steps."""


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        left = _steps_left.get()
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                raise TooComplex
        return keyword(validator, value, instance, schema)

    return counted


# Draft 2020-12, each keyword counting its steps while a check's budget is set.
_Bounded = validators.extend(
    Draft202012Validator, {name: _counted(k) for name, k in Draft202012Validator.VALIDATORS.items()}
)


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Draft202012Validator:
    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return _Bounded(schema, format_checker=FormatChecker(), registry=_NOTHING_FETCHED)  # type: ignore[no-any-return]


def validator_for(schema: Mapping[str, Any]) -> Draft202012Validator:
    return _validator(canonical_json(schema))


def _steps_for(value: Any) -> int:
    """The steps a check of ``value`` may take: ``MAX_CHECK_STEPS``, or more for a big one."""
    values, stack = 0, [value]
    while stack:
        item = stack.pop()
        values += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return max(MAX_CHECK_STEPS, STEPS_PER_VALUE * values)


def fits(schema: Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` fits ``schema``, checked within ``MAX_CHECK_STEPS`` as arguments
    are: one that takes longer does not fit (a recursive output schema and a deep result
    made 2**depth steps, on the MCP server's event loop)."""
    budget = _steps_left.set([_steps_for(value)])
    try:
        return bool(validator_for(schema).is_valid(value))
    except (TooComplex, RecursionError):
        return False
    finally:
        _steps_left.reset(budget)


def validate_arguments(
    schema: Mapping[str, Any], arguments: Any, *, sensitive_fields: Iterable[str] = ()
) -> ArgumentErrors:
    """The errors, each with its JSON path; an empty list means the arguments are valid.
    At most ``MAX_REPORTED`` are described, taken in turn from each keyword of the schema
    that found any (a missing argument is not lost behind a long list's wrong items, nor
    behind thousands of made-up names); the rest are only counted (``total``).

    Messages about a value under one of ``sensitive_fields``, or about an object or list
    that contains one (an error at ``card`` when ``card.number`` is sensitive; an error at
    the root when any field is), do not quote the value, since errors are returned to the
    agent, stored for idempotent replays and audited. Other values (and made-up argument
    names, in paths too) are quoted at most ``QUOTED_MAX`` characters long, with their size.
    """
    sensitive = [tuple(path_parts(field)) for field in sensitive_fields]
    # The first errors of each keyword of the schema (by its place in the schema), with the
    # made-up arguments of each: every error is found, to be counted, within the check's
    # step bound as a valid body's check is; only those described are kept.
    kept: dict[tuple[Any, ...], list[tuple[ValidationError, list[str]]]] = {}
    total = 0
    budget = _steps_left.set([_steps_for(arguments)])
    try:
        for error in validator_for(schema).iter_errors(arguments):
            unexpected = _unexpected(error)
            total += len(unexpected) or 1
            same = kept.setdefault(tuple(error.absolute_schema_path), [])
            if len(same) < MAX_REPORTED:
                same.append((error, unexpected))
        # Described only now, and only as many as are listed: a description may cut a quote,
        # which looks for secrets around the cut.
        found = [
            _described(error, parts, message, quotes_instance, sensitive)
            for error, parts, message, quotes_instance in islice(_in_turn(kept), MAX_REPORTED)
        ]
    except (TooComplex, RecursionError):
        return ArgumentErrors(
            [
                ArgumentError(
                    "$",
                    "The arguments are nested too deep (or are too many) for the tool's schema "
                    "to be checked in time; send them less deeply nested.",
                    "complexity",
                )
            ]
        )
    except Unresolvable:
        # A schema stored before references outside it were refused (``schema_problems``).
        return ArgumentErrors(
            [
                ArgumentError(
                    "$",
                    "The tool's schema refers to a definition outside it; the call cannot be "
                    "checked. An admin must mend the tool.",
                    "$ref",
                )
            ]
        )
    finally:
        _steps_left.reset(budget)
    found.sort(key=lambda e: (e.path, e.validator, e.message))
    return ArgumentErrors(found, total=total)


def _in_turn(
    kept: dict[tuple[Any, ...], list[tuple[ValidationError, list[str]]]],
) -> Iterator[tuple[ValidationError, list[Any], str, bool]]:
    """The problems of ``kept`` (``_located``), one of each keyword's in turn."""
    streams = [
        chain.from_iterable(
            ((error, *problem) for problem in _located(error, unexpected))
            for error, unexpected in errors
        )
        for errors in kept.values()
    ]
    while streams:
        for stream in list(streams):
            problem = next(stream, None)
            if problem is None:
                streams.remove(stream)
            else:
                yield problem


def _described(
    error: ValidationError,
    parts: list[Any],
    message: str,
    quotes_instance: bool,
    sensitive: list[tuple[str, ...]],
) -> ArgumentError:
    # A key the agent made up may be as long as the body: its path names it cut.
    path = json_path(_cut(p) if isinstance(p, str) else p for p in parts)
    if quotes_instance and _under_sensitive(parts, sensitive):
        message = f"The value at {path} is not valid ({error.validator})."
    elif quotes_instance:
        message = _quoting_shortened(message, error.instance)
    if len(message) > MESSAGE_MAX:  # quoting parts of the value (``items``)
        message = f"{_cut(message, MESSAGE_MAX)}… ({len(message):,} characters)"
    return ArgumentError(path, message, str(error.validator))


def _located(
    error: ValidationError, unexpected: list[str]
) -> Iterator[tuple[list[Any], str, bool]]:
    """One (path, message, whether the message may quote the value) per problem;
    ``required`` and ``additionalProperties`` errors point at the argument they are about
    (``unexpected``: the error's, ``_unexpected``) rather than at the enclosing object, and
    name it without quoting any value. Lazy: only the problems taken are described."""
    parent = list(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        for name in error.validator_value:
            if name not in instance and error.message == f"{name!r} is a required property":
                yield [*parent, name], f"{name!r} is required.", False
                return
    if unexpected:
        for key in sorted(unexpected):
            yield [*parent, key], f"{_quoted(key)} is not an argument of this tool.", False
        return
    yield parent, error.message, True


def _unexpected(error: ValidationError) -> list[str]:
    """The arguments an ``additionalProperties: false`` error is about, each a problem of
    its own; empty for any other error."""
    instance = error.instance
    if not (
        error.validator == "additionalProperties"
        and error.validator_value is False
        and isinstance(instance, dict)
    ):
        return []
    schema = error.schema if isinstance(error.schema, dict) else {}
    declared = schema.get("properties", {})
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    return [
        key for key in instance if key not in declared and not any(p.search(key) for p in patterns)
    ]


def _quoting_shortened(message: str, value: Any) -> str:
    """``message`` with its quote of ``value`` (jsonschema's ``repr``) shortened."""
    if not isinstance(value, str | list | dict):
        return message
    whole = repr(value)
    if len(whole) <= QUOTED_MAX:
        return message
    return message.replace(whole, _quoted(value), 1)


def _quoted(value: str | list[Any] | dict[str, Any]) -> str:
    """``repr(value)``, or its first ``QUOTED_MAX`` characters and how long it is."""
    whole = repr(value)
    if len(whole) <= QUOTED_MAX:
        return whole
    if isinstance(value, str):
        size = f"{len(value):,} characters"
    elif isinstance(value, list):
        size = f"a list of {len(value):,} item{'s' if len(value) != 1 else ''}"
    else:
        size = f"an object of {len(value):,} member{'s' if len(value) != 1 else ''}"
    return f"{_cut(whole, QUOTED_MAX)}… ({size})"


def _cut(text: str, limit: int = QUOTED_MAX) -> str:
    """The first ``limit`` characters of ``text``, or fewer: never part of a secret or an
    address the audit's detectors would find in the whole (``audit.masking.cut_short``)."""
    return cut_short(text, limit)


def _under_sensitive(parts: list[Any], sensitive: list[tuple[str, ...]]) -> bool:
    """Whether the value at ``parts`` is, or contains, a sensitive field.

    Lists are walked transparently, as the masking does: "cards.number" covers
    cards[3].number. Comparing the shorter of the two paths covers both directions: the
    value under a sensitive field, and every ancestor whose message could quote it whole.
    """
    names = tuple(str(p) for p in parts if not isinstance(p, int))
    return any(names[: len(field)] == field[: len(names)] for field in sensitive if field)


def schema_problems(schema: Any) -> list[str]:
    """Why a schema is not valid Draft 2020-12 (empty when it is), or refers outside itself."""
    if not isinstance(schema, dict):
        return ["$: the schema must be a JSON object."]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return [f"{json_path(exc.absolute_path)}: {exc.message}"]
    return [
        f"{path}: only references within the schema (#/...) are followed, not {ref[:100]!r}."
        for path, ref in foreign_references(schema)
    ]


def foreign_references(document: Any) -> list[tuple[str, str]]:
    """Each ``$ref`` or ``$dynamicRef`` in ``document`` that points outside it (a URL, a
    file, another document), with its JSON path: Countersign never fetches one."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ())]
    while stack:
        node, parts = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if key in ("$ref", "$dynamicRef") and isinstance(child, str):
                    if not child.startswith("#"):
                        found.append((json_path((*parts, key)), child))
                else:
                    stack.append((child, (*parts, key)))
        elif isinstance(node, list):
            stack.extend((child, (*parts, i)) for i, child in enumerate(node))
    return sorted(found)


def has_argument_path(schema: Mapping[str, Any], dotted: str) -> bool:
    """Whether ``dotted`` (``changes.email``) names an argument the schema declares.

    Arrays are walked transparently, the way masking walks lists; ``anyOf``/``oneOf``/
    ``allOf`` branches and local ``$ref``s count.
    """
    parts = path_parts(dotted)
    return bool(parts) and _path_exists(schema, parts, root=schema, depth=0, asked={})


def has_argument_parts(schema: Mapping[str, Any], parts: Sequence[str]) -> bool:
    """Whether a rule's condition may read ``args`` through ``parts``: ``has_argument_path``
    for a path given as its names, one of which may hold a dot (``args["a.b"]`` reads the
    argument named ``a.b``), where a map's own keys count too. An object whose
    ``additionalProperties`` or ``patternProperties`` gives its other members a schema holds
    keys that are data (``args.headers["x-request-id"]``), not names that can be misspelt."""
    return bool(parts) and _path_exists(
        schema, list(parts), root=schema, depth=0, asked={}, maps=True
    )


def _path_exists(
    schema: Any,
    parts: list[str],
    *,
    root: Mapping[str, Any],
    depth: int,
    asked: dict[tuple[int, int], int],
    maps: bool = False,
) -> bool:
    if not parts:
        return True
    if not isinstance(schema, Mapping) or depth > 32:
        return False
    # Each schema asked once for the same rest of the path (again only if reached with more
    # depth left, which the limit may have cut short before): branches that share a
    # definition (anyOf of it twice, a recursive model) were walked 2**depth times.
    state = (id(schema), len(parts))
    if asked.get(state, depth + 1) <= depth:
        return False
    asked[state] = depth
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, Mapping) else None
        if _path_exists(target, parts, root=root, depth=depth + 1, asked=asked, maps=maps):
            return True
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword) or []:
            if _path_exists(branch, parts, root=root, depth=depth + 1, asked=asked, maps=maps):
                return True
    items = schema.get("items")
    if isinstance(items, Mapping) and _path_exists(
        items, parts, root=root, depth=depth + 1, asked=asked, maps=maps
    ):
        return True
    properties = schema.get("properties")
    if isinstance(properties, Mapping) and parts[0] in properties:
        return _path_exists(
            properties[parts[0]], parts[1:], root=root, depth=depth + 1, asked=asked, maps=maps
        )
    if maps:
        patterns = schema.get("patternProperties")
        others = [
            value
            for pattern, value in (patterns.items() if isinstance(patterns, Mapping) else ())
            if pattern_takes(pattern, parts[0])
        ]
        extra = schema.get("additionalProperties")
        if extra is True or extra == {}:
            return True  # any value, so anything within it
        others += [extra] if isinstance(extra, Mapping) else []
        return any(
            _path_exists(value, parts[1:], root=root, depth=depth + 1, asked=asked, maps=maps)
            for value in others
        )
    return False


def pattern_takes(pattern: Any, key: str) -> bool:
    """Whether a ``patternProperties`` pattern takes ``key``; one Python cannot read may."""
    try:
        return isinstance(pattern, str) and re.search(pattern, key) is not None
    except re.error:
        return True


def argument_paths(schema: Mapping[str, Any], *, limit: int = 500) -> list[str]:
    """Every argument path the schema declares (``changes.email``), parents before their
    children, walked as ``has_argument_path`` walks them: arrays transparently, ``anyOf``/
    ``oneOf``/``allOf`` branches and local ``$ref``s. For the admin's sensitive-field picker."""
    found: list[str] = []
    walked: dict[tuple[int, tuple[str, ...]], int] = {}

    def walk(node: Any, prefix: tuple[str, ...], depth: int) -> None:
        if not isinstance(node, Mapping) or depth > 32 or len(found) >= limit:
            return
        # Each schema walked once under the same path (see _path_exists).
        if walked.get((id(node), prefix), depth + 1) <= depth:
            return
        walked[(id(node), prefix)] = depth
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = schema
            for key in ref[2:].split("/"):
                target = target.get(key) if isinstance(target, Mapping) else None
            walk(target, prefix, depth + 1)
        for keyword in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(keyword) or []:
                walk(branch, prefix, depth + 1)
        items = node.get("items")
        if isinstance(items, Mapping):
            walk(items, prefix, depth + 1)
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            for name, child in properties.items():
                path = field_path((*prefix, str(name)))
                if path not in found:
                    found.append(path)
                walk(child, (*prefix, str(name)), depth + 1)

    walk(schema, (), 0)
    return found
