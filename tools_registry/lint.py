"""Schema lint: is a tool's definition clear enough for a model to call it safely?

Rules (each problem names its rule and the argument's JSON path):

- ``schema_valid``: the arguments schema is valid JSON Schema Draft 2020-12, an object.
- ``description``: the description says what the tool does (a sentence, not the name).
- ``side_effects``: a write or destructive tool's description states its side effects
  ("Side effect: ...") and that they cannot be undone.
- ``argument_names``: argument names say what they are (``customer_id``, not ``id``).
- ``property_descriptions``: every property has a description.
- ``closed_sets``: a closed set of values is an ``enum``, not a pattern or prose.
- ``required_explicit``: every object states ``required`` (``[]`` when nothing is);
  a nested patch object may state ``minProperties`` instead.
- ``string_max_length``: every free string has a ``maxLength``.
- ``additional_properties``: every object sets ``additionalProperties: false``.

Run ``python manage.py lint_tools``; the admin shows each tool's result. ``--stored`` lints
the rows in the database, their policy rules included (``lint_stored``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tools_registry import rules
from tools_registry.policy import Risk
from tools_registry.schemas import json_path, schema_problems

RULES = (
    "schema_valid",
    "description",
    "side_effects",
    "argument_names",
    "property_descriptions",
    "closed_sets",
    "required_explicit",
    "string_max_length",
    "additional_properties",
)

# Names that do not say what they hold or identify; the model has to guess.
AMBIGUOUS_NAMES = frozenset(
    {
        "id",
        "pk",
        "uuid",
        "key",
        "ref",
        "value",
        "val",
        "data",
        "obj",
        "object",
        "item",
        "info",
        "input",
        "arg",
        "args",
        "param",
        "params",
        "payload",
        "thing",
        "misc",
        "other",
        "target",
    }
)

_SIDE_EFFECT = re.compile(r"(?i)\bside[- ]effects?\b")
_IRREVERSIBLE = re.compile(
    r"(?i)\b(?:cannot|can't|can ?not)\s+be\s+(?:undone|reversed|recalled|restored|rolled back)"
    r"|\birreversibl|\bpermanent(?:ly)?\b"
)
# A pattern that only lists literal alternatives: ^(free|pro|enterprise)$
_ALTERNATION_PATTERN = re.compile(r"^\^?\(?(?:\?:)?[\w .-]+(?:\|[\w .-]+)+\)?\$?$")
# Prose that lists the allowed values: "one of ...", "either x or y", "low|medium|high".
_CLOSED_SET_PROSE = re.compile(
    r"(?i)\bone of\b|\beither\b[^.]*\bor\b|\b\w+(?:\s*\|\s*\w+){1,}\b|\bmust be (?:'|\")"
)


# Stands for "every item" in a path: $.lines[*].sku
EACH = object()


def _path(parts: list[Any]) -> str:
    rendered = json_path(["__each__" if p is EACH else p for p in parts])
    return rendered.replace(".__each__", "[*]")


@dataclass(frozen=True)
class LintProblem:
    rule: str
    path: str  # "$" for the tool itself, the argument's JSON path otherwise
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.path}: {self.message}"


def lint_definition(
    *, name: str, description: str, risk: str, input_schema: Any
) -> list[LintProblem]:
    """Every lint problem of one tool definition; an empty list means it passes."""
    problems = list(_lint_description(name, description, risk))
    invalid = schema_problems(input_schema)
    if invalid:
        problems += [LintProblem("schema_valid", "$", p) for p in invalid]
        return problems
    if input_schema.get("type") != "object":
        problems.append(
            LintProblem("schema_valid", "$", 'The arguments schema must be "type": "object".')
        )
    problems += _lint_schema(input_schema, [], nested=False)
    return problems


def lint_tool(tool: Any) -> list[LintProblem]:
    """Lint a ``Tool`` row or a ``RegisteredTool``: anything with the four definition fields."""
    return lint_definition(
        name=tool.name,
        description=tool.description,
        risk=tool.risk,
        input_schema=tool.input_schema,
    )


def lint_stored(tool: Any, teams: frozenset[str]) -> list[LintProblem]:
    """``lint_tool`` of a ``Tool`` row, and what today's checks say of the policy rules it
    holds (``policy_rules``): a rule saved before a check existed keeps running as written,
    one that reads a misspelt argument never matching, until the policy is next saved."""
    stored_rules = rules.problems(
        tool.rules, risk=tool.risk, input_schema=tool.input_schema, teams=teams
    )
    return [*lint_tool(tool), *(LintProblem("policy_rules", "$", p) for p in stored_rules)]


def _lint_description(name: str, description: str, risk: str) -> Iterator[LintProblem]:
    text = (description or "").strip()
    words = re.findall(r"[A-Za-z][\w'-]*", text)
    normalised = re.sub(r"[\W_]+", " ", text).strip().lower()
    if len(words) < 4 or normalised == re.sub(r"[\W_]+", " ", name).strip().lower():
        yield LintProblem(
            "description",
            "$",
            "Say in a sentence what the tool does and what it returns.",
        )
    if risk in (Risk.WRITE, Risk.DESTRUCTIVE):
        if not _SIDE_EFFECT.search(text):
            yield LintProblem(
                "side_effects",
                "$",
                f'A {risk} tool\'s description must state its side effects ("Side effect: ...").',
            )
        if not _IRREVERSIBLE.search(text):
            yield LintProblem(
                "side_effects",
                "$",
                f"A {risk} tool's description must say that its effect cannot be undone.",
            )


def _is_object(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return (
        kind == "object"
        or (isinstance(kind, list) and "object" in kind)
        or (kind is None and "properties" in schema)
    )


def _is_string(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _lint_schema(schema: Any, parts: list[Any], *, nested: bool) -> list[LintProblem]:
    if not isinstance(schema, Mapping):
        return []
    problems: list[LintProblem] = []
    path = _path(parts)
    if _is_object(schema):
        if schema.get("additionalProperties") is not False:
            problems.append(
                LintProblem(
                    "additional_properties",
                    path,
                    "Set additionalProperties: false so a misspelt argument is refused.",
                )
            )
        if "required" not in schema and not (nested and "minProperties" in schema):
            problems.append(
                LintProblem(
                    "required_explicit",
                    path,
                    'State which arguments are required ("required": [...], [] for none).',
                )
            )
        properties = schema.get("properties") or {}
        undeclared = [n for n in schema.get("required") or [] if n not in properties]
        if undeclared and not schema.get("patternProperties"):
            problems.append(
                LintProblem(
                    "required_explicit",
                    path,
                    f"required names {', '.join(map(repr, undeclared))}, which is not declared.",
                )
            )
        for prop_name, prop in properties.items():
            prop_path = _path([*parts, prop_name])
            if prop_name.lower() in AMBIGUOUS_NAMES or len(prop_name) < 2:
                problems.append(
                    LintProblem(
                        "argument_names",
                        prop_path,
                        f"{prop_name!r} is ambiguous; name what it is, like customer_id.",
                    )
                )
            if not isinstance(prop, Mapping) or not str(prop.get("description", "")).strip():
                problems.append(
                    LintProblem(
                        "property_descriptions", prop_path, "Describe what this argument is."
                    )
                )
            problems += _lint_schema(prop, [*parts, prop_name], nested=True)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            problems += _lint_schema(extra, [*parts, EACH], nested=True)
    if _is_string(schema) and "enum" not in schema and "const" not in schema:
        if "maxLength" not in schema:
            problems.append(
                LintProblem(
                    "string_max_length", path, "Give this string a maxLength to bound its size."
                )
            )
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and _ALTERNATION_PATTERN.match(pattern):
            problems.append(
                LintProblem(
                    "closed_sets",
                    path,
                    f"The pattern {pattern!r} lists fixed values; use an enum.",
                )
            )
        elif _CLOSED_SET_PROSE.search(str(schema.get("description", ""))):
            problems.append(
                LintProblem(
                    "closed_sets",
                    path,
                    "The description lists the allowed values; declare them as an enum.",
                )
            )
    items = schema.get("items")
    if isinstance(items, Mapping):
        problems += _lint_schema(items, [*parts, EACH], nested=True)
    for index, item in enumerate(schema.get("prefixItems") or []):
        problems += _lint_schema(item, [*parts, index], nested=True)
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword) or []:
            problems += _lint_schema(branch, parts, nested=nested)
    for def_name, definition in (schema.get("$defs") or {}).items():
        problems += _lint_schema(definition, [*parts, "$defs", def_name], nested=True)
    return problems
