"""``/mcp``: the ASGI endpoint in front of the SDK's Streamable HTTP transport.

Before the SDK sees a request, the endpoint does what is Countersign's: it checks the Host
and Origin (DNS rebinding), authenticates the agent's bearer token exactly as the REST API
does (401 with ``WWW-Authenticate`` otherwise), bounds the body (413), and resolves the
client's session. The SDK runs stateless (no per-process memory), so any process of any
deployment answers any request; the session lives in the database (``sessions``), and its
id is handed out on ``initialize`` in the ``Mcp-Session-Id`` header.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http.request import split_domain_port, validate_host
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    ErrorData,
    JSONRPCError,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from gateway import end_users, errors, payloads
from gateway.mcp import sessions, waiting
from gateway.mcp.calls import Caller
from gateway.mcp.server import build_server
from gateway.mcp.threads import run_sync
from gateway.models import McpSession
from tools_registry.models import AgentToken
from tools_registry.services.tokens import authenticated_token

logger = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
# JSON-RPC's code for a request the server refuses before it is processed (MCP uses it for
# authentication failures at the HTTP level).
UNAUTHORIZED = -32001
NO_BATCH = "A JSON-RPC batch is not served: send one message per request."
NO_MESSAGE = "The body is not a JSON-RPC message: send one JSON object."
NOT_A_MESSAGE = (
    'The body is not a JSON-RPC message: it needs "jsonrpc": "2.0" and a string "method", '
    '"params" an object if it has any (or, answering a request, its "id" and a "result" or an '
    '"error").'
)
# What _peek answers for a body that is not JSON at all.
NOT_JSON = object()


class McpEndpoint:
    def __init__(self) -> None:
        self.manager = StreamableHTTPSessionManager(
            app=build_server(),
            stateless=True,
            max_request_body_size=settings.API_MAX_BODY_BYTES,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if problem := _foreign(headers):
            await _refuse(send, 403 if "origin" in problem else 400, problem)
            return
        method = scope["method"]
        # The session is read with the token, in the same trip to a worker thread: a POST
        # names it with every request after initialize.
        session_id = headers.get(SESSION_HEADER, "") if method == "POST" else ""
        try:
            token, session = await run_sync(_identify, headers.get("authorization", ""), session_id)
        except (OperationalError, InterfaceError) as exc:
            # PostgreSQL down or restarting: every request stops here, the first to need it.
            logger.warning("MCP request refused: the database failed: %s", exc)
            error = errors.database_unavailable()
            retry = {name.lower(): value for name, value in error.headers.items()}
            await _refuse(send, error.status, error.message, data=error.body(), headers=retry)
            return
        if token is None:
            error = errors.not_authenticated()
            challenge = 'Bearer realm="countersign"'
            if headers.get("authorization"):
                challenge += ', error="invalid_token", error_description="unknown or revoked token, or disabled agent"'
            await _refuse(
                send, 401, error.message, data=error.body(), headers={"www-authenticate": challenge}
            )
            return
        agent = token.agent
        if agent.stopped_at is not None:
            error = errors.agent_stopped(agent.stop_reason, agent.stopped_at.isoformat())
            await _refuse(send, 403, error.message, data=error.body())
            return
        try:
            on_behalf_of = end_users.decode_header(
                headers.get(end_users.ON_BEHALF_OF_HEADER.lower())
            )
        except end_users.Refused as refusal:
            error = end_users.api_error(refusal)
            await run_sync(end_users.audit_refusal, agent, error, request="mcp", transport="mcp")
            await _refuse(send, 400, error.message, data=error.body())
            return
        if method == "DELETE":
            closed = await run_sync(sessions.close_session, agent, headers.get(SESSION_HEADER, ""))
            if closed:
                await _refuse(send, 200, "")
            else:
                await _refuse(send, 404, "No such session.")
            return
        if method != "POST":
            # No stream of server-initiated messages: everything rides on POST responses.
            await _refuse(
                send, 405, "Send MCP messages with POST.", headers={"allow": "POST, DELETE"}
            )
            return
        body = await _read_body(receive, settings.API_MAX_BODY_BYTES)
        if body is None:
            limit = settings.API_MAX_BODY_BYTES
            await _refuse(send, 413, f"The request body is larger than {limit} bytes.")
            return
        if session_id and session is None:
            await _refuse(send, 404, "Session not found; initialize a new one.")
            return
        try:
            parsed = _peek(body)
        except payloads.DuplicateKey as duplicate:
            # The SDK's parser reads such a key as its last value, as the REST API no longer
            # does (``payloads.unique_keys``): refused here, before the SDK creates anything.
            await _refuse(send, 400, payloads.named_twice(duplicate))
            return
        if parsed is not NOT_JSON and not isinstance(parsed, dict):
            # The SDK answered -32602 ("invalid params") with its parser's union errors,
            # the body quoted. It serves no batch, on any revision (2025-03-26 has them).
            await _refuse(send, 400, NO_BATCH if isinstance(parsed, list) else NO_MESSAGE)
            return
        if isinstance(parsed, dict) and not _is_message(parsed):
            # The SDK answered -32602 ("invalid params") with its parser's union errors, on
            # revisions before 2026-07-28 (that one's path says -32600, as JSON-RPC does).
            await _refuse(send, 400, NOT_A_MESSAGE)
            return
        message: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        if "method" in message and "id" in message and not _valid_id(message["id"]):
            # The SDK took such a request for a notification: 202, and its client waited
            # for an answer that never came.
            await _refuse(send, 400, "A request's id must be a string or an integer.")
            return
        opening = uuid4() if message.get("method") == "initialize" else None
        if session is not None and opening is None:
            named = _named_versions(scope)
            if problem := _other_version(named, session):
                await _refuse(send, 400, problem)
                return
            scope = _with_version(scope, named, session)
        state = scope.setdefault("state", {})
        state["countersign"] = caller = Caller(
            agent=agent,
            # Rounds count per agent session: the MCP session's, unless the call names one.
            session_id=f"mcp-{session.pk}" if session else "",
            client=session.client if session else "",
            token_id=token.pk,
            on_behalf_of=on_behalf_of,
            user_token=headers.get(end_users.USER_TOKEN_HEADER.lower()) or None,
            bearer=headers.get("authorization", "").partition(" ")[2].strip(),
        )
        state["opening_session"] = opening
        if message.get("method") == "notifications/cancelled":
            # Stateless, the SDK has no such request here (the client's wait may be in any
            # process): the wait is told, and the SDK then takes the notice as it would.
            await _cancel(caller, message.get("params"))
        await self.manager.handle_request(
            scope, _replay(body, receive), _with_session_header(send, opening) if opening else send
        )


def _identify(authorization: str, session_id: str) -> tuple[AgentToken | None, McpSession | None]:
    """The bearer token, with its agent (None: no valid token), and the agent's open session
    named ``session_id`` (None: none named, or no such session open, or the agent is
    stopped)."""
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None, None
    token = authenticated_token(raw.strip())
    if token is None or token.agent.stopped_at is not None or not session_id:
        return token, None
    return token, sessions.find_session(token.agent, session_id)


def _named_versions(scope: Scope) -> set[str]:
    """Every ``MCP-Protocol-Version`` the request sends: the SDK reads the first copy of the
    header, a dict of them the last."""
    return {
        value.decode("latin-1")
        for key, value in scope["headers"]
        if key.decode("latin-1").lower() == MCP_PROTOCOL_VERSION_HEADER
    }


def _other_version(named: set[str], session: McpSession) -> str:
    """Why the request's ``MCP-Protocol-Version`` (``named``) is not its session's ("" if it
    is, or it sends none). The SDK runs stateless and serves each request at the revision
    its header names: a session initialized at 2025-06-18 reached 2025-11-25's tasks by
    naming that one. The protocol asks for the negotiated version in the header, and a 400
    for one the server does not serve; a session is served at its own only."""
    negotiated = session.protocol_version
    if not negotiated or named <= {negotiated}:
        return ""
    said = ", ".join(sorted(named))[:100]
    return (
        f"The MCP-Protocol-Version header says {said}, but this session was initialized at "
        f"{negotiated}: send {negotiated}, or initialize a new session for another revision."
    )


def _with_version(scope: Scope, named: set[str], session: McpSession) -> Scope:
    """The request as the SDK should read it: without an ``MCP-Protocol-Version`` header
    (``named`` empty: a client of a revision before 2025-06-18 sends none), at its session's
    revision, which the protocol says the server identifies the version by before it
    assumes 2025-03-26."""
    if named or not session.protocol_version:
        return scope
    version = (MCP_PROTOCOL_VERSION_HEADER.encode(), session.protocol_version.encode())
    return {**scope, "headers": [*scope["headers"], version]}


def _foreign(headers: dict[str, str]) -> str:
    """Why the request's Host or Origin is not this deployment's ("" if they are): the
    DNS-rebinding defence MCP asks servers for, with Django's own ALLOWED_HOSTS."""
    domain, _port = split_domain_port(headers.get("host", ""))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return "The Host header is not one this server answers to."
    origin = headers.get("origin")
    if origin is not None:
        allowed = {settings.PUBLIC_URL, *settings.CSRF_TRUSTED_ORIGINS}
        allowed_origins = {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in allowed}
        if origin not in allowed_origins:
            return "The request's origin is not allowed."
    return ""


def _peek(body: bytes) -> Any:
    """The body's JSON (``NOT_JSON`` if it is none, which the SDK answers as a parse
    error): a peek at the message's method, the SDK parses it for real. Raises
    ``DuplicateKey`` for an object, at any depth, that names one key twice."""
    try:
        return json.loads(body, object_pairs_hook=payloads.unique_keys)
    except payloads.DuplicateKey:
        raise
    except (ValueError, RecursionError):  # not JSON, or nested past Python's reader
        return NOT_JSON


def _is_message(parsed: dict[str, Any]) -> bool:
    """Whether it is a JSON-RPC message, as the SDK reads one (its own adapter)."""
    try:
        jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except ValidationError:
        return False
    return True


def _valid_id(request_id: Any) -> bool:
    """Whether it is an id MCP allows: a string or an integer (not null, a fraction, a bool
    or a structure)."""
    return isinstance(request_id, str | int) and not isinstance(request_id, bool)


async def _cancel(caller: Caller, params: Any) -> None:
    """End the wait of the request a ``notifications/cancelled`` names, if it is the
    caller's and waits (``waiting.cancel``)."""
    request_id = params.get("requestId") if isinstance(params, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return
    if request := waiting.request_key(caller.agent.pk, caller.session_id, request_id):
        await waiting.cancel(request)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it grows past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the SDK the body already read, then the client's own
    messages (its disconnect, which ends a response stream early)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_session_header(send: Send, session_id: Any) -> Send:
    async def send_with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                *message.get("headers", []),
                (SESSION_HEADER.encode(), str(session_id).encode()),
            ]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_header


def _json_rpc_code(status: int) -> int:
    if status == 401:
        return UNAUTHORIZED
    return INTERNAL_ERROR if status >= 500 else INVALID_REQUEST


async def _refuse(
    send: Send,
    status: int,
    message: str,
    *,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> None:
    """An HTTP answer with a JSON-RPC error body (or none, for a plain 200)."""
    body = b""
    if message:
        error = JSONRPCError(
            jsonrpc="2.0",
            id=None,
            error=ErrorData(code=_json_rpc_code(status), message=message, data=data),
        )
        # "id": null, as JSON-RPC answers a request it could not read the id of.
        wire = {**error.model_dump(by_alias=True, mode="json", exclude_none=True), "id": None}
        body = json.dumps(wire).encode()
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    response_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
