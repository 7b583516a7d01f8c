"""An HTTP API's tools, read from its OpenAPI document (3.0 or 3.1, JSON or YAML).

Each operation with an ``operationId`` becomes a tool named ``<upstream>__<operationId>``.
Its input schema merges the operation's path, query and header parameters with its JSON
request body (the body's properties when it is an object, else the whole body under
``body``), ``$ref``s resolved (a recursive model's kept, as ``$defs``). Its risk: GET/HEAD
read, DELETE destructive, POST/PUT/PATCH write, unless the operation says
``x-countersign-risk``. An operation may name the lookup operation reconciliation calls with
a call's idempotency key (``x-countersign-lookup``: an operationId, or ``{"operationId":
..., "parameter": ...}``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urljoin

import httpx
import jsonref
import yaml
from django.conf import settings
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from core import bounded_http, tls
from tools_registry.policy import Risk
from tools_registry.schemas import foreign_references
from tools_registry.upstreams.http import HEADER_NAME, header_key
from tools_registry.upstreams.offers import (
    JSON,
    MAX_EXPANDED_NODES,
    ImportedTool,
    ImportFailed,
    Offer,
    cycle_heads,
    cycles_as_refs,
    drop_duplicates,
    expanded_size,
    loops_in_place,
    object_schema_problems,
    tool_name,
)

METHODS = ("get", "head", "post", "put", "patch", "delete")
RISK_OF_METHOD = {
    "get": Risk.READ,
    "head": Risk.READ,
    "post": Risk.WRITE,
    "put": Risk.WRITE,
    "patch": Risk.WRITE,
    "delete": Risk.DESTRUCTIVE,
}
OVERWRITING = {"put", "patch", "delete"}
IDEMPOTENT = {"get", "head", "put", "delete"}  # HTTP's own meaning of the methods
PARAMETER_PLACES = ("path", "query", "header")
# Headers the transport owns: no argument may set them.
TRANSPORT_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection"}
)


def fetch(url: str, *, headers: list[tuple[str, str]], timeout: float) -> JSON:
    """The document at ``url``: read with the upstream's headers, no redirects followed,
    at most ``UPSTREAM_MAX_DOCUMENT_BYTES`` (inflated), within ``timeout`` as a whole;
    parsed (JSON, else YAML) and validated."""
    limit = settings.UPSTREAM_MAX_DOCUMENT_BYTES
    # As a call's request (``http._send``): httpx's timeout bounds each read, not the fetch
    # (a server dripping its answer held the import without end), and its decoders inflate
    # each chunk whole (130 KB of gzip were 128 MB in memory).
    try:
        fetched = bounded_http.get(
            url, headers=dict(headers), timeout=timeout, limit=limit, verify=tls.context()
        )
    except bounded_http.ProxyUnusable as exc:
        raise ImportFailed(f"The OpenAPI document could not be fetched: {exc}.") from None
    except httpx.HTTPError as exc:
        raise ImportFailed(
            f"The OpenAPI document could not be fetched: {type(exc).__name__}."
        ) from None
    if fetched.status != 200:
        raise ImportFailed(f"Fetching the OpenAPI document answered HTTP {fetched.status}.")
    if fetched.truncated:
        raise ImportFailed(f"The OpenAPI document is larger than {limit} bytes.")
    return parse(fetched.body)


def parse(body: bytes) -> JSON:
    try:
        document = json.loads(body)
    except RecursionError:
        raise ImportFailed("The OpenAPI document nests too deep to be read.") from None
    except ValueError:
        try:
            document = yaml.load(body, Loader=_JsonRulesLoader)  # noqa: S506 (a SafeLoader)
        except RecursionError:
            raise ImportFailed("The OpenAPI document nests too deep to be read.") from None
        except yaml.YAMLError:
            raise ImportFailed("The OpenAPI document is neither JSON nor YAML.") from None
    # YAML's aliases share one node many times: a few hundred bytes of anchors, each used ten
    # times by the next, are 10**12 nodes to every walk of the document below. Held to the
    # size limit as written out, as a JSON document is (each of its nodes takes a byte).
    limit = settings.UPSTREAM_MAX_DOCUMENT_BYTES
    if expanded_size(document, limit) > limit:
        raise ImportFailed(
            f"The OpenAPI document is larger than {limit} bytes once its aliases are written out."
        )
    if not isinstance(document, dict):
        raise ImportFailed("The OpenAPI document is not an object.")
    if foreign := foreign_references(document):
        # The validator and the $ref resolver below would fetch them (or read a file: URL).
        path, ref = foreign[0]
        raise ImportFailed(
            f"The OpenAPI document refers outside itself at {path} ({ref[:100]!r}): only "
            "references within the document (#/...) are followed."
        )
    try:
        validate(document)
    except OpenAPIValidationError as exc:
        raise ImportFailed(f"The OpenAPI document is not valid: {str(exc.message)[:300]}") from None
    except Exception as exc:  # the validator's own errors on unsupported documents
        raise ImportFailed(f"The OpenAPI document cannot be read: {str(exc)[:300]}") from None
    return document


class _JsonRulesLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a plain ``2024-05-01`` read as the string it is to OpenAPI
    (YAML 1.2's JSON rules, which the specification asks for), not as a date (YAML 1.1's),
    which no JSON can hold: the import crashed on a document with a date as an example.
    And each key as the string it is written as (the specification's rule for keys): a
    plain ``200:`` of responses was the number 200, which the validator refused, and keys
    of mixed kinds (``1:`` beside ``name:`` in properties) crashed the import (TypeError)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (<<) first, as SafeLoader does
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found a key that is not a string",
                    key_node.start_mark,
                )
            mapping[key_node.value] = self.construct_object(value_node, deep=deep)
        return mapping


_JsonRulesLoader.yaml_implicit_resolvers = {
    first: [(tag, rule) for tag, rule in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _fetch_nothing(uri: str) -> Any:
    """jsonref's loader: nothing outside the document is fetched (``parse`` refuses such
    references; this holds for a document that did not come through it)."""
    raise ValueError(f"{uri[:100]!r} is outside the document; only references within it count.")


def offer(
    document: JSON,
    *,
    upstream: str,
    document_url: str,
    base_url: str,
    reserved_headers: frozenset[str] = frozenset(),
) -> Offer:
    """The tools the document offers (see the module's docstring). Header parameters named
    in ``reserved_headers`` (the idempotency header, the upstream's own headers) are set by
    Countersign, never by an agent's arguments."""
    reserved = {header_key(h) for h in {*reserved_headers, *TRANSPORT_HEADERS}}
    try:
        resolved = jsonref.replace_refs(
            document, proxies=False, lazy_load=False, loader=_fetch_nothing
        )
    except (jsonref.JsonRefError, RecursionError) as exc:
        raise ImportFailed(f"The document's $refs cannot be resolved: {str(exc)[:200]}") from None

    base = base_url or _server_url(resolved, document_url)
    paths = _paths(resolved)
    operations = {
        op["operationId"]: (method, path)
        for path, item in paths.items()
        for method, op in item.items()
        if method in METHODS and isinstance(op, dict) and op.get("operationId")
    }
    found = Offer()
    for path, item in paths.items():
        for method in METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            label = f"{method.upper()} {path}"
            try:
                found.tools.append(
                    _tool(
                        upstream,
                        base,
                        path,
                        method,
                        item,
                        operation,
                        resolved,
                        operations,
                        reserved,
                    )
                )
            except _Skip as skip:
                found.skipped.append(f"{label}: {skip}")
    return drop_duplicates(found)


class _Skip(Exception):
    pass


def _paths(document: JSON) -> JSON:
    """The document's paths: each key of ``paths`` that begins with ``/`` (OpenAPI's rule
    for a path). The others are extensions (``x-...``), which the validator lets hold
    anything, an operation too: read as a path, ``x-@collector.example/steal`` after a base
    URL of no path (``https://api.internal``) made a URL whose host is the collector's, and
    the upstream's headers went there, past the check on a document's servers
    (``services.upstreams._new_server_host``)."""
    return {
        path: item
        for path, item in (document.get("paths") or {}).items()
        if isinstance(path, str) and path.startswith("/") and isinstance(item, dict)
    }


def _server_url(document: JSON, document_url: str) -> str:
    servers = document.get("servers") or []
    if not servers or not servers[0].get("url"):
        raise ImportFailed("The document names no server; give the upstream a base URL.")
    return urljoin(document_url, servers[0]["url"])


def _tool(
    upstream: str,
    base: str,
    path: str,
    method: str,
    item: JSON,
    operation: JSON,
    document: JSON,
    operations: dict[str, tuple[str, str]],
    reserved: set[str],
) -> ImportedTool:
    operation_id = operation.get("operationId")
    if not operation_id:
        raise _Skip("it has no operationId, which its tool's name would be")
    name = tool_name(upstream, str(operation_id))
    if name is None:
        raise _Skip(f"{upstream}__{operation_id} is not a valid tool name")
    properties, required, parameters = _parameters(item, operation, reserved)
    body = _body(operation, properties, required)
    schema: JSON = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = sorted(set(required))
    if expanded_size(schema) > MAX_EXPANDED_NODES:
        # $refs that each use the one before twice double at every step: a document of
        # 2 KB makes a schema of megabytes, and minutes of work, once written out.
        raise _Skip(f"its schema expands to more than {MAX_EXPANDED_NODES} nodes")
    if loops_in_place(schema):
        raise _Skip(
            "its schema refers to itself without going a level deeper into the arguments, "
            "so checking a call would never end"
        )
    try:
        # A recursive model (a tree whose children are nodes) is a cycle of the resolved
        # objects: it is kept as an MCP server sends one, its nodes $refs to $defs.
        if heads := cycle_heads(schema):
            schema = cycles_as_refs(schema, heads)
        json.dumps(schema)
    except (ValueError, RecursionError):
        raise _Skip("its schema nests too deep to be written out") from None
    except TypeError:  # YAML's !!timestamp, !!set: no JSON holds them
        raise _Skip("its schema holds a value JSON cannot") from None
    if problems := object_schema_problems(schema):
        raise _Skip(f"its arguments' schema is not valid: {problems[0]}")
    risk = operation.get("x-countersign-risk", RISK_OF_METHOD[method])
    if risk not in Risk.values:
        raise _Skip(f"x-countersign-risk must be one of {', '.join(Risk.values)}")
    summary = (operation.get("summary") or "").strip()
    details = (operation.get("description") or "").strip()
    description = " ".join(p for p in (summary, details) if p) or f"{method.upper()} {path}"
    return ImportedTool(
        source_name=str(operation_id),
        name=name,
        description=description[:2000],
        input_schema=schema,
        risk=risk,
        overwrites=method in OVERWRITING or risk == Risk.DESTRUCTIVE,
        idempotent=method in IDEMPOTENT,
        open_world=True,
        operation={
            "method": method.upper(),
            "path": path,
            "base_url": base,
            "parameters": parameters,
            "body": body,
            "lookup": _lookup(operation.get("x-countersign-lookup"), document, operations),
        },
    )


def _parameters(
    item: JSON, operation: JSON, reserved: set[str]
) -> tuple[JSON, list[str], list[JSON]]:
    declared = {(p.get("name"), p.get("in")): p for p in item.get("parameters", [])}
    declared.update({(p.get("name"), p.get("in")): p for p in operation.get("parameters", [])})
    properties: JSON = {}
    required: list[str] = []
    parameters: list[JSON] = []
    for (name, place), parameter in declared.items():
        if place not in PARAMETER_PLACES:
            continue  # cookies are the client's, not the agent's
        if place == "header" and header_key(str(name)) in reserved:
            continue  # Countersign sets it
        if place == "header" and not HEADER_NAME.fullmatch(str(name)):
            # The validator takes any string: one no HTTP client can send ("X Tenant", "Clé")
            # failed every call as it was written, nothing sent, and left each write's
            # outcome unknown, for a person to settle.
            raise _Skip(f"its header parameter {str(name)[:100]!r} is no header's name")
        if name in properties:
            raise _Skip(f"two parameters are named {name!r}")
        declared_schema = parameter.get("schema")
        if declared_schema is not None and not isinstance(declared_schema, dict):
            # OpenAPI 3.1 takes true and false as schemas; an argument's must be an object.
            raise _Skip(f"the schema of its parameter {name!r} is not an object")
        schema = dict(declared_schema or {"type": "string"})
        if parameter.get("description") and "description" not in schema:
            schema["description"] = parameter["description"]
        properties[name] = schema
        if parameter.get("required") or place == "path":
            required.append(name)
        parameters.append({"name": name, "in": place})
    return properties, required, parameters


def _body(operation: JSON, properties: JSON, required: list[str]) -> JSON | None:
    content = (operation.get("requestBody") or {}).get("content") or {}
    schema = (content.get("application/json") or {}).get("schema")
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise _Skip("the schema of its request body is not an object")
    body_required = bool((operation.get("requestBody") or {}).get("required"))
    fields = schema.get("properties") if schema.get("type") == "object" else None
    if isinstance(fields, dict) and not set(fields) & set(properties):
        # OpenAPI 3.1's validator checks a schema's keywords loosely: null, a number or a
        # list of anything but names got this far (a string was read letter by letter).
        body_names = schema.get("required", [])
        if not isinstance(body_names, list) or not all(isinstance(n, str) for n in body_names):
            raise _Skip("the required of its request body is not a list of property names")
        properties.update(fields)
        required.extend(body_names)
        return {"mode": "merged", "properties": sorted(fields)}
    if "body" in properties:
        raise _Skip("a parameter is named 'body', where its request body would go")
    properties["body"] = schema
    if body_required:
        required.append("body")
    return {"mode": "property"}


def _lookup(declared: Any, document: JSON, operations: dict[str, tuple[str, str]]) -> JSON | None:
    """Where reconciliation asks whether a key's effect happened, if the operation says."""
    if declared is None:
        return None
    if not isinstance(declared, str | dict):
        raise _Skip("x-countersign-lookup is neither an operation id nor an object")
    operation_id = declared if isinstance(declared, str) else declared.get("operationId")
    if not isinstance(operation_id, str) or operation_id not in operations:
        raise _Skip(f"x-countersign-lookup names no operation {operation_id!r}")
    method, path = operations[operation_id]
    if method not in ("get", "head"):
        # Reconciliation asks it by itself, with no one's approval: only a read may be.
        raise _Skip(f"the lookup {operation_id} is a {method.upper()}, not a GET")
    lookup = document["paths"][path][method]
    candidates = [
        p for p in (lookup.get("parameters") or []) if p.get("in") in ("path", "query", "header")
    ]
    wanted = declared.get("parameter") if isinstance(declared, dict) else None
    chosen = [p for p in candidates if wanted in (None, p["name"])]
    if len(chosen) != 1:
        raise _Skip(f"the lookup {operation_id} must take the key as its one parameter")
    return {
        "method": method.upper(),
        "path": path,
        "parameter": chosen[0]["name"],
        "in": chosen[0]["in"],
    }
