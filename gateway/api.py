"""The agent API (v1): thin endpoints over the intake service and the selectors."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from ninja import NinjaAPI, Query, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.openapi.schema import OpenAPISchema
from ninja.security import HttpBearer
from pydantic import Field

from approvals.models import ToolCall
from approvals.services.calls import cancel_call
from approvals.transitions import InvalidTransition
from gateway import (
    end_users,
    errors,
    hangups,
    http,
    intake,
    longpoll,
    openapi,
    payloads,
    responses,
    waits,
)
from gateway.responses import StoredResponse, represent_call
from gateway.schemas import ROLES_QUERY_PATTERN, USER_ID_PATTERN, ToolCallOut
from tools_registry import role_scopes
from tools_registry.exports import FORMATS, export_tools
from tools_registry.models import Agent, Tool
from tools_registry.services.tokens import authenticate_token, authenticated_token

logger = logging.getLogger(__name__)


class AgentBearer(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Agent | None:
        found = authenticated_token(token)
        if found is None:
            return None
        agent = found.agent
        if agent.stopped_at is not None:
            # Every endpoint: a stopped agent neither acts nor reads until it is resumed.
            raise errors.agent_stopped(agent.stop_reason, agent.stopped_at.isoformat())
        request.agent = agent  # type: ignore[attr-defined]
        # Which token: a submission reads it again in its transaction (``intake.submit``).
        request.token_id = found.pk  # type: ignore[attr-defined]
        request.authenticated_at = time.monotonic()  # type: ignore[attr-defined]
        return agent


def _still_allowed(request: HttpRequest) -> None:
    """Raises once the request's token no longer authenticates its agent (revoked, expired,
    the agent disabled) or the agent was stopped: asked again while a long-poll waits, so
    that a token revoked meanwhile is not handed the call's result."""
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    agent = authenticate_token(token.strip())
    if agent is None or agent.pk != request.auth.pk:  # type: ignore[attr-defined]
        raise errors.not_authenticated()
    if agent.stopped_at is not None:
        raise errors.agent_stopped(agent.stop_reason, agent.stopped_at.isoformat())


def _token_id(request: HttpRequest) -> int:
    """The id of the token the request was authenticated with (``AgentBearer``): a
    submission or a retry reads it again in its transaction."""
    return request.token_id  # type: ignore[attr-defined,no-any-return]


# The request the OpenAPI document is being made for: ninja's schema view does not pass it
# on, and the document lists the tools of the agent whose token came with it.
_schema_request: ContextVar[HttpRequest | None] = ContextVar("schema_request", default=None)


def _remember_request(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        token = _schema_request.set(request)
        try:
            return view(request, *args, **kwargs)
        finally:
            _schema_request.reset(token)

    return wrapped


def _document_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The OpenAPI document and its page: read only. ninja serves them to any method, so a
    POST or a DELETE got the document (200) where every endpoint answers 405 with Allow."""
    return require_safe(_remember_request(view))


class AgentAPI(NinjaAPI):
    """django-ninja's API, whose OpenAPI document ``gateway.openapi`` finishes."""

    def get_openapi_schema(
        self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None
    ) -> OpenAPISchema:
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        finished = openapi.finish(
            schema, tools=_documented_tools(_schema_request.get()), public_url=settings.PUBLIC_URL
        )
        schema.clear()
        schema.update(finished)
        return schema


def _documented_tools(request: HttpRequest | None) -> list[Tool]:
    """The tools whose arguments the document spells out: those the agent may call when its
    valid token came with the request; none otherwise. The document is public, and the
    tools' schemas say what an agent could do: a reader without a token gets the generic
    ``arguments`` object."""
    authorization = request.headers.get("Authorization", "") if request is not None else ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return []
    agent = authenticate_token(token.strip())
    if agent is None or agent.stopped_at is not None:
        return []  # (a stopped agent neither acts nor reads, its tools' schemas included)
    return list(agent.allowed_tools.filter(enabled=True, available=True).order_by("name"))


api = AgentAPI(
    title="Countersign agent API",
    version="1",
    description=(
        "Send tool calls through Countersign: reads run at once, writes wait for a reviewer. "
        "Every answer under /api/ is JSON; every error is "
        '{"error": {"code", "message", "suggestion", "retryable", "details"?}}. '
        "Strings may not hold NUL characters or unpaired surrogates, and no object may name "
        "a key twice."
    ),
    auth=AgentBearer(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    docs_decorator=_document_view,
)

error_response = http.error_response


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
    # Only a query or path parameter gets here: the one body, a call's, is read by hand.
    return error_response(
        errors.invalid_parameters(
            [
                {"path": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
                for e in exc.errors
            ]
        )
    )


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


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: DatabaseError) -> HttpResponse:
    # PostgreSQL down, restarting or failing over: a 503 to retry, not a bug to report.
    logger.warning(
        "agent API request failed on the database: %s %s: %s", request.method, request.path, exc
    )
    return error_response(errors.database_unavailable())


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error_response(errors.body_too_large(settings.API_MAX_BODY_BYTES))


@api.exception_handler(SuspiciousOperation)
def _suspicious(request: HttpRequest, exc: SuspiciousOperation) -> HttpResponse:
    # What Django refuses to parse (over DATA_UPLOAD_MAX_NUMBER_FIELDS query fields): a
    # 400 outside the API too, never a failure of Countersign's to retry and log.
    return error_response(errors.invalid_request(f"The request cannot be read: {exc}"[:300]))


def _read_json_body(request: HttpRequest) -> dict[str, Any]:
    if (unsupported := http.json_body_problem(request)) is not None:
        raise unsupported
    if request.headers.get("Transfer-Encoding") and not request.headers.get("Content-Length"):
        # Django reads as much of a body as its Content-Length says: a chunked one would
        # be read as empty, and refused as if it were not JSON.
        raise errors.invalid_request(
            "The body came without a Content-Length (Transfer-Encoding: chunked), which "
            "this API does not read; send it with its Content-Length."
        )
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
        parsed = json.loads(
            raw, parse_constant=payloads.reject_constant, object_pairs_hook=payloads.unique_keys
        )
    except payloads.DuplicateKey as exc:
        raise errors.invalid_request(payloads.named_twice(exc)) from None
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
        pattern=USER_ID_PATTERN,
        description="The end user's id: list only the tools this user may call.",
    )
    roles: str | None = Field(
        default=None,
        max_length=2079,
        pattern=ROLES_QUERY_PATTERN,
        description="The end user's roles, comma-separated, at most 32 of 64 characters "
        "(an agent trusted to assert them).",
    )


# Every GET endpoint answers HEAD as it answers GET, without the body (HTTP asks it of any
# resource GET reads, as the document's own endpoints do): HEAD was 405, Allow: GET, to a
# monitor or a client checking a call exists. The document lists the GET only (openapi).
READ = ["GET", "HEAD"]


@api.api_operation(
    READ,
    "/tools",
    summary="The tools this agent may call (for one end user)",
    description=(
        "With an end user (the on_behalf_of and roles parameters, the "
        "Countersign-On-Behalf-Of header, or the user's token in Countersign-User-Token), "
        "only the tools that user may call."
    ),
    response={200: list[dict[str, Any]]},
)
def list_tools(request: HttpRequest, query: Query[ToolsQuery]) -> Any:
    if query.format not in FORMATS:
        raise errors.invalid_parameters(
            [{"path": "query.format", "message": f"must be one of {', '.join(FORMATS)}"}]
        )
    agent: Agent = request.auth  # type: ignore[attr-defined]
    user = end_users.listing_user(
        agent,
        on_behalf_of=_queried_user(query),
        header=request.headers.get(end_users.ON_BEHALF_OF_HEADER),
        user_token=request.headers.get(end_users.USER_TOKEN_HEADER),
        transport="rest",
    )
    return export_tools(role_scopes.tools_for(agent, user), query.format)


def _queried_user(query: ToolsQuery) -> Any:
    """The end user named in the query (None when it names none), as on_behalf_of."""
    if not query.on_behalf_of and query.roles is None:
        return None
    # Roles alone ask what a user in those roles may call, whoever they are.
    named: dict[str, Any] = {"id": query.on_behalf_of} if query.on_behalf_of else {}
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
    response={200: ToolCallOut, 202: ToolCallOut},
    # The body (a oneOf of the agent's tools) and the header's bounds: gateway.openapi.
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}},
        "parameters": [
            {"in": "header", "name": "Idempotency-Key", "required": True, "schema": {}},
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
    if request.headers.get(end_users.ON_BEHALF_OF_HEADER) is not None:
        # Read by the tool list (and over MCP), not here: ignored, a call meant for a viewer
        # would run with the access of no user named, the agent's whole allowlist.
        raise errors.invalid_end_user(
            f"A call names its end user in the body's on_behalf_of; the "
            f"{end_users.ON_BEHALF_OF_HEADER} header is read by GET /api/v1/tools only.",
            [{"path": end_users.ON_BEHALF_OF_HEADER, "message": "is not read on a call"}],
        )
    raw = _read_json_body(request)
    payload = payloads.parse_call(raw)
    end_user = intake.identify(
        agent=agent,
        payload=payload,
        user_token=request.headers.get(end_users.USER_TOKEN_HEADER),
    )
    stored = intake.submit(
        agent=agent,
        token_id=_token_id(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
        payload=payload,
        raw=raw,
        end_user=end_user,
    )
    if time.monotonic() - request.authenticated_at > longpoll.RECHECK_SECONDS:  # type: ignore[attr-defined]
        # A read that ran long (or a key's first request waited for): the token is asked
        # again, as a long-poll asks it, so that one revoked meanwhile (its agent disabled
        # or stopped) is not handed the result. Only then: a quick answer costs no second
        # look-up. The answer stays stored under the key, for the agent's valid tokens.
        _still_allowed(request)
    return stored_response(stored)


class WaitQuery(Schema):
    wait: float = Field(
        default=0,
        ge=0,
        le=longpoll.MAX_WAIT_SECONDS,
        allow_inf_nan=False,  # ?wait=nan is no number, not a number over 60
        description="Seconds to wait for the status to change (long-poll), at most 60.",
    )
    seen: Literal[
        "", "received", "pending", "approved", "executing", "succeeded", "failed", "unknown",
        "rejected", "expired", "cancelled",
    ] = Field(
        default="", description="The status you last saw: the answer comes at once if it differs."
    )  # fmt: skip


@api.api_operation(
    READ,
    "/tool-calls/{call_id}",
    summary="A call's status, decision and result",
    description=(
        "With wait=N the answer comes as soon as the call's status changes (from `seen`, or "
        "from its status when the request arrives) or is terminal, or after N seconds. An "
        "agent waits for at most MAX_WAITS_PER_AGENT calls at once (MCP's waits included), "
        "and a web process's waits hold at most three in four of its threads: past either a "
        "wait that would start is refused with 429 `too_many_waits` and Retry-After."
    ),
    url_name="get_tool_call",
    response={200: ToolCallOut},
)
def get_tool_call(request: HttpRequest, call_id: UUID, query: Query[WaitQuery]) -> HttpResponse:
    try:
        call = longpoll.wait_for_change(
            agent=request.auth,  # type: ignore[attr-defined]
            call_id=call_id,
            wait=query.wait,
            seen=query.seen,
            still_allowed=lambda: _still_allowed(request),
            hung_up=hangups.detector(request) if query.wait else lambda: False,
        )
    except longpoll.ThreadsTaken:
        raise errors.waiting_threads_taken(longpoll.threads_for_waits()) from None
    except waits.TooManyWaits:
        raise errors.too_many_waits(waits.limit()) from None
    if call is None:
        raise errors.call_not_found()
    return JsonResponse(represent_call(call))


@api.post(
    "/tool-calls/{call_id}/cancel",
    summary="Withdraw a call that waits for approval",
    response={200: ToolCallOut},
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
    response={202: ToolCallOut},
)
def retry_tool_call(request: HttpRequest, call_id: UUID) -> HttpResponse:
    agent: Agent = request.auth  # type: ignore[attr-defined]
    try:
        # The breaker and the rate limits are asked last, once the call will run again: a
        # call that may not be retried is told so, not told to wait for either.
        call = intake.rerun(agent=agent, token_id=_token_id(request), call_id=call_id)
    except ToolCall.DoesNotExist:
        raise errors.call_not_found() from None
    except InvalidTransition as exc:
        raise errors.invalid_state(
            f"Only a failed write can be retried; this one is {exc.current}.",
            "Read the call's status and result.",
        ) from None
    body = represent_call(call)
    response = JsonResponse(body, status=202)
    response["Retry-After"] = str(responses.PENDING_RETRY_AFTER_SECONDS)
    response["Location"] = body["status_url"]
    return response
