"""``tools/call`` over MCP: one submission through the same intake as the REST API, and
its answer as the SDK's ``CallToolResult``.

A read runs at once and answers with its result (``structuredContent``) or its error. A
call that waits for a person either becomes an MCP task (``tasks``), or waits here up to
``MCP_CALL_WAIT_SECONDS`` (with progress notifications when the client asked for them) and
answers with its final result, or, if it is still waiting, with the REST API's ``202``
body and a text that tells the model to call ``countersign_wait``.

A refusal (unknown or not-allowed tool, invalid arguments, rate limit, rounds, circuit
open) and a call that ended badly (rejected, expired, failed) answer ``isError: true``
with the same ``{"error": {code, message, suggestion, retryable}}`` the REST API returns,
so the model reads the suggestion.

The end user: ``_meta["io.countersign/on-behalf-of"]`` and ``["io.countersign/user-token"]``,
or else the connection's ``Countersign-On-Behalf-Of`` and ``Countersign-User-Token`` headers
(``gateway.end_users``).

Idempotency: ``_meta["io.countersign/idempotency-key"]`` is honoured like the REST
header. Without one, a call that waits for a person gets a key derived from the session the
call names in ``_meta`` (else the client's name and version, whatever MCP session it comes
in), the tool, the arguments and the end user (a verified user by their id), kept while that call is open or ended
within ``MCP_RETRY_WINDOW_SECONDS`` (unless it failed, expired or was cancelled): a
client that sends the same call again after a dropped connection gets the same call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import mcp_types as types
from django.conf import settings
from django.utils import timezone
from mcp.server.context import ServerRequestContext
from mcp_types import CLIENT_INFO_META_KEY

from approvals import sql as approvals_sql
from approvals.models import TERMINAL_STATUSES, Status, Transport
from audit.canonical import canonical_json, sha256_hex
from core import db
from core.json_values import storable
from gateway import end_users, errors, intake, payloads, responses, selectors
from gateway.mcp import state
from gateway.mcp.state import CallState
from tools_registry import end_users as registry_end_users
from tools_registry import role_scopes
from tools_registry import sql as registry_sql
from tools_registry.models import Agent
from tools_registry.policy import Risk
from tools_registry.schemas import fits, validate_arguments
from tools_registry.services.tokens import authenticate_token

WAIT_TOOL = "countersign_wait"
MAX_WAIT_SECONDS = 60

# The _meta keys a client may send with a tools/call, and the one Countersign answers with.
IDEMPOTENCY_KEY = "io.countersign/idempotency-key"
SESSION_ID = "io.countersign/session-id"
REASONING = "io.countersign/reasoning"
ON_BEHALF_OF = end_users.META_ON_BEHALF_OF
USER_TOKEN = end_users.META_USER_TOKEN
# How long this client will wait for a decision before the pending answer (seconds, at
# most MCP_CALL_WAIT_SECONDS).
WAIT_SECONDS = "io.countersign/wait-seconds"
CALL_ID = "io.countersign/call-id"
# A result's, when a reviewer corrected the call's arguments: that they did, and what ran.
ARGUMENTS_EDITED = "io.countersign/arguments-edited"
ARGUMENTS = "io.countersign/arguments"

# A retried call is the same call while it is open, or ended this way recently; one that
# failed, expired or was cancelled is asked for again on purpose.
REUSABLE_ENDINGS = frozenset({Status.SUCCEEDED, Status.REJECTED})
# A user token sent as JSON null: not a string, so refused (None would mean "none sent").
_NULL_TOKEN = object()


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the MCP endpoint established it."""

    agent: Agent
    # The MCP session's id, in which the client's calls count their rounds unless _meta
    # names a session; "" without one (protocol 2026-07-28 has no sessions).
    session_id: str
    client: str  # the client software, "name/version"
    # The agent token the request was authenticated with: intake reads it again inside its
    # transaction, so a revocation that lands meanwhile refuses the call.
    token_id: int
    # The end user the connection's headers name (None: none), and the user's token (a
    # credential of the user's, kept out of the repr, as the bearer is: a caller logged
    # whole must not write it to a log).
    on_behalf_of: Any = None
    user_token: str | None = field(default=None, repr=False)
    # The bearer token the request came with: checked again while a request waits, and
    # when it was checked (``time.monotonic()``; the caller is made right after).
    bearer: str = field(default="", repr=False)
    authenticated_at: float = field(default_factory=time.monotonic, repr=False)

    def still_allowed(self) -> bool:
        """Whether the token is still active and its agent enabled and not stopped (read
        from the database): a wait ends once it is not."""
        agent = authenticate_token(self.bearer)
        return agent is not None and agent.pk == self.agent.pk and agent.stopped_at is None

    def user_token_of(self, meta: dict[str, Any]) -> Any:
        """The user's token for a request: its ``_meta``'s, else the connection's. One that
        is not a string (null too) is handed on for ``end_users.identify`` to refuse:
        ignored, the call would go unverified, or without the connection's token."""
        if USER_TOKEN not in meta:
            return self.user_token
        token = meta[USER_TOKEN]
        if token is None:
            return _NULL_TOKEN
        return token if token != "" else None

    def on_behalf_of_in(self, meta: dict[str, Any]) -> Any:
        """The end user a request names: its ``_meta``'s, else the connection's. Null is
        not given, as over REST (a client writes an optional field it has no value for as
        null): taken as "no user", it dropped the user the connection's header named, and
        the request had the agent's unscoped access."""
        named = meta.get(ON_BEHALF_OF)
        return self.on_behalf_of if named is None else named


def caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """The caller the endpoint authenticated (``app``), with the client's own name where
    the request says it (protocol 2026-07-28 sends it with every request)."""
    caller: Caller = ctx.request.state.countersign  # type: ignore[union-attr]
    info = (ctx.meta or {}).get(CLIENT_INFO_META_KEY)
    if isinstance(info, dict) and not caller.client:
        client = "/".join(str(info[k]) for k in ("name", "version") if info.get(k))
        return replace(caller, client=storable(client[:200]))
    return caller


@dataclass(frozen=True)
class Submitted:
    """What intake answered: the HTTP status and body the REST API would have, and the
    call's state when a call exists."""

    status: int
    body: dict[str, Any]
    call: CallState | None


# --- Submitting (synchronous: runs in a worker thread) -----------------------------------


def submit(caller: Caller, tool: str, arguments: dict[str, Any], meta: dict[str, Any]) -> Submitted:
    """One submission through ``gateway.intake``, exactly as the REST API makes it."""
    origin = intake.Origin(transport=Transport.MCP, client=caller.client)
    derived, key = False, None
    try:
        raw, bound = _request(caller, tool, arguments, meta)
        payload = payloads.parse_call(raw)
        end_user = intake.identify(
            agent=caller.agent,
            payload=payload,
            user_token=caller.user_token_of(meta),
            origin=origin,
        )
        if end_user.source == "verified":
            # Two users' tokens are two users, whatever else the call shares.
            bound["end_user"] = end_user.id
        key = meta.get(IDEMPOTENCY_KEY)
        derived = key is None
        if derived:
            key = _derived_key(caller.agent, bound)
        elif not isinstance(key, str):
            raise errors.invalid_idempotency_key()
        else:
            bound = _sent(raw, meta)
        stored = intake.submit(
            agent=caller.agent,
            token_id=caller.token_id,
            idempotency_key=key,
            payload=payload,
            raw=bound,
            end_user=end_user,
            origin=origin,
        )
    except errors.ApiError as error:
        # A derived key names a call still open whose key record was swept (a call may wait
        # for approval longer than a record is kept): the resend is that call.
        swept = derived and error.code == "idempotency_key_expired" and isinstance(key, str)
        if swept and (found := _open_call(caller.agent, str(key))) is not None:
            return found
        return Submitted(status=error.status, body=error.body(), call=None)
    # The call's representation: the answer itself, or in a refusal's "call".
    body = stored.body.get("call", stored.body)
    if stored.call is not None:
        # The call as intake left it, in hand, and as its answer shows it: neither is read
        # or made again.
        return Submitted(stored.status, stored.body, state.of(stored.call, body))
    call_id = body.get("id")
    call = state.read(caller.agent, UUID(call_id)) if call_id else None
    return Submitted(status=stored.status, body=stored.body, call=call)


def is_read(caller: Caller, tool: str, meta: dict[str, Any]) -> bool:
    """Whether ``tool`` is a read this request could call (answered at once, never as a
    task); False for a name that is no tool, not on the agent's allowlist, switched off, or
    not for the request's end user (or an end user who cannot be accepted), which intake
    refuses (and audits) like any call of it, saying nothing of what the tool is."""
    if payloads.json_problem(tool):
        # No tool has a name the database cannot hold (a NUL): not asked of it, but left to
        # intake, which refuses the call's JSON as it refuses any such request.
        return False
    found = db.one(registry_sql.tool_with_allowance_statement(caller.agent.pk, tool))
    if found is None or not found[1] or found[0].risk != Risk.READ or not found[0].runnable:
        return False
    try:
        # Not audited here: the refusal is intake's, which audits it.
        user = registry_end_users.identify(
            caller.agent,
            on_behalf_of=caller.on_behalf_of_in(meta),
            user_token=caller.user_token_of(meta),
        )
    except registry_end_users.Refused:
        return False
    return role_scopes.permits(caller.agent, user, found[0])


def _open_call(agent: Agent, key: str) -> Submitted | None:
    """The answer a resend of the call made under ``key`` gets: the call as it stands."""
    call = selectors.call_by_request_key(agent, key)
    if call is None:
        return None
    stored = responses.respond_with(call)
    return Submitted(stored.status, stored.body, state.of(call, stored.body.get("call")))


def _request(
    caller: Caller, tool: str, arguments: dict[str, Any], meta: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The REST body this call amounts to, and the part of it a derived key binds."""
    named = meta.get(SESSION_ID, caller.session_id)
    raw: dict[str, Any] = {
        "tool": tool,
        "arguments": arguments,
        # Without a session, each call is a session of its own (no rounds limit across
        # calls; the rate limits still apply).
        "session_id": named or f"mcp-{uuid4()}",
    }
    if (on_behalf_of := caller.on_behalf_of_in(meta)) is not None:
        raw["on_behalf_of"] = on_behalf_of
    if REASONING in meta:
        raw["reasoning"] = meta[REASONING]
    if problem := payloads.json_problem(raw):
        raise errors.invalid_request(f"The call cannot be accepted: {problem}")
    bound: dict[str, Any] = {k: raw[k] for k in ("tool", "arguments", "on_behalf_of") if k in raw}
    # A derived key binds the session the call names, else the client itself (its name and
    # version), never the MCP session: a call sent again comes in another one when the
    # client opens a session per tool call (langchain-mcp-adapters does) or reconnects, or
    # in none (2026-07-28), and it must still be the same call.
    bound["session_id"] = meta.get(SESSION_ID) or f"client:{caller.client}"
    return raw, bound


def _sent(raw: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What an explicit key binds: the request as the client sent it, as the REST header
    binds the body. Not the session this connection happens to have (an MCP session, or
    a session of its own for a call sent without one): a client that reconnects, or that
    has no session, sends the same call again with the same key, and gets that call."""
    sent: dict[str, Any] = {
        k: raw[k] for k in ("tool", "arguments", "on_behalf_of", "reasoning") if k in raw
    }
    if SESSION_ID in meta:
        sent["session_id"] = meta[SESSION_ID]
    return sent


def _derived_key(agent: Agent, bound: dict[str, Any]) -> str:
    """The key of a call sent without one (see the module's docstring). Reads get a fresh
    key every time: they have no effect to protect, and a repeated read should read again.

    Two identical calls at once derive the same key, and intake's key claim makes them one
    call. The suffix counts the times the same call was asked for on purpose.
    """
    base = "mcp-auto-" + sha256_hex(canonical_json(bound))[:48]
    recently = timezone.now() - timedelta(seconds=settings.MCP_RETRY_WINDOW_SECONDS)
    # The tool's risk and the first of the key's calls, in one round trip.
    risk, found = db.together(
        registry_sql.tool_risk_statement(bound["tool"]),
        approvals_sql.calls_by_key_statement(
            agent.pk, _derived_keys(base, 1, DERIVED_KEYS_FIRST), recently
        ),
    )
    if risk in (None, Risk.READ):
        return f"mcp-{uuid4()}"
    latest = _latest_derived(agent, base, found, recently)
    if latest is None:
        return f"{base}.1"
    number, (status, changed_recently) = latest
    open_call = status not in TERMINAL_STATUSES
    recent = status in REUSABLE_ENDINGS and changed_recently
    if open_call or recent:
        return f"{base}.{number}"
    return f"{base}.{number + 1}"


# Derived keys asked for in the first statement (which answers all but a call asked for
# again on purpose more than this many times), and at most in any statement: four times
# more each time all were taken, up to the most: a call asked for 340 times is found in
# four statements, a thousand times in seven, with four sizes of statement to prepare
# (SQLite takes at most 500 branches of a UNION).
DERIVED_KEYS_FIRST = 4
DERIVED_KEYS_MOST = 256


def _derived_keys(base: str, first: int, count: int) -> list[str]:
    return [f"{base}.{n}" for n in range(first, first + count)]


def _latest_derived(
    agent: Agent, base: str, found: dict[str, tuple[str, bool]], recently: datetime
) -> tuple[int, tuple[str, bool]] | None:
    """The highest ``n`` of the agent's ``<base>.<n>`` keys, with that call's status and
    whether it changed since ``recently``, if there is one; ``found`` answers the first
    ``DERIVED_KEYS_FIRST`` keys.

    The suffixes run 1, 2, 3 ... without gaps (each new one is the latest plus one, and a
    refused call stores nothing), so the latest is found by asking for exact keys, a few
    at first, more each time all were taken: every question is answered by the unique index
    on (agent, key). A ``LIKE '<base>.%'`` read every call of the agent: the index's
    collation cannot serve a prefix.
    """
    latest: tuple[int, tuple[str, bool]] | None = None
    first, count = 1, DERIVED_KEYS_FIRST
    while found:
        numbered = {int(key.rsplit(".", 1)[1]): answer for key, answer in found.items()}
        highest = max(numbered)
        latest = highest, numbered[highest]
        if highest < first + count - 1:
            break
        first, count = first + count, min(count * 4, DERIVED_KEYS_MOST)
        keys = _derived_keys(base, first, count)
        found = db.one(approvals_sql.calls_by_key_statement(agent.pk, keys, recently))
    return latest


# --- Answers ------------------------------------------------------------------------------


def _meta(call: CallState) -> dict[str, Any]:
    return {CALL_ID: str(call.id), "io.countersign/status": call.status}


def said_for_mcp(body: dict[str, Any]) -> dict[str, Any]:
    """A REST error body as an MCP client can act on it: REST's errors name the
    Idempotency-Key header, which an MCP client has no way to send (its key, when it sends
    one, is the call's ``_meta`` entry; without one, sending the call again is the retry): a
    model told to send the header could not follow the advice. Stored answers (a replayed
    refusal, a read that failed) included."""
    error = body.get("error")
    if not isinstance(error, dict):
        return body
    entry = f'_meta entry "{IDEMPOTENCY_KEY}"'

    def said(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        return (
            text.replace("The Idempotency-Key header", f"The {entry}")
            .replace("the Idempotency-Key header", f"the {entry}")
            .replace("This Idempotency-Key", f"This key (the {entry})")
            .replace("Idempotency-Key", f"idempotency key (the {entry}, if you send one)")
        )

    said_error = {
        **error,
        "message": said(error.get("message")),
        "suggestion": said(error.get("suggestion")),
    }
    return {**body, "error": said_error}


def error_result(body: dict[str, Any], call: CallState | None = None) -> types.CallToolResult:
    """A refusal or a call that ended badly: the REST API's error body, for the model."""
    body = said_for_mcp(body)
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(body, ensure_ascii=False))],
        structured_content=body,
        is_error=True,
        _meta=_meta(call) if call else None,
    )


def settled_result(call: CallState) -> types.CallToolResult:
    """The final answer of a call that ended: its result, or why it has none."""
    if call.status == Status.SUCCEEDED:
        result = call.body.get("result") or {}
        if call.output_schema and not fits(call.output_schema, result):
            # MCP clients check a result against the schema tools/list gave and refuse one
            # that does not fit (the official SDK raises): say so instead, result included.
            return error_result({**errors.result_not_as_declared().body(), "call": call.body}, call)
        content: list[types.ContentBlock] = [
            types.TextContent(text=json.dumps(result, ensure_ascii=False))
        ]
        meta = _meta(call)
        if call.body.get("arguments_edited"):
            # A reviewer corrected the arguments before approving: these ran, not the
            # agent's, and the model must not tell its user otherwise (the REST answer's
            # arguments_edited and arguments). The result itself stays the tool's.
            ran = call.body.get("arguments")
            meta |= {ARGUMENTS_EDITED: True, ARGUMENTS: ran}
            content.append(types.TextContent(text=_corrected(ran)))
        return types.CallToolResult(
            content=content,
            structured_content=result,
            _meta=meta,
        )
    return error_result({**ending_error(call).body(), "call": call.body}, call)


def _corrected(arguments: Any) -> str:
    return (
        "A reviewer corrected the arguments before approving the call: it ran with these, "
        f"not the ones you sent: {json.dumps(arguments, ensure_ascii=False)}"
    )


def ending_error(call: CallState) -> errors.ApiError:
    """Why a call that ended has no result."""
    if call.status == Status.REJECTED:
        return errors.call_rejected((call.body.get("decision") or {}).get("comment", ""))
    if call.status == Status.EXPIRED:
        return errors.approval_expired()
    error = call.body.get("error") or {}
    if call.status == Status.CANCELLED:
        if error.get("code") == "agent_stopped":
            return errors.agent_stopped(error.get("reason", ""))
        return errors.call_cancelled()
    # The REST API's answer to a failed read, for a read or a write alike: a call refused at
    # its claim says why (the tool never ran), the tool's own refusal is tool_failed.
    return responses.failure(error)


def pending_result(call: CallState) -> types.CallToolResult:
    """A call still waiting: the REST API's 202 body, and how to wait for the outcome."""
    waiting = call.status == Status.PENDING
    advice = (
        # "is waiting for approval: ...", "stands: approved; running", "stands: ran, but ..."
        f"The call {call.id} {'is' if waiting else 'stands:'} {call.status_message}. "
        + ("It runs only once a person approves it. " if waiting else "")
        + f"Do not call {call.tool} again: call {WAIT_TOOL} with "
        f'{{"call_id": "{call.id}", "wait_seconds": {MAX_WAIT_SECONDS // 2}}} to wait for '
        + ("the decision and the result." if waiting else "the result.")
    )
    return types.CallToolResult(
        content=[types.TextContent(text=advice)],
        structured_content=call.body,
        _meta=_meta(call),
    )


def read_result(submitted: Submitted) -> types.CallToolResult:
    """The answer of a read, which ran inside the submission."""
    if submitted.status >= 400 or submitted.call is None:
        return error_result(submitted.body, submitted.call)
    return settled_result(submitted.call)


WAIT_TOOL_DEFINITION = types.Tool(
    name=WAIT_TOOL,
    title="Wait for a call's decision",
    description=(
        "Wait for a call that needs a person's approval, and get its result. Give the "
        "call_id a previous tool call answered with; waits up to wait_seconds for the "
        "decision and the result, then answers with the result, the reason it did not run "
        "(rejected, expired), or that it is still waiting. Read only: changes nothing."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "call_id": {
                "type": "string",
                "format": "uuid",
                "description": "The id of the call that waits for approval.",
            },
            "wait_seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_WAIT_SECONDS,
                "default": MAX_WAIT_SECONDS // 2,
                "description": "How long to wait for the outcome before answering.",
            },
        },
        "required": ["call_id"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(
        title="Wait for a call's decision",
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    ),
    execution=types.ToolExecution(task_support="forbidden"),
)


def wait_seconds(meta: dict[str, Any]) -> float:
    """How long a call that waits for a person is waited for before the pending answer."""
    wanted = meta.get(WAIT_SECONDS)
    longest = float(settings.MCP_CALL_WAIT_SECONDS)
    if isinstance(wanted, int | float) and not isinstance(wanted, bool) and 0 <= wanted < longest:
        # Compared before float(): an integer of 400 digits does not fit one.
        return float(wanted)
    return longest


def wait_arguments(arguments: dict[str, Any]) -> tuple[UUID, float]:
    """``countersign_wait``'s arguments, or ``ApiError`` saying what is wrong with them:
    checked against its own input schema as any tool's are (``validate_arguments``), so a
    long value or made-up name is quoted cut short, and only so many problems listed."""
    if problem := payloads.json_problem(arguments):
        # NaN, which no schema keyword refuses, and nesting too deep to check or quote.
        raise errors.invalid_request(f"The call cannot be accepted: {problem}")
    problems = validate_arguments(WAIT_TOOL_DEFINITION.input_schema, arguments)
    if problems:
        raise errors.invalid_arguments([p.as_dict() for p in problems], total=problems.total)
    wait = arguments.get("wait_seconds", MAX_WAIT_SECONDS // 2)
    return UUID(arguments["call_id"]), float(wait)
