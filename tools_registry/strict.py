"""Strict tool schemas that keep a tool's meaning: optional fields become required but
nullable, and Countersign drops those nulls before it validates.

OpenAI's strict mode (the Responses API and the Agents SDK's default) accepts only schemas
whose every property is required, every object closed (``additionalProperties: false``),
and a subset of JSON Schema's keywords. Making an optional field simply required changes
what a tool does: a model asked for ``update_customer`` must then invent a name, an e-mail
and a phone to change a plan, and the reviewer sees an overwrite instead of a patch. So a
strict schema says "required, but null means not given", and ``drop_null_optionals``
turns such nulls back into absent fields before the tool's own schema judges the call:
the tool's schema stays the one truth, and a strict model can express every call it
could express before.

Keywords strict mode does not take (lengths, ``minProperties``, ``default``) are left out of
the strict schema and said in the field's description instead; the server still enforces
them with the full schema.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tools_registry.schemas import fits

JSON = dict[str, Any]

# What OpenAI's structured outputs accept in a strict schema.
STRICT_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "title",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "anyOf",
        "$ref",
        "$defs",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
    }
)
STRICT_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
NULL_MEANS_ABSENT = "Optional: null leaves it out."


class NotStrictable(ValueError):
    """The schema has an open object (``additionalProperties`` other than false, pattern
    properties) or a construct strict mode cannot say without changing its meaning."""


def strict_schema(schema: Mapping[str, Any]) -> JSON:
    """The strict form of a tool's arguments schema (raises ``NotStrictable``)."""
    root = copy.deepcopy(dict(schema))
    root.pop("$schema", None)
    converted = _strict(root)
    if "$defs" in root:
        converted["$defs"] = {name: _strict(sub) for name, sub in root["$defs"].items()}
    if converted.get("type") != "object":
        raise NotStrictable("the arguments must be an object")
    return converted


def _strict(schema: Any) -> JSON:
    if not isinstance(schema, dict):
        raise NotStrictable("a schema is not an object")
    if "oneOf" in schema or "allOf" in schema or "not" in schema or "if" in schema:
        raise NotStrictable("oneOf, allOf, not and if have no strict form")
    if "patternProperties" in schema:
        raise NotStrictable("pattern properties have no strict form")
    notes = _unsupported_notes(schema)
    out: JSON = {k: v for k, v in schema.items() if k in STRICT_KEYWORDS and k != "$defs"}
    if out.get("format") is not None and out["format"] not in STRICT_FORMATS:
        notes.append(f"format {out.pop('format')}")
    if "properties" in schema or schema.get("type") == "object":
        if schema.get("additionalProperties", False) is not False:
            raise NotStrictable("an object that takes any property has no strict form")
        required = set(schema.get("required", []))
        properties: JSON = {}
        for name, sub in (schema.get("properties") or {}).items():
            converted = _strict(sub)
            properties[name] = converted if name in required else _nullable(converted)
        out["properties"] = properties
        out["required"] = list(properties)
        out["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        out["items"] = _strict(schema["items"])
    if "anyOf" in schema:
        out["anyOf"] = [_strict(branch) for branch in schema["anyOf"]]
    if notes:
        said = "; ".join(notes)
        out["description"] = f"{out.get('description', '')} ({said})".strip()
    return out


def _nullable(schema: JSON) -> JSON:
    """The same schema, also accepting null, which means "not given"."""
    description = f"{schema.get('description', '')} {NULL_MEANS_ABSENT}".strip()
    kind = schema.get("type")
    if isinstance(kind, str) and "anyOf" not in schema and "$ref" not in schema:
        widened = {**schema, "type": [kind, "null"], "description": description}
        if "enum" in schema:
            widened["enum"] = [*schema["enum"], None]
        return widened
    bare = {k: v for k, v in schema.items() if k != "description"}
    return {"anyOf": [bare, {"type": "null"}], "description": description}


def _unsupported_notes(schema: Mapping[str, Any]) -> list[str]:
    notes = []
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if lo is not None and hi is not None:
        notes.append(f"{lo} to {hi} characters")
    elif hi is not None:
        notes.append(f"at most {hi} characters")
    elif lo is not None:
        notes.append(f"at least {lo} characters")
    if schema.get("minProperties"):
        notes.append(f"at least {schema['minProperties']} of these fields")
    if schema.get("maxProperties") is not None:
        notes.append(f"at most {schema['maxProperties']} of these fields")
    if "default" in schema:
        notes.append(f"default {schema['default']!r}")
    if schema.get("uniqueItems"):
        notes.append("no repeated items")
    return notes


def nullable_optionals(schema: Mapping[str, Any]) -> JSON:
    """The schema of what the API accepts for a tool's arguments: the tool's own schema with
    every optional property that does not already take null also taking it (as absent)."""
    root = copy.deepcopy(dict(schema))
    return _with_nulls(root, root)


def _with_nulls(schema: Any, root: JSON) -> Any:
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(schema.get("properties"), dict):
        required = set(schema.get("required", []))
        properties = {}
        for name, sub in schema["properties"].items():
            converted = _with_nulls(sub, root)
            if name not in required and not _accepts_null(sub, root):
                converted = {"anyOf": [converted, {"type": "null"}]}
            properties[name] = converted
        out["properties"] = properties
        if schema.get("minProperties") == 1 and schema.get("additionalProperties") is False:
            # A null is no property once dropped: "at least one" counts the non-null ones.
            del out["minProperties"]
            some = [
                {"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in properties
            ]
            out = {"allOf": [out, {"anyOf": some}]} if "anyOf" in out else {**out, "anyOf": some}
    if isinstance(schema.get("items"), dict):
        out["items"] = _with_nulls(schema["items"], root)
    if isinstance(schema.get("$defs"), dict):
        out["$defs"] = {k: _with_nulls(v, root) for k, v in schema["$defs"].items()}
    return out


def drop_null_optionals(schema: Mapping[str, Any], arguments: Any) -> Any:
    """``arguments`` with a null given for an optional property that does not take null
    left out, at every depth the schema describes (properties, items, local ``$ref``s)."""
    return _drop(schema, arguments, schema, 0)


def _drop(schema: Any, value: Any, root: Mapping[str, Any], depth: int) -> Any:
    schema = _resolved(schema, root)
    if not isinstance(schema, Mapping) or depth > 64:
        return value
    if isinstance(value, dict) and isinstance(schema.get("properties"), Mapping):
        properties, required = schema["properties"], set(schema.get("required", []))
        kept = {}
        for name, item in value.items():
            sub = properties.get(name)
            if sub is None:
                kept[name] = item
            elif item is None and name not in required and not _accepts_null(sub, root):
                continue
            else:
                kept[name] = _drop(sub, item, root, depth + 1)
        return kept
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_drop(schema["items"], item, root, depth + 1) for item in value]
    return value


def _resolved(schema: Any, root: Mapping[str, Any]) -> Any:
    for _ in range(16):
        ref = schema.get("$ref") if isinstance(schema, Mapping) else None
        if not (isinstance(ref, str) and ref.startswith("#/")):
            return schema
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, Mapping) else None
        schema = target
    return schema


def _accepts_null(schema: Any, root: Mapping[str, Any]) -> bool:
    if schema is True or schema == {}:
        return True
    if not isinstance(schema, Mapping):
        return False
    # Judged with the root's definitions at hand, so a local $ref inside resolves.
    judged = {"$defs": root.get("$defs", {}), **schema}
    return fits(judged, None)
