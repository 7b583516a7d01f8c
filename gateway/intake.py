"""The agent API's submit path: idempotency, checks, then a pending call or an inline read.

Before it, ``identify`` says whom the call is for (the end user and their roles,
``tools_registry.end_users``; verifying a user token may fetch the identity provider's keys,
which no transaction waits for). One transaction does the work of a submission: hold the
agent's run lock (a stopped agent is refused; a stop waits for the submission), read the
request's token again (revoked since the request was authenticated: refused; a revocation
waits for the submission, as a stop does), claim the Idempotency-Key, check the tool
(unknown, not allowed, not allowed for the end user's roles, disabled, invalid arguments),
the tool's circuit breaker, take the session's round, create the call with its audit event
(a policy rule may refuse it), take from the rate limits, store the response. A write
commits once, with everything. A read commits the same way with its call ``received`` and
its key ``in_flight``, then runs outside any transaction; its response is stored in the
transaction that stores its result (``runner.execute``'s ``also``).

The statements that do not depend on each other's answers (the run lock, the token, the
key, the tool, the round, the standing approvals) go to PostgreSQL together, in one round
trip (``core.db.together``); their answers are then checked in the order above. Waiting on
PostgreSQL between statements was most of a submission's time (``docs/benchmarks.md``).

A refusal rolls the transaction back (the key, the round: nothing is spent) and is then
audited (``call.refused``) on its own. A call refused by any rate-limit window takes
nothing from any window (see ``limits.hit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import redis
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals import sql as approvals_sql
from approvals.execution import runner
from approvals.models import Decision, StandingApproval, Status, ToolCall, Transport
from approvals.screening import RefusedByRule
from approvals.services.calls import RetryRefused, create_call, retry_call
from audit.canonical import canonical_json, sha256_hex
from audit.log import record
from core import db
from gateway import breaker, end_users, errors, idempotency, limits, retention, sql
from gateway.idempotency import Claim
from gateway.responses import StoredResponse, respond_with
from gateway.schemas import ToolCallIn
from tools_registry import end_users as registry_end_users
from tools_registry import role_scopes
from tools_registry import sql as registry_sql
from tools_registry.models import Agent, Tool
from tools_registry.policy import Risk
from tools_registry.schemas import validate_arguments
from tools_registry.strict import drop_null_optionals

# The constraint that keeps one call per (agent, Idempotency-Key).
KEY_CONSTRAINT = "call_unique_request_key"


class Refused(Exception):
    """A refusal to answer with ``error`` and to audit once the transaction rolled back."""

    def __init__(self, error: errors.ApiError, tool: Tool | None = None):
        super().__init__(error.message)
        self.error = error
        self.tool = tool


class _RoundsSpent(Refused):
    """The session made its rounds: refused, yet the session is in use (not idle)."""


class _KeyTaken(Exception):
    pass


@dataclass(frozen=True)
class Origin:
    """Which door a submission came through, and the client software that sent it."""

    transport: str = Transport.REST
    client: str = ""


REST = Origin()


def identify(
    *, agent: Agent, payload: ToolCallIn, user_token: str | None, origin: Origin = REST
) -> role_scopes.EndUser:
    """Whom the call is for (``on_behalf_of``, and the user's token if one came with it).
    A refusal (malformed user, roles the agent may not assert, a token that does not
    verify, an identity provider out of reach) is audited and raised as the API's error;
    nothing was claimed or spent."""
    try:
        return registry_end_users.identify(
            agent, on_behalf_of=payload.on_behalf_of, user_token=user_token
        )
    except registry_end_users.Refused as refusal:
        error = end_users.api_error(refusal)
        _audit_refusal(agent, payload, Refused(error), origin)
        raise error from None


def submit(
    *,
    agent: Agent,
    token_id: int,
    idempotency_key: str | None,
    payload: ToolCallIn,
    raw: dict[str, Any],
    end_user: role_scopes.EndUser,
    origin: Origin = REST,
) -> StoredResponse:
    """Accept one tool call request from an agent, exactly once per Idempotency-Key.

    ``token_id`` is the agent token the request was authenticated with: read again once
    the transaction holds the agent's run lock, it refuses the request (``401
    not_authenticated``, audited) if the token was revoked since.
    ``raw`` is what the key binds to: a repeat of the key with another ``raw`` is refused.
    ``end_user`` is what ``identify`` made of the request.
    """
    key = idempotency_key or ""
    if not key:
        raise errors.idempotency_key_required()
    if not idempotency.valid_key(key):
        raise errors.invalid_idempotency_key()
    request_hash = _request_hash(raw, end_user)
    request = _Request(agent, token_id, key, request_hash, payload, end_user, origin)
    try:
        try:
            with _key_expired_refused(request), transaction.atomic():
                opened = _open_new(request)
                if opened is None:
                    # The key is not new: this transaction (its round counted with the
                    # rest) is rolled back, and the next one looks at the key alone.
                    raise _KeyNotNew
                answer = _accept(request, opened)
        except _KeyNotNew:
            with _key_expired_refused(request), transaction.atomic():
                opened_or_replay = _open_existing(request)
                if isinstance(opened_or_replay, StoredResponse):
                    answer = opened_or_replay  # committed with the answer it stored
                else:
                    answer = _accept(request, opened_or_replay)
    except _KeyTaken:
        return idempotency.answer_for(
            agent=agent,
            key=key,
            request_hash=request_hash,
            settled=lambda: _settled_answer(agent, key),
            unbound=_unbound_hash(raw, end_user),
        )
    except Refused as refusal:
        breaker.release(request.admission)
        if isinstance(refusal, _RoundsSpent):
            # Its transaction, rolled back, counted nothing: a run that keeps calling past
            # its rounds would be swept as idle and get them all back.
            retention.still_in_use(agent_id=agent.pk, session_id=payload.session_id)
        _audit_refusal(agent, payload, refusal, origin, end_user)
        raise refusal.error from None
    except BaseException:
        breaker.release(request.admission)
        raise
    if isinstance(answer, StoredResponse):
        if request.stored:
            # Sent as its key's record keeps it (read back with the COMMIT's answer): the
            # first answer (or one taken over from a request that died) reads byte for
            # byte like its replays, as a read's does.
            answer = replace(answer, body=request.stored[0])
        # A write waiting for a person took no probe slot (``_accept``); one approved as it
        # arrived (a rule, a standing approval) runs now: it is the probe, if there is one,
        # and its outcome frees the slot.
        return answer
    return _run_read(agent, key, answer, request.admission)


def _request_hash(raw: dict[str, Any], end_user: role_scopes.EndUser) -> str:
    """What a key binds: the request as sent and, for a user whose token names them, that
    user. The token rides outside the body, so two users' calls can be the same body; one
    user's key must never replay another user's answer. (A user the body names is in it.)"""
    if end_user.source == "verified":
        return sha256_hex(canonical_json({"request": raw, "verified_user": end_user.id}))
    return sha256_hex(canonical_json(raw))


def _unbound_hash(raw: dict[str, Any], end_user: role_scopes.EndUser) -> tuple[str, str] | None:
    """For a verified user: the hash their request had before keys bound the user, and
    their id. A record stored then (within IDEMPOTENCY_KEY_TTL of the upgrade) still
    replays for the user its call was made for, and for nobody else."""
    if end_user.source != "verified":
        return None
    return sha256_hex(canonical_json(raw)), end_user.id


@contextmanager
def _key_expired_refused(request: _Request) -> Iterator[None]:
    """Around a submission's transaction (entered before it, so left after its COMMIT): the
    key's record was swept (IDEMPOTENCY_KEY_TTL) but the call it created keeps the key, so
    the new call's INSERT, sent with the COMMIT, failed the transaction whole. Refused
    like any other refusal, never a second call."""
    try:
        yield
    except IntegrityError as exc:
        if not _request_key_taken(exc):
            raise
        created = ToolCall.objects.filter(agent=request.agent, request_key=request.key)
        call_id = created.values_list("pk", flat=True).first()
        raise Refused(errors.idempotency_key_expired(call_id), request.tool) from None


def _request_key_taken(exc: IntegrityError) -> bool:
    """Whether ``exc`` is the agent's request key on a call already: PostgreSQL names the
    constraint, SQLite (the embedded mode) its columns."""
    columns = ", ".join(f"{ToolCall._meta.db_table}.{c}" for c in ("agent_id", "request_key"))
    return KEY_CONSTRAINT in str(exc) or f"UNIQUE constraint failed: {columns}" in str(exc)


@dataclass
class _Request:
    agent: Agent
    token_id: int
    key: str
    request_hash: str
    payload: ToolCallIn
    end_user: role_scopes.EndUser
    origin: Origin
    admission: breaker.Admission | None = None
    tool: Tool | None = None  # once checked
    stored: list[dict[str, Any]] = field(default_factory=list)  # a write's answer, as stored


@dataclass(frozen=True)
class _Opened:
    """What the first statements of a submission found: the tool (and whether the agent
    may call it), whether the session's round was counted, the agent's live standing
    approvals of the tool."""

    tool: tuple[Tool, bool] | None
    round_counted: bool
    standing: list[StandingApproval]


class _KeyNotNew(Exception):
    pass


def _open_new(request: _Request) -> _Opened | None:
    """The usual case, a new key, in one round trip to the database: hold the agent's run
    lock and read whether it was stopped, read whether the request's token is still
    active (``_check_running``), claim the key, read the tool and the agent's
    standing approvals of it, count the session's round. None if the key was not new (its
    caller rolls all of it back). Every check of what was read is made after, in the order
    the API documents; a refusal rolls the transaction back, so nothing it counted stays.
    """
    agent, now = request.agent, timezone.now()
    stop_reason, token_active, claimed, tool, round_counted, standing = db.together(
        *_running_statements(request),
        sql.insert_key_statement(
            agent_id=agent.pk,
            key=request.key,
            request_hash=request.request_hash,
            now=now,
            locked_until=now + idempotency.IN_FLIGHT_LOCK,
        ),
        *_rest_statements(request, now),
    )
    _check_running(stop_reason, token_active)
    return _Opened(tool, round_counted, standing) if claimed else None


def _open_existing(request: _Request) -> _Opened | StoredResponse:
    """A key seen before: claimed alone (taken over from a request that died, or free
    again because its holder was refused meanwhile), then the rest as ``_open_new``; or,
    when the key's first request had created its call, that call's answer, stored."""
    agent, key = request.agent, request.key
    _check_running(*db.together(*_running_statements(request)))
    claimed = idempotency.claim(agent=agent, key=key, request_hash=request.request_hash)
    if claimed == Claim.TAKEN:
        raise _KeyTaken
    if claimed == Claim.TAKEN_OVER and (existing := _existing_call(agent, key)):
        # The key's first request created its call, then died (or is still running it past
        # its lock). A write's answer is its call as it stands (pending, at intake); a read
        # has an answer only once terminal: until then the key stays in use, and a read its
        # request never ran is failed by sweeps.fail_abandoned_reads.
        if existing.risk == Risk.READ and not existing.is_terminal:
            raise errors.idempotency_key_in_use()
        # The answer the request that died would have given (a write approved at once by a
        # rule is accepted, 202, like a pending one).
        response = respond_with(existing, submitted=True)
        idempotency.complete(
            agent=agent, key=key, response=response, call=existing, stored=request.stored.append
        )
        return idempotency.replayed(response)
    tool, round_counted, standing = db.together(*_rest_statements(request, timezone.now()))
    return _Opened(tool, round_counted, standing)


def _running_statements(request: _Request) -> list[db.Statement[Any]]:
    """Hold the agent's run lock and read whether it was stopped; then, in a statement of
    its own (a snapshot taken once the lock is held), whether the request's token is still
    active. A stop and a revocation both take the run lock exclusive: one that committed
    while the lock was awaited is read, and one that comes later waits for this
    transaction."""
    return [
        registry_sql.running_statement(request.agent.pk),
        registry_sql.token_active_statement(request.token_id),
    ]


def _check_running(stop_reason: str | None, token_active: bool) -> None:
    """Refuse what ``_running_statements`` read, as the door would have refused it had it
    come a moment later: a revoked token first (the door does not look at the agent for an
    unknown token), then a stopped agent."""
    if not token_active:
        # Revoked after this request was authenticated: refused like the next request, and
        # audited, as a call that was nearly made. Without this the call was created, and a
        # write could be approved and run: a claim checks the agent, never the token.
        raise Refused(errors.not_authenticated())
    if stop_reason is not None:
        # Stopped after this request was authenticated: refused like the next one.
        raise errors.agent_stopped(stop_reason)


def _rest_statements(request: _Request, now: datetime) -> list[db.Statement[Any]]:
    agent, payload = request.agent, request.payload
    return [
        # Held: the call is screened under the policy it is stored with (a change of it
        # under way is waited for here, not at the call's INSERT, after the rules were read).
        registry_sql.tool_with_allowance_statement(agent.pk, payload.tool, hold=True),
        sql.count_round_statement(
            agent_id=agent.pk,
            session_id=payload.session_id,
            limit=agent.max_rounds_per_session,
            now=now,
        ),
        approvals_sql.live_standing_statement(agent_id=agent.pk, tool_name=payload.tool, now=now),
    ]


def _accept(request: _Request, opened: _Opened) -> StoredResponse | ToolCall:
    """Check the tool, the breaker and the round; create the call (its rules may refuse
    it); then take from the rate limits. A write (or a call approved at once) is answered
    now: its stored response. A read is returned, committed, to be run."""
    agent, key, payload = request.agent, request.key, request.payload
    tool = request.tool = _allowed_tool(agent, payload, request.end_user, opened.tool)
    if tool.risk == Risk.READ:
        request.admission = _admit(tool)  # runs now: the half-open probe, if it is one
    else:
        # Whether a write runs now (a rule or a standing approval approves it) or waits for
        # a person is known once it is created: refused now only while the tool's cool-down
        # runs, it takes the probe slot below if it runs now. One that waits never holds the
        # slot, not even for the moments its transaction takes.
        _check_breaker(tool)
    if not opened.round_counted:
        raise _RoundsSpent(errors.max_rounds_exceeded(agent.max_rounds_per_session), tool)
    call = _create(agent, key, payload, request.end_user, tool, request.origin, opened.standing)
    if tool.risk != Risk.READ and call.status != Status.PENDING:
        # Refused, the new call is rolled back with the rest. Admitted, the slot is the
        # call's: its claim gives it back if it refuses to run it (a tool switched off).
        request.admission = _admit(tool, for_call=call.pk)
    # Last, once no rule refuses the call: Redis is not rolled back with the transaction, so
    # a call refused after taking from the windows would spend them. A rate refusal here
    # rolls the new call back with everything else.
    _take_rate(agent, request.end_user.id, tool)
    if call.status == Status.RECEIVED:
        return call
    # Waiting for reviewers, or approved at once by a rule: accepted, not done.
    response = respond_with(call, submitted=True)
    idempotency.complete(
        agent=agent, key=key, response=response, call=call, stored=request.stored.append
    )
    return response


def _run_read(
    agent: Agent, key: str, call: ToolCall, admission: breaker.Admission | None
) -> StoredResponse:
    """Run a committed read now, outside any transaction, with the tool's retries. Its
    answer is stored in the transaction that stores its result."""
    answered: list[StoredResponse] = []

    def answer(finished: ToolCall) -> None:
        response = respond_with(_without_decisions(finished))
        kept: list[dict[str, Any]] = []  # the body as stored, read with the COMMIT's answer

        def committed() -> None:
            # The agent's answer reads exactly like its replays (the result's keys in the
            # order the database keeps them).
            answered.append(replace(response, body=kept[0] if kept else response.body))

        idempotency.complete(
            agent=agent, key=key, response=response, call=finished, stored=kept.append
        )
        transaction.on_commit(committed)

    try:
        if runner.execute(call.pk, also=answer) is None:
            # Refused at the claim (the tool or agent was switched off meanwhile): it never
            # ran, so a half-open probe slot it held is handed back, not left to its lease.
            breaker.release(admission)
        if answered:
            return answered[0]
        # No result stored with an answer: refused at the claim, or its worker's lease was
        # taken over (the result was discarded). The answer is the call as it stands.
        stored = approvals_sql.read_call(call.pk)
        assert stored is not None, "calls are never deleted"
        stored.tool, stored.agent = call.tool, call.agent  # the same rows, not read again
        call = stored
        response = respond_with(_without_decisions(call))
        idempotency.complete(agent=agent, key=key, response=response, call=call)
        return response
    except BaseException:
        idempotency.abandon(agent=agent, key=key)
        # A half-open probe that failed here will never report (had its outcome been
        # recorded, the slot is no longer its own and this does nothing): the next call
        # probes instead of waiting out the lease.
        breaker.release(admission)
        raise


def _existing_call(agent: Agent, key: str) -> ToolCall | None:
    return ToolCall.objects.filter(agent=agent, request_key=key).select_related("tool").first()


def _settled_answer(agent: Agent, key: str) -> tuple[StoredResponse, ToolCall] | None:
    """The answer of a key still in flight whose call has ended: (response, call), or None."""
    existing = _existing_call(agent, key)
    if existing is None or not existing.is_terminal:
        return None
    return respond_with(existing), existing


def _allowed_tool(
    agent: Agent,
    payload: ToolCallIn,
    end_user: role_scopes.EndUser,
    found: tuple[Tool, bool] | None,
) -> Tool:
    if found is None:
        raise Refused(errors.unknown_tool(payload.tool))
    tool, allowed = found
    if not allowed:
        raise Refused(errors.tool_not_allowed(tool.name), tool)
    if not role_scopes.permits(agent, end_user, tool):
        raise Refused(
            errors.tool_not_allowed_for_user(
                tool.name,
                user=end_user.describe(),
                roles_allowed=role_scopes.roles_allowed(agent, tool),
            ),
            tool,
        )
    if not tool.runnable:
        raise Refused(errors.tool_disabled(tool.name), tool)
    # A strict client (OpenAI's strict mode) sends null for an optional field it leaves out
    # (tools_registry.strict): the call is the one without it, for validation, the
    # approval's hash, the reviewer and the handler alike.
    payload.arguments = drop_null_optionals(tool.input_schema, payload.arguments)
    problems = validate_arguments(
        tool.input_schema, payload.arguments, sensitive_fields=tool.hidden_fields
    )
    if problems:
        raise Refused(
            errors.invalid_arguments([p.as_dict() for p in problems], total=problems.total), tool
        )
    return tool


def _check_breaker(tool: Tool) -> None:
    try:
        breaker.check(tool)
    except breaker.CircuitOpen as exc:
        raise Refused(errors.circuit_open(tool.name, retry_after=exc.retry_after), tool) from None
    except redis.RedisError:
        raise errors.unavailable() from None


def _admit(tool: Tool, for_call: UUID | None = None) -> breaker.Admission:
    try:
        return breaker.admit(tool, for_call=for_call)
    except breaker.CircuitOpen as exc:
        raise Refused(errors.circuit_open(tool.name, retry_after=exc.retry_after), tool) from None
    except redis.RedisError:
        raise errors.unavailable() from None


def rerun(*, agent: Agent, token_id: int, call_id: UUID) -> ToolCall:
    """The agent's retry of a failed write (``retry_call``), asking the edge last
    (``admit_rerun``). A refusal (the call may not be re-run; the request's token revoked
    since it was authenticated; its breaker; its rate limits) is audited on its own, as a
    refused submission is: ``call.retry_refused`` on the call, with the error the agent got.
    Raises the API's error; ``ToolCall.DoesNotExist`` and ``InvalidTransition`` (no call of
    the agent's; not a failed write) go up as they are."""
    admitted: list[breaker.Admission] = []

    def admit(call: ToolCall) -> None:
        # Read once ``retry_call`` holds the agent's run lock, which a revocation takes
        # exclusive (as a submission reads it, ``_running_statements``): a token revoked
        # after the door let this request in does not run the write again. One statement
        # more, on a retry only.
        if not db.one(registry_sql.token_active_statement(token_id)):
            raise Refused(errors.not_authenticated())
        admitted.append(admit_rerun(agent=agent, call=call))

    try:
        return retry_call(call_id=call_id, agent=agent, admit=admit)
    except RetryRefused as exc:
        refusal = Refused(errors.retry_not_allowed(exc.message, new_call=exc.new_call))
    except Refused as exc:
        refusal = exc
    except BaseException:
        for admission in admitted:  # the re-run did not commit: its probe slot is free
            breaker.release(admission)
        raise
    _audit_retry_refusal(agent, call_id, refusal.error)
    raise refusal.error from None


def admit_rerun(*, agent: Agent, call: ToolCall) -> breaker.Admission:
    """Let a failed write run again on the agent's request (``retry_call``'s ``admit``), or
    raise ``Refused`` with the API's error: its tool's breaker, then its tool's rate limits,
    the agent's and its end user's, which a re-run takes from as a new call does: it runs the
    tool again (outside the windows, each call's retries multiplied the rate the tool is run
    at). Asked last, inside the retry's transaction: a refusal leaves the call failed and its
    probe slot (if it took one) free. The slot is the call's (``breaker.admit``'s
    ``for_call``): its claim gives it back if it refuses to run the call."""
    admission = _admit(call.tool, for_call=call.pk)
    try:
        _take_rate(agent, call.on_behalf_of, call.tool)
    except BaseException:
        breaker.release(admission)
        raise
    return admission


def _audit_retry_refusal(agent: Agent, call_id: UUID, error: errors.ApiError) -> None:
    """A refused retry, on the call's own trail, in its own transaction (the retry's rolled
    back): the code and message the agent was given, and when to come back, if it may."""
    call = ToolCall.objects.select_related("agent", "tool").get(pk=call_id, agent=agent)
    record(
        action="call.retry_refused",
        actor=agent,
        outcome=error.code,
        call=call,
        data={
            "code": error.code,
            "message": error.message,
            "details": error.details,
            "retry_after": error.headers.get("Retry-After"),
            "attempts": call.attempts,
        },
    )


def _take_rate(agent: Agent, on_behalf_of: str, tool: Tool) -> None:
    try:
        refusal = limits.hit(tool=tool, agent=agent, on_behalf_of=on_behalf_of)
    except redis.RedisError:
        raise errors.unavailable() from None
    if refusal is not None:
        raise Refused(
            errors.rate_limited(
                scope=refusal.scope, limit=refusal.limit, retry_after=refusal.retry_after
            ),
            tool,
        )


def _create(
    agent: Agent,
    key: str,
    payload: ToolCallIn,
    end_user: role_scopes.EndUser,
    tool: Tool,
    origin: Origin,
    standing: list[StandingApproval] | None = None,
) -> ToolCall:
    try:
        call = _create_call(agent, key, payload, end_user, tool, origin, standing)
    except RefusedByRule as refusal:
        raise Refused(
            errors.refused_by_policy(
                tool.name,
                refusal.message,
                rule=refusal.number,
                policy_version=refusal.policy_version,
            ),
            tool,
        ) from None
    return _without_decisions(call)


def _without_decisions(call: ToolCall) -> ToolCall:
    """A call known to have no decisions (a new one; a read, which is never reviewed),
    represented without asking (or compiling) a query for them."""
    no_decisions = Decision.objects.none()
    no_decisions._result_cache = []
    call._prefetched_objects_cache = {"decisions": no_decisions}  # type: ignore[attr-defined]
    return call


def _create_call(
    agent: Agent,
    key: str,
    payload: ToolCallIn,
    end_user: role_scopes.EndUser,
    tool: Tool,
    origin: Origin,
    standing: list[StandingApproval] | None = None,
) -> ToolCall:
    return create_call(
        agent=agent,
        tool=tool,
        arguments=payload.arguments,
        session_id=payload.session_id,
        request_key=key,
        on_behalf_of=end_user.id,
        end_user_roles=end_user.roles,
        end_user_source=end_user.source,
        end_user_aliases=end_user.aliases,
        reasoning=payload.reasoning,
        token_cost=payload.token_cost.model_dump() if payload.token_cost else None,
        callback_url=str(payload.callback_url) if payload.callback_url else "",
        transport=origin.transport,
        client=origin.client,
        standing_candidates=standing,
    )


def _audit_refusal(
    agent: Agent,
    payload: ToolCallIn,
    refusal: Refused,
    origin: Origin,
    end_user: role_scopes.EndUser | None = None,
) -> None:
    """Who asked for what, for whom, and why not; in its own transaction (the request's
    rolled back). A user's token is never recorded."""
    tool, error = refusal.tool, refusal.error
    # A refusal made before the tool was read (whom the call is for) still masks the named
    # tool's hidden fields: the arguments go to the append-only trail.
    named = tool or Tool.objects.filter(name=payload.tool).first()
    record(
        action="call.refused",
        actor=agent,
        outcome=error.code,
        agent=agent,
        tool=tool,
        session_id=payload.session_id,
        sensitive_fields=[f"arguments.{f}" for f in (named.hidden_fields if named else [])],
        data={
            "tool": payload.tool,
            "code": error.code,
            "arguments": payload.arguments,
            "details": error.details,
            **error.fields,
            "end_user": end_user.describe() if end_user else None,
            "transport": origin.transport,
            "client": origin.client,
        },
    )
