"""Runs a claimed call's handler exactly once (see ARCHITECTURE.md, "Exactly once").

1. claim (``claim.claim_call``): approved -> executing, fence + 1, lease; the intent audit
   event commits with it. A duplicate delivery claims nothing. A call whose tool or agent
   was switched off, or whose tool changed, since its approval is not claimed: it fails
   with that code and its own audit event.
2. run the handler (through the registered tool, which validates the arguments first)
   with the call's stable idempotency key and the tool's timeout, with no transaction open.
3. finish (``finish.finish_call``): store the outcome ``WHERE fence = <ours>`` with its
   audit event; a worker whose lease was taken over writes nothing under its claim, and
   its handler's verdict settles the call only if nothing has acted on it since.

A handler that raises ``ToolFailed`` says the effect did not happen: the call failed. Any
other exception (a timeout, a dropped connection) leaves a write's outcome unknown; the
reconciliation sweep asks the handler's ``lookup`` what really happened. Reads have no
effect, so they are retried with exponential backoff and jitter, then fail.

Handlers must honour ``ctx.timeout`` themselves (httpx timeouts). A handler that does not
is stopped by Celery's per-task time limits, set when the task is sent
(``send.time_limits``): the soft limit raises inside the handler and the
outcome is stored as unknown; the hard limit kills the worker child, and the lease sweep
makes the call unknown. A worker that dies for any other reason is found the same way:
its lease expires (``finish.expire_lease``), the fence moves on, reconciliation follows;
the tool's breaker counts it as a failure (``sweeps.expire_leases``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from uuid import UUID

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from approvals import hooks
from approvals.execution.claim import Claim, claim_call
from approvals.execution.finish import Also, Outcome, finish_call
from approvals.models import Status
from audit.masking import mask_text
from core import db
from core.json_values import storable
from tools_registry import registry, sources
from tools_registry.policy import READ_BACKOFF_MAX_SECONDS, Risk
from tools_registry.registry import RegisteredTool, ToolContext, ToolFailed

logger = logging.getLogger(__name__)

# Backoff between read attempts: 0.2 s, 0.4 s, ... plus up to 0.2 s of jitter, capped where
# the policy's longest read (and so the idempotency key's in-flight lock) expects it.
READ_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=READ_BACKOFF_MAX_SECONDS, jitter=0.2)


def execute(call_id: UUID, *, also: Also | None = None) -> Outcome | None:
    """Claim, run and finish one call. Returns None when another delivery has it.

    ``also`` runs in the transaction that stores the outcome (``finish.finish_call``)."""
    claim = claim_call(call_id=call_id)
    if claim is None:
        logger.info(
            "call %s not claimed (duplicate delivery, already done, or refused); dropped", call_id
        )
        return None
    if claim.risk == Risk.READ:
        # A read runs in a web request's thread, for as long as its tool takes to answer:
        # its connection goes back to the pool meanwhile, for the process's other requests.
        db.hand_back_pooled_connection()
    outcome = _after_an_open_attempt(claim, run_handler(claim))
    current = finish_call(claim=claim, outcome=outcome, also=also)
    if not current:
        logger.warning(
            "call %s: lease lost (fence %s) before the result was stored; it settles the call "
            "only if nothing acted on it since",
            call_id,
            claim.fence,
        )
    # LATE: the lease sweep took the call, and told the breaker of this execution's end
    # (SWEEP), whether or not the late outcome then settled the call.
    found_by = hooks.WORKER if current else hooks.LATE
    hooks.execution_finished(claim.tool_name, outcome.status, outcome.error, found_by=found_by)
    return outcome


def run_handler(claim: Claim) -> Outcome:
    try:
        spec = sources.implementation(claim.call.tool)
    except registry.UnknownTool:
        # The code is gone; nothing ran. Only registered handlers can ever run.
        return Outcome(
            status=Status.FAILED,
            error={
                "code": "tool_not_in_code",
                "message": f"No handler is registered for {claim.tool_name}.",
            },
            unsent=True,
        )
    ctx = ToolContext(
        call_id=claim.call_id,
        idempotency_key=claim.execution_key,
        timeout=claim.timeout,
        attempt=claim.attempt,
        agent_name=claim.call.agent.name,
        on_behalf_of=claim.call.on_behalf_of,
    )
    started = time.monotonic()
    tries = 0

    def invoke() -> dict:
        nonlocal tries
        tries += 1
        # Through the registered tool, which checks the arguments against the schema first:
        # arguments that do not fit never reach a handler, whatever path brought them here.
        return _checked_result(
            spec, spec(ctx, claim.arguments, sensitive_fields=claim.sensitive_fields)
        )

    try:
        if claim.risk == Risk.READ:
            result = Retrying(
                stop=stop_after_attempt(max(claim.max_attempts, 1)),
                wait=_read_wait,
                retry=retry_if_exception(_read_may_retry),
                reraise=True,
            )(invoke)
        else:
            # Writes and destructive calls run once; a retry is the agent's or a person's call.
            result = invoke()
    except ToolFailed as exc:
        # The handler's own verdict, kept whole: its code, and whether asking again could
        # give another answer (a refusal such as "no such customer" could not).
        refused = {"code": exc.code, "message": exc.message, "retryable": exc.retryable}
        if exc.retry_after is not None:
            refused["retry_after"] = exc.retry_after  # the agent's Retry-After (a read's)
        return _outcome(Status.FAILED, started, tries, unsent=exc.unsent, error=refused)
    except Exception as exc:
        error = _describe(exc)
        if claim.risk == Risk.READ:
            return _outcome(Status.FAILED, started, tries, error=error)
        logger.warning("call %s: outcome unknown after %s", claim.call_id, error["code"])
        return _outcome(Status.UNKNOWN, started, tries, error=error)
    return _outcome(Status.SUCCEEDED, started, tries, result=result)


def _after_an_open_attempt(claim: Claim, outcome: Outcome) -> Outcome:
    """A re-run of a write whose earlier attempt's outcome was left open (it keeps that
    attempt's error; an agent's retry of a failed call clears it), refused in a way that
    asking again could change: says nothing of the earlier attempt. An upstream's 409, for
    one, is its first request with the key still running. The outcome stays unknown, for
    reconciliation and then a person; never "failed", which would let the agent send the
    effect again under a new key. So is a re-run that reached no downstream (a deploy took
    the tool's code away before the registry was synced, the upstream's credentials cannot
    be decrypted since a key changed): it ran nothing, as one refused at its claim."""
    earlier_open = claim.risk != Risk.READ and claim.attempt > 1 and claim.call.error is not None
    error = outcome.error or {}
    says_nothing = outcome.status == Status.FAILED and (error.get("retryable") or outcome.unsent)
    if earlier_open and says_nothing:
        return replace(outcome, status=Status.UNKNOWN)
    return outcome


def _read_may_retry(exc: BaseException) -> bool:
    if isinstance(exc, ToolFailed):
        # A downstream that asked to be left alone longer than a read waits between its
        # attempts (an upstream's 429, Retry-After: 60) is not asked again at once: the
        # attempts would each be refused, and count against its limit. The agent is told
        # when to try again.
        return exc.retryable and (exc.retry_after or 0) <= READ_BACKOFF_MAX_SECONDS
    return isinstance(exc, Exception)


def _read_wait(state: RetryCallState) -> float:
    """The backoff, or the wait the downstream asked for when that is longer (at most
    ``READ_BACKOFF_MAX_SECONDS``: ``_read_may_retry``)."""
    failure = state.outcome.exception() if state.outcome else None
    asked = failure.retry_after if isinstance(failure, ToolFailed) else None
    return max(READ_BACKOFF(state), float(asked or 0))


def _checked_result(spec: RegisteredTool, result: object) -> dict:
    if not isinstance(result, dict):
        raise TypeError(
            f"handler of {spec.name} returned {type(result).__name__}, not a JSON object"
        )
    json.dumps(result)  # raises for values JSON cannot encode (what jsonb cannot hold: _outcome)
    return result


def _describe(exc: BaseException) -> dict[str, str]:
    name = type(exc).__name__.lower()
    # httpx's *Timeout errors, TimeoutError, and Celery's SoftTimeLimitExceeded (the hard
    # guard of send.time_limits, raised in a handler that ignored its timeout).
    timed_out = isinstance(exc, TimeoutError) or "timeout" in name or "timelimit" in name
    return {
        "code": "timeout" if timed_out else "handler_error",
        # Exception text can quote arguments or credentials; it is masked before storing.
        "message": mask_text(f"{type(exc).__name__}: {exc}")[:500],
    }


def _outcome(
    status: str, started: float, tries: int, *, unsent: bool = False, **fields: object
) -> Outcome:
    latency_ms = int((time.monotonic() - started) * 1000)
    # What a tool answered is kept whatever it holds: a NUL from an upstream must not lose
    # the outcome of an effect that happened (the database would refuse to store it).
    kept = {name: storable(value) for name, value in fields.items()}
    return Outcome(status=status, latency_ms=latency_ms, tries=tries, unsent=unsent, **kept)  # type: ignore[arg-type]
