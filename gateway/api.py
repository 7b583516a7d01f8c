"""The agent API (v1): thin endpoints over the intake service and the selectors."""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from pydantic import Field

from approvals.models import ToolCall
from approvals.services.calls import RetryRefused, cancel_call, retry_call
from approvals.transitions import InvalidTransition
from gateway import breaker, end_users, errors, intake, longpoll, payloads, responses, selectors
from gateway.responses import StoredResponse, represent_call
from gateway.schemas import ErrorOut, ToolCallIn, ToolCallOut
from tools_registry import scopes
from tools_registry.exports import FORMATS, export_tools
from tools_registry.models import Agent
from tools_registry.services.tokens import authenticate_token

logger = logging.getLogger(__name__)


class AgentBearer(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Agent | None:
        agent = authenticate_token(token)
        if agent is not None and agent.stopped_at is not None:
            # Every endpoint: a stopped agent neither acts nor reads until it is resumed.
            raise errors.agent_stopped(agent.stop_reason, agent.stopped_at.isoformat())
        if agent is not None:
            request.agent = agent  # type: ignore[attr-defined]
        return agent


api = NinjaAPI(
    title="Countersign agent API",
    version="1",
    description="Send tool calls through Countersign: reads run at once, writes wait for a reviewer.",
    auth=AgentBearer(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)

ERROR_RESPONSES: dict[int, Any] = {
    code: ErrorOut for code in (400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504)
}


def error_response(error: errors.ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def stored_response(stored: StoredResponse) -> JsonResponse:
    response = JsonResponse(stored.body, status=stored.status)
    for name, value in stored.headers.items():
        response[name] = value
    return response


@api.exception_handler(errors.ApiError)
def _api_error(request: HttpRequest, exc: errors.ApiError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(AuthenticationError)
def _auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(errors.not_authenticated())


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return error_response(errors.invalid_request("The request is not valid.", details=exc.errors))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(
        errors.ApiError(
            status=exc.status_code,
            code="http_error",
            message=str(exc),
            suggestion="Check the request.",
        )
    )


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    # A bug, or a dependency failing in a way nothing expected: the agent still gets the
    # one error shape, and the details go to the log, not to the agent.
    logger.exception("agent API request failed: %s %s", request.method, request.path)
    return error_response(errors.internal_error())


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error_response(errors.body_too_large(settings.API_MAX_BODY_BYTES))


def _read_json_body(request: HttpRequest) -> dict[str, Any]:
    limit = settings.API_MAX_BODY_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise errors.body_too_large(limit)
    try:
        raw = request.body
    except RequestDataTooBig:
        raise errors.body_too_large(limit) from None
    if len(raw) > limit:
        raise errors.body_too_large(limit)
    try:
        parsed = json.loads(raw, parse_constant=payloads.reject_constant)
    except RecursionError:
        raise errors.invalid_request(
            f"The body nests deeper than {payloads.MAX_JSON_DEPTH} levels."
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, over-long integers
        raise errors.invalid_request(f"The body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(parsed, dict):
        raise errors.invalid_request("The body must be a JSON object.")
    if problem := payloads.json_problem(parsed):
        raise errors.invalid_request(f"The body cannot be accepted: {problem}")
    return parsed


class ToolsQuery(Schema):
    format: str = "openai"
    on_behalf_of: str | None = Field(
        default=None,
        max_length=150,
        description="The end user's id: list only the tools this user may call.",
    )
    roles: str | None = Field(
        default=None,
        max_length=2048,
        description="The end user's roles, comma-separated (an agent trusted to assert them).",
    )


@api.get(
    "/tools",
    summary="The tools this agent may call (for one end user)",
    description=(
        "With an end user (the on_behalf_of and roles parameters, the "
        "Countersign-On-Behalf-Of header, or the user's token in Countersign-User-Token), "
        "only the tools that user may call."
    ),
    response={200: list[dict[str, Any]], **ERROR_RESPONSES},
)
def list_tools(request: HttpRequest, query: Query[ToolsQuery]) -> Any:
    if query.format not in FORMATS:
        raise errors.invalid_request(f"format must be one of {', '.join(FORMATS)}")
    agent: Agent = request.auth  # type: ignore[attr-defined]
    user = end_users.listing_user(
        agent,
        on_behalf_of=_queried_user(query),
        header=request.headers.get(end_users.ON_BEHALF_OF_HEADER),
        user_token=request.headers.get(end_users.USER_TOKEN_HEADER),
        transport="rest",
    )
    return export_tools(scopes.tools_for(agent, user), query.format)


def _queried_user(query: ToolsQuery) -> Any:
    """The end user named in the query (None when it names none), as on_behalf_of."""
    if query.on_behalf_of is None and query.roles is None:
        return None
    named: dict[str, Any] = {"id": query.on_behalf_of or ""}
    if query.roles is not None:
        named["roles"] = [role.strip() for role in query.roles.split(",") if role.strip()]
    return named


@api.post(
    "/tool-calls",
    summary="Propose a tool call",
    description=(
        "Reads run at once and answer 200 with the result. Writes and destructive calls wait "
        "for approval and answer 202 with a status_url. Send an Idempotency-Key header: the "
        "same key and body replays the first answer."
    ),
    response={200: ToolCallOut, 202: ToolCallOut, **ERROR_RESPONSES},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ToolCallIn.model_json_schema()}},
        },
        "parameters": [
            {
                "in": "header",
                "name": "Idempotency-Key",
                "required": True,
                "schema": {"type": "string", "maxLength": 255},
            },
            {
                "in": "header",
                "name": "Countersign-User-Token",
                "required": False,
                "description": "The end user's token from the identity provider (agents "
                "set to verify users' roles).",
                "schema": {"type": "string"},
            },
        ],
    },
)
def submit_tool_call(request: HttpRequest) -> HttpResponse:
    agent: Agent = request.auth  # type: ignore[attr-defined]
    raw = _read_json_body(request)
    payload = payloads.parse_call(raw)
    end_user = intake.identify(
        agent=agent,
        payload=payload,
        user_token=request.headers.get(end_users.USER_TOKEN_HEADER),
    )
    stored = intake.submit(
        agent=agent,
        idempotency_key=request.headers.get("Idempotency-Key"),
        payload=payload,
        raw=raw,
        end_user=end_user,
    )
    return stored_response(stored)


class WaitQuery(Schema):
    wait: float = Field(
        default=0,
        ge=0,
        le=longpoll.MAX_WAIT_SECONDS,
        description="Seconds to wait for the status to change (long-poll), at most 60.",
    )
    seen: str = Field(
        default="",
        max_length=16,
        description="The status you last saw: the answer comes at once if it differs.",
    )


@api.get(
    "/tool-calls/{call_id}",
    summary="A call's status, decision and result",
    description=(
        "With wait=N the answer comes as soon as the call's status changes (from `seen`, or "
        "from its status when the request arrives) or is terminal, or after N seconds."
    ),
    url_name="get_tool_call",
    response={200: ToolCallOut, **ERROR_RESPONSES},
)
def get_tool_call(request: HttpRequest, call_id: UUID, query: Query[WaitQuery]) -> HttpResponse:
    call = longpoll.wait_for_change(
        agent=request.auth,  # type: ignore[attr-defined]
        call_id=call_id,
        wait=query.wait,
        seen=query.seen,
    )
    if call is None:
        raise errors.call_not_found()
    return JsonResponse(represent_call(call))


@api.post(
    "/tool-calls/{call_id}/cancel",
    summary="Withdraw a call that waits for approval",
    response={200: ToolCallOut, **ERROR_RESPONSES},
)
def cancel_tool_call(request: HttpRequest, call_id: UUID) -> HttpResponse:
    agent: Agent = request.auth  # type: ignore[attr-defined]
    try:
        call = cancel_call(call_id=call_id, agent=agent)
    except ToolCall.DoesNotExist:
        raise errors.call_not_found() from None
    except InvalidTransition as exc:
        raise errors.invalid_state(
            f"Only a pending call can be cancelled; this one is {exc.current}.",
            "Read the call's status; it is already decided.",
        ) from None
    return JsonResponse(represent_call(call))


@api.post(
    "/tool-calls/{call_id}/retry",
    summary="Run a failed write again with its original idempotency key",
    description="Destructive calls are refused: their failure goes to a person instead.",
    response={202: ToolCallOut, **ERROR_RESPONSES},
)
def retry_tool_call(request: HttpRequest, call_id: UUID) -> HttpResponse:
    agent: Agent = request.auth  # type: ignore[attr-defined]
    call = selectors.call_of_agent(agent, call_id)
    if call is None:
        raise errors.call_not_found()
    try:
        admission = breaker.admit(call.tool)
    except breaker.CircuitOpen as exc:
        raise errors.circuit_open(call.tool.name, retry_after=exc.retry_after) from None
    except redis.RedisError:
        raise errors.unavailable() from None
    try:
        call = retry_call(call_id=call_id, agent=agent)
    except RetryRefused as exc:
        breaker.release(admission)
        raise errors.retry_not_allowed(exc.message) from None
    except InvalidTransition as exc:
        breaker.release(admission)
        raise errors.invalid_state(
            f"Only a failed write can be retried; this one is {exc.current}.",
            "Read the call's status and result.",
        ) from None
    body = represent_call(call)
    response = JsonResponse(body, status=202)
    response["Retry-After"] = str(responses.PENDING_RETRY_AFTER_SECONDS)
    response["Location"] = body["status_url"]
    return response
