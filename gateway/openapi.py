"""The agent API's OpenAPI document, in a form a client generator and a fuzzer can trust.

django-ninja gives the paths, parameters and response models; this module finishes them:

* the request body of ``POST /tool-calls`` is a ``oneOf`` of one variant per tool the
  reader may call, discriminated by ``tool``, each with that tool's own arguments schema
  (optional arguments may be null: the server drops those nulls, ``tools_registry.strict``),
  generated from the registry, for the agent whose token came with the request; without a
  valid token it is the generic call, whose ``arguments`` is any object (the document is
  public: it does not list the tools);
* every ``$ref`` resolves: definitions pydantic nests in ``$defs`` move to
  ``components/schemas``, and a tool schema's local ``$ref``s are rewritten to where the
  schema now lives;
* each operation lists only the error codes it can return, by status, with examples;
* response headers are documented (``Location``, ``Retry-After``, ``Idempotent-Replayed``,
  ``WWW-Authenticate``), the ``Idempotency-Key`` header has its real bounds, and ``servers``
  is ``PUBLIC_URL``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from gateway import errors
from gateway.idempotency import KEY_PATTERN, MAX_KEY_LENGTH
from gateway.schemas import TokenCost, ToolCallIn
from tools_registry.exports import FORMATS
from tools_registry.models import Tool
from tools_registry.schemas import MAX_REPORTED
from tools_registry.strict import nullable_optionals

JSON = dict[str, Any]

SUBMIT = "gateway_api_submit_tool_call"
GET_CALL = "gateway_api_get_tool_call"
CANCEL = "gateway_api_cancel_tool_call"
RETRY = "gateway_api_retry_tool_call"
LIST_TOOLS = "gateway_api_list_tools"

# Which error codes each operation can answer, by status: exactly those (plus 500, which
# a bug can cause anywhere, and 503 unavailable, which PostgreSQL out of reach can).
OPERATION_ERRORS: dict[str, dict[int, list[str]]] = {
    LIST_TOOLS: {
        400: ["invalid_request", "invalid_end_user"],
        401: ["not_authenticated", "user_token_invalid"],
        403: ["agent_stopped", "role_not_assertable"],
        503: ["identity_provider_unavailable"],
    },
    SUBMIT: {
        400: [
            "invalid_request",
            "invalid_arguments",
            "idempotency_key_required",
            "invalid_end_user",
        ],
        401: ["not_authenticated", "user_token_invalid"],
        403: [
            "tool_not_allowed",
            "tool_disabled",
            "agent_disabled",
            "user_not_allowed",
            "refused_by_policy",
            "tool_not_allowed_for_user",
            "role_not_assertable",
            "agent_stopped",
        ],
        404: ["unknown_tool"],
        409: ["idempotency_key_in_use", "tool_version_changed"],
        413: ["body_too_large"],
        415: ["unsupported_media_type"],
        422: ["idempotency_key_reused", "idempotency_key_expired", "tool_failed"],
        429: ["rate_limited", "max_rounds_exceeded"],
        502: ["tool_failed"],
        503: ["read_abandoned", "circuit_open", "unavailable", "identity_provider_unavailable"],
        504: ["timeout"],
    },
    GET_CALL: {
        400: ["invalid_request"],
        401: ["not_authenticated"],
        403: ["agent_stopped"],
        404: ["call_not_found"],
        429: ["too_many_waits"],
    },
    CANCEL: {
        400: ["invalid_request"],
        401: ["not_authenticated"],
        403: ["agent_stopped"],
        404: ["call_not_found"],
        409: ["invalid_state"],
    },
    RETRY: {
        400: ["invalid_request"],
        401: ["not_authenticated"],
        403: ["agent_stopped"],
        404: ["call_not_found"],
        409: ["invalid_state", "retry_not_allowed"],
        503: ["circuit_open", "unavailable"],
    },
}
for _statuses in OPERATION_ERRORS.values():
    _statuses[500] = ["internal_error"]
    if "unavailable" not in _statuses.setdefault(503, []):
        _statuses[503].append("unavailable")

# Statuses whose answer a repeat of the Idempotency-Key replays (a read's stored answer).
REPLAYED_STATUSES = {SUBMIT: {200, 202, 403, 409, 422, 502, 503, 504}}


def _example_errors() -> dict[str, errors.ApiError]:
    """One example of each code, from the factories the API answers with."""
    made = [
        errors.invalid_request("The request body does not have the expected fields.",
                               [{"path": "$.session_id", "message": "Field required"}]),
        errors.invalid_arguments([{"path": "$.to", "message": "'to' is required.",
                                   "validator": "required"}]),
        errors.idempotency_key_required(),
        errors.not_authenticated(),
        errors.tool_not_allowed("issue_refund"),
        errors.tool_disabled("issue_refund"),
        errors.refused_by_policy("issue_refund", "Chargebacks go to the bank.", rule=3,
                                 policy_version=4),
        errors.tool_not_allowed_for_user("issue_refund", user={"id": "u-42", "roles": ["viewer"]},
                                         roles_allowed=["support"]),
        errors.role_not_assertable("This agent may not assert the role 'admin'."),
        errors.agent_stopped("Incident 4411: stopped by the on-call engineer."),
        errors.invalid_end_user("on_behalf_of must be a string or {\"id\", \"roles\"}."),
        errors.user_token_invalid("The user token has expired."),
        errors.identity_provider_unavailable("The identity provider's keys could not be read."),
        errors.cannot_run("agent_disabled", "The agent that made this call is disabled."),
        errors.cannot_run("user_not_allowed",
                          "The agent's role scopes no longer let this call's user use the tool."),
        errors.unknown_tool("launch_rocket"),
        errors.idempotency_key_in_use(),
        errors.cannot_run("tool_version_changed", "The tool's definition changed."),
        errors.body_too_large(262144),
        errors.unsupported_media_type("text/plain"),
        errors.idempotency_key_reused(),
        errors.idempotency_key_expired(),
        errors.rate_limited(scope="agent", limit="30/minute", retry_after=12),
        errors.max_rounds_exceeded(10),
        errors.too_many_waits(20),
        errors.read_abandoned("The web process running this read stopped before it ran."),
        errors.circuit_open("get_customer", retry_after=30),
        errors.unavailable(),
        errors.timeout(),
        errors.call_not_found(),
        errors.invalid_state("Only a pending call can be cancelled; this one is approved.",
                             "Read the call's status; it is already decided."),
        errors.retry_not_allowed("Destructive calls are not retried."),
        errors.internal_error(),
    ]  # fmt: skip
    return {e.code: e for e in made}


EXAMPLE_ERRORS = _example_errors()
TOOL_FAILED_EXAMPLES = {
    422: errors.tool_failed("No customer cus_0099.", tool_code="customer_not_found", retryable=False),
    502: errors.tool_failed("ConnectError: connection reset", tool_code="handler_error", retryable=True),
}  # fmt: skip


def header(description: str, schema: JSON) -> JSON:
    return {"description": description, "schema": schema}


RETRY_AFTER = header(
    "Seconds to wait before asking again.", {"type": "string", "pattern": "^[0-9]+$"}
)
REPLAYED = header(
    "true when this is the stored answer of an earlier request with the same Idempotency-Key.",
    {"type": "string", "enum": ["true"]},
)
LOCATION = header("The call's status URL (the same as status_url).", {"type": "string"})
AUTHENTICATE = header("How to authenticate: Bearer.", {"type": "string"})


def finish(schema: JSON, *, tools: Iterable[Tool], public_url: str) -> JSON:
    """The finished document from django-ninja's ``schema`` (not modified)."""
    doc = copy.deepcopy(schema)
    doc["servers"] = [{"url": public_url, "description": "This Countersign"}]
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    _hoist_pydantic_definitions(components)
    components["Error"] = _error_component()
    for path_item in doc["paths"].values():
        # django-ninja repeats a GET endpoint's operation, operationId and all, for the HEAD
        # it also answers (gateway.api.READ): two operations of one id are no valid
        # document, and HEAD is GET without the body, as HTTP itself says.
        if "get" in path_item:
            path_item.pop("head", None)
        for operation in path_item.values():
            _finish_operation(operation, components)
    tool_calls = doc["paths"].get("/api/v1/tool-calls", {}).get("post")
    if tool_calls is not None:
        tool_calls["requestBody"] = _submit_body(list(tools), components)
    return doc


def _hoist_pydantic_definitions(components: JSON) -> None:
    token_cost = TokenCost.model_json_schema(ref_template="#/components/schemas/{model}")
    components["TokenCost"] = token_cost
    common = ToolCallIn.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in common.pop("$defs", {}).items():
        components[name] = definition
    components["ToolCallIn"] = common


def _error_component() -> JSON:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "suggestion", "retryable"],
                "properties": {
                    "code": {"type": "string", "description": "What happened, for programs."},
                    "message": {"type": "string", "description": "What happened, for people."},
                    "suggestion": {"type": "string", "description": "What to do next."},
                    "retryable": {
                        "type": "boolean",
                        "description": "Whether asking again may give another answer.",
                    },
                    "details": {
                        "description": "More about it: the JSON paths of invalid values, "
                        "the limit hit, or tool_code (the tool's own code of a failure)."
                    },
                    "problems_total": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "invalid_arguments: how many problems the arguments "
                        f"have; details lists at most {MAX_REPORTED} of them.",
                    },
                },
            },
            "call": {
                "$ref": "#/components/schemas/ToolCallOut",
                "description": "A read that failed: the call, as GET returns it.",
            },
        },
    }


def _finish_operation(operation: JSON, components: JSON) -> None:
    operation_id = operation.get("operationId", "")
    # ninja keys responses by int; OpenAPI by string. Its error responses are replaced.
    responses = {str(k): v for k, v in operation.get("responses", {}).items() if str(k)[:1] in "23"}
    operation["responses"] = responses
    for status, codes in sorted(OPERATION_ERRORS.get(operation_id, {}).items()):
        responses[str(status)] = _error_response(operation_id, status, codes)
    for code, response in responses.items():
        headers = _headers(operation_id, int(code))
        if headers:
            response["headers"] = headers
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query" and parameter["name"] == "format":
            parameter["schema"] = {
                "type": "string",
                "enum": list(FORMATS),
                "default": "openai",
                "description": "The shape of the tool definitions.",
            }
        if parameter["in"] == "query" and parameter["name"] == "seen":
            parameter["schema"] = {
                "type": "string",
                "enum": ["", *components["ToolCallOut"]["properties"]["status"]["enum"]],
                "default": "",
                "description": "The status you last saw: the answer comes at once if it differs.",
            }
        if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
            parameter["description"] = (
                "Your key for this request (a UUID): the same key and body replay the first "
                "answer. Printable ASCII, no spaces at either end."
            )
            parameter["schema"] = {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_KEY_LENGTH,
                "pattern": KEY_PATTERN,
            }
            parameter["example"] = "5f0c6c7e-2f1d-4c8a-9d59-3a1f0e2b7c41"
    _add_examples(operation_id, responses)


def _error_response(operation_id: str, status: int, codes: list[str]) -> JSON:
    examples = {}
    for code in codes:
        error = TOOL_FAILED_EXAMPLES[status] if code == "tool_failed" else EXAMPLE_ERRORS[code]
        examples[code] = {"summary": error.message, "value": error.body()}
    return {
        "description": ", ".join(codes),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {
                            "type": "object",
                            "properties": {
                                "error": {
                                    "type": "object",
                                    "properties": {"code": {"type": "string", "enum": codes}},
                                }
                            },
                        },
                    ]
                },
                "examples": examples,
            }
        },
    }


def _headers(operation_id: str, status: int) -> JSON:
    headers: JSON = {}
    if status in REPLAYED_STATUSES.get(operation_id, set()):
        headers["Idempotent-Replayed"] = {**REPLAYED, "required": False}
    if status == 202:
        headers["Location"] = {**LOCATION, "required": True}
        headers["Retry-After"] = {**RETRY_AFTER, "required": True}
    if status in (409, 429, 502, 503):  # 502: a read's upstream that asked for a wait
        headers["Retry-After"] = {**RETRY_AFTER, "required": False}
    if status == 401:
        headers["WWW-Authenticate"] = {**AUTHENTICATE, "required": True}
    return headers


SAMPLE_CALL = {
    "id": "0b8f7c51-8f3e-4a52-9a38-5c0f8c1d2e3f",
    "tool": "send_email",
    "risk": "write",
    "status": "pending",
    "session_id": "task-42",
    "status_url": "https://countersign.example.com/api/v1/tool-calls/0b8f7c51-8f3e-4a52-9a38-5c0f8c1d2e3f",
    "created_at": "2026-05-04T09:30:00+00:00",
    "expires_at": "2026-05-05T09:30:00+00:00",
    "approvals_required": 1,
    "approvals": 0,
    "decision": None,
    "result": None,
    "error": None,
    "needs_attention": False,
}


def _add_examples(operation_id: str, responses: JSON) -> None:
    samples = {
        (SUBMIT, "202"): SAMPLE_CALL,
        (
            SUBMIT,
            "200",
        ): {
            **SAMPLE_CALL,
            "tool": "get_customer",
            "risk": "read",
            "status": "succeeded",
            "expires_at": None,
            "approvals_required": 0,
            "result": {"customer_id": "cus_0002", "name": "Grace Hopper"},
        },
        (GET_CALL, "200"): {**SAMPLE_CALL, "status": "approved", "approvals": 1},
        (CANCEL, "200"): {**SAMPLE_CALL, "status": "cancelled"},
        (RETRY, "202"): {**SAMPLE_CALL, "status": "approved", "approvals": 1},
    }
    for (op, status), value in samples.items():
        if op == operation_id and status in responses:
            content = responses[status].setdefault("content", {}).setdefault("application/json", {})
            content["example"] = value


COMMON_FIELDS = ("session_id", "on_behalf_of", "reasoning", "token_cost", "callback_url")


def _submit_body(tools: list[Tool], components: JSON) -> JSON:
    common = components["ToolCallIn"]
    if not tools:
        schema: JSON = {"$ref": "#/components/schemas/ToolCallIn"}
        example: JSON | None = None
    else:
        variants = []
        mapping = {}
        for tool in tools:
            name = f"ToolCall.{tool.name}"
            components[name] = _variant(tool, name, common)
            ref = f"#/components/schemas/{name}"
            variants.append({"$ref": ref})
            mapping[tool.name] = ref
        schema = {"oneOf": variants, "discriminator": {"propertyName": "tool", "mapping": mapping}}
        example = _example_call(tools)
    media: JSON = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {
        "required": True,
        "description": "One call of one of your tools; `arguments` must fit that tool's schema.",
        "content": {"application/json": media},
    }


def _variant(tool: Tool, component: str, common: JSON) -> JSON:
    arguments = _rebased(
        nullable_optionals(tool.input_schema),
        f"#/components/schemas/{component}/properties/arguments",
    )
    arguments.pop("$schema", None)
    arguments.setdefault("description", f"Arguments of {tool.name}.")
    properties = {"tool": {"type": "string", "const": tool.name, "description": tool.description}}
    properties["arguments"] = arguments
    for field in COMMON_FIELDS:
        properties[field] = common["properties"][field]
    return {
        "type": "object",
        "title": f"A call of {tool.name} ({tool.risk})",
        "required": ["tool", "arguments", "session_id"],
        "additionalProperties": False,
        "properties": properties,
    }  # fmt: skip


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref``s (``#/...``) pointing into ``base``, where it is
    placed in the document."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = base + value[1:]
            else:
                out[key] = _rebased(value, base)
        return out
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    return schema


def _example_call(tools: list[Tool]) -> JSON | None:
    if "send_email" not in {t.name for t in tools}:
        return None  # no example rather than one that might not fit the tool
    arguments = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}
    return {"tool": "send_email", "arguments": arguments, "session_id": "task-42",
            "reasoning": "The customer asked for a confirmation."}  # fmt: skip
