"""A Hypothesis state machine over the exactly-once protocol.

Hypothesis interleaves submissions, approvals, rejections, claims, workers that finish,
crash before or after the effect, or time out, late (fenced-off) workers, lease expiry,
reconciliation, re-sends, expiry of pending calls and people's resolutions, against
PostgreSQL and the sandbox's real handlers. After every step: only legal transitions, each
audited; at most one effect per idempotency key, none without an approval and an earlier
intent event, one for every succeeded call and none for a failed one; fences only grow and
a lease exists exactly while a call executes. At the end, healthy workers and the sweeps
settle every call: terminal, or unknown and escalated to a person.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Min
from django.utils import timezone
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from approvals import sweeps, transitions
from approvals.execution import runner
from approvals.execution.claim import Claim, claim_call
from approvals.execution.finish import Outcome, finish_call
from approvals.models import Status, ToolCall, Verdict
from approvals.services.attention import AttentionRefused, needs_a_person, rerun_call, resolve_call
from approvals.services.calls import create_call
from approvals.services.decisions import DecisionRefused, confirmation_phrase, decide
from audit.models import AuditEvent
from sandbox.models import Customer, Effect
from tests.conftest import World
from tools_registry import registry
from tools_registry.registry import ToolContext

_numbers = itertools.count(1)


class ExecutorMachine(RuleBasedStateMachine):
    world: World
    dora: User

    calls = Bundle("calls")
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        # Each example runs in a savepoint that is rolled back: examples never see each
        # other, and nothing registered on commit (sends to the executor) ever runs.
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.clock = timezone.now()
        self.seen: dict[uuid.UUID, tuple[str, int, int]] = {}  # status, fence, audit events
        # Effects a worker applied after a person had already marked its call failed: the
        # fence stops a late worker's write, not what it does downstream (see README).
        self.effects_after_resolution: set[str] = set()

    def teardown(self) -> None:
        try:
            self._settle_everything()
            # What the example went through, for --hypothesis-show-statistics.
            for action in set(
                AuditEvent.objects.filter(call_id__in=list(self.seen)).values_list(
                    "action", flat=True
                )
            ):
                event(action)
        finally:
            transaction.set_rollback(True)
            self._atomic.__exit__(None, None, None)

    # --- The agent and the reviewers ---------------------------------------------------

    @initialize(target=calls)
    def some_approved_calls(self) -> Any:
        """Start with approved calls, so examples reach the executor's paths quickly."""
        ids = [self.submit(destructive=False, customer_exists=True) for _ in range(2)]
        ids.append(self.submit(destructive=True, customer_exists=True))
        for call_id in ids:
            self.decide(call_id=call_id, verdict=Verdict.APPROVE)
        return multiple(*ids)

    @rule(target=calls, destructive=st.booleans(), customer_exists=st.booleans())
    def submit(self, destructive: bool, customer_exists: bool) -> uuid.UUID:
        n = next(_numbers)
        if destructive:
            customer_id = f"cus_sm{n:06d}"
            if customer_exists:
                Customer.objects.create(customer_id=customer_id, name="x", email="x@example.com")
            tool, arguments = "delete_customer", {"customer_id": customer_id, "reason": "asked"}
        else:
            tool = "send_email"
            arguments = {"to": f"c{n}@example.com", "subject": "s", "body": "b"}
        call = create_call(
            agent=self.world.agent,
            tool=self.world.tools[tool],
            arguments=arguments,
            session_id="machine",
            request_key=uuid.uuid4().hex,
        )
        self._observe(call.pk)
        return call.pk

    # Approvals are likelier than rejections, so that most calls go on to the executor.
    @rule(call_id=calls, verdict=st.sampled_from([Verdict.APPROVE] * 4 + [Verdict.REJECT]))
    def decide(self, call_id: uuid.UUID, verdict: str) -> None:
        call = ToolCall.objects.get(pk=call_id)
        reviewers = [self.world.bob, self.dora][: max(call.approvals_required, 1)]
        if verdict == Verdict.REJECT:
            reviewers = reviewers[:1]
        for reviewer in reviewers:
            try:
                decide(
                    call_id=call_id,
                    reviewer=reviewer,
                    verdict=verdict,
                    comment="c",
                    confirmation=confirmation_phrase(call),
                    authenticated_at=timezone.now(),
                )
            except DecisionRefused:
                assert ToolCall.objects.get(pk=call_id).status != Status.PENDING or (
                    self._voted(call_id, reviewer)
                )

    # --- Workers -------------------------------------------------------------------------

    @rule(target=claims, call_id=calls)
    def claim(self, call_id: uuid.UUID) -> Any:
        was = ToolCall.objects.get(pk=call_id).status
        claim = claim_call(call_id=call_id)
        if claim is None:
            assert was != Status.APPROVED, "an approved call must be claimable"
            return multiple()
        assert was == Status.APPROVED
        return claim

    @rule(claim=consumes(claims))
    def worker_finishes(self, claim: Claim) -> None:
        """A worker runs the handler and stores the result, if its fence still holds."""
        current = ToolCall.objects.get(pk=claim.call_id)
        still_current = current.fence == claim.fence and current.status == Status.EXECUTING
        outcome = runner.run_handler(claim)
        self._note_late_effect(claim, still_current)
        assert finish_call(claim=claim, outcome=outcome) is still_current

    @rule(claim=consumes(claims))
    def worker_dies_before_the_handler(self, claim: Claim) -> None:
        """kill -9 before the handler ran: nothing happened, nothing is stored."""

    @rule(claim=consumes(claims))
    def worker_dies_after_the_effect(self, claim: Claim) -> None:
        """kill -9 after the downstream applied the effect, before the result was stored."""
        current = ToolCall.objects.get(pk=claim.call_id)
        self._apply_effect(claim)
        self._note_late_effect(claim, current.fence == claim.fence)

    @rule(claim=consumes(claims), after_effect=st.booleans())
    def handler_times_out(self, claim: Claim, after_effect: bool) -> None:
        """The handler timed out, before or after the downstream applied the effect."""
        current = ToolCall.objects.get(pk=claim.call_id)
        still_current = current.fence == claim.fence and current.status == Status.EXECUTING
        if after_effect:
            self._apply_effect(claim)
            self._note_late_effect(claim, still_current)
        outcome = Outcome(status=Status.UNKNOWN, error={"code": "timeout"})
        assert finish_call(claim=claim, outcome=outcome) is still_current

    # --- Time and the sweeps -------------------------------------------------------------

    @rule()
    def leases_run_out(self) -> None:
        """Time passes beyond every running lease (31 s); the lease sweep runs."""
        self.clock = max(self.clock, timezone.now()) + timedelta(seconds=45)
        overdue = ToolCall.objects.filter(
            status=Status.EXECUTING, lease_until__lt=self.clock
        ).count()
        assert sweeps.expire_leases(now=self.clock) == overdue

    @rule()
    def an_hour_passes(self) -> None:
        """Beyond the approval TTL: pending calls expire, approved ones are sent again."""
        self.clock = max(self.clock, timezone.now()) + timedelta(hours=2)
        sweeps.resend_stalled_approved(now=self.clock)
        sweeps.expire_overdue_pending(now=self.clock)

    @rule()
    def reconcile(self) -> None:
        sweeps.reconcile_unknown(now=self.clock)

    # --- People on the "needs attention" page --------------------------------------------

    @rule(call_id=calls)
    def person_marks_the_real_outcome(self, call_id: uuid.UUID) -> None:
        call = ToolCall.objects.select_related("tool").get(pk=call_id)
        happened = Effect.objects.filter(idempotency_key=call.execution_key).exists()
        outcome = Status.SUCCEEDED if happened else Status.FAILED
        try:
            resolve_call(call_id=call_id, person=self.dora, outcome=outcome, note="checked")
        except AttentionRefused:
            assert not needs_a_person(call) or (
                call.status == Status.FAILED and outcome == Status.SUCCEEDED
            )

    @rule(call_id=calls)
    def person_reruns(self, call_id: uuid.UUID) -> None:
        call = ToolCall.objects.get(pk=call_id)
        try:
            rerun_call(call_id=call_id, person=self.dora, confirmed=True)
        except AttentionRefused:
            # Only writes are run again; a destructive call's outcome is only recorded.
            assert not needs_a_person(call) or call.risk == "destructive"

    # --- Invariants ----------------------------------------------------------------------

    @invariant()
    def the_protocol_holds(self) -> None:
        """Checked after every step, in a handful of queries."""
        calls = {
            c.pk: c
            for c in ToolCall.objects.filter(pk__in=list(self.seen)).only(
                "id", "status", "fence", "lease_until", "risk", "needs_attention"
            )
        }
        events = dict(
            AuditEvent.objects.filter(call_id__in=list(calls))
            .values("call_id")
            .annotate(n=Count("id"))
            .values_list("call_id", "n")
        )
        for call_id, call in calls.items():
            status, fence, seen_events = self.seen[call_id]
            if call.status != status:
                assert transitions.allowed(status, call.status, risk=call.risk), (
                    f"{status} -> {call.status}"
                )
                assert events[call_id] > seen_events, f"{status} -> {call.status} not audited"
            assert call.fence >= fence, "a fence went back"
            # A lease exists exactly while the call executes.
            assert (call.lease_until is not None) == (call.status == Status.EXECUTING)
            self.seen[call_id] = (call.status, call.fence, events[call_id])

        effects = list(Effect.objects.values_list("idempotency_key", "at"))
        keys = [key for key, _ in effects]
        assert len(keys) == len(set(keys)), "an idempotency key took effect twice"
        by_key = {c.execution_key: c for c in calls.values()}
        marks = self._audit_marks([by_key[key].pk for key in keys])
        for key, at in effects:
            approved_at, intent_at = marks.get(by_key[key].pk, (None, None))
            assert approved_at is not None, "an effect without an approval"
            assert intent_at is not None and approved_at <= intent_at <= at, (
                "an effect without an earlier intent event"
            )
        for key, call in by_key.items():
            if call.status == Status.SUCCEEDED:
                assert key in keys, "a succeeded call without its effect"
            if call.status == Status.FAILED and key not in self.effects_after_resolution:
                assert key not in keys, "a failed call whose effect happened"

    # --- Helpers -------------------------------------------------------------------------

    def _observe(self, call_id: uuid.UUID) -> None:
        status, fence = ToolCall.objects.values_list("status", "fence").get(pk=call_id)
        self.seen[call_id] = (status, fence, AuditEvent.objects.filter(call_id=call_id).count())

    @staticmethod
    def _audit_marks(call_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Any, Any]]:
        """Per call: when it was approved, and its first intent event."""
        if not call_ids:
            return {}
        marks: dict[uuid.UUID, list[Any]] = {pk: [None, None] for pk in call_ids}
        rows = (
            AuditEvent.objects.filter(
                call_id__in=call_ids, action__in=["call.approved", "call.execution_started"]
            )
            .values("call_id", "action")
            .annotate(first=Min("occurred_at"))
        )
        for row in rows:
            marks[row["call_id"]][0 if row["action"] == "call.approved" else 1] = row["first"]
        return {pk: (m[0], m[1]) for pk, m in marks.items()}

    def _voted(self, call_id: uuid.UUID, reviewer: User) -> bool:
        return ToolCall.objects.get(pk=call_id).decisions.filter(reviewer=reviewer).exists()

    def _apply_effect(self, claim: Claim) -> None:
        """What the downstream does with the worker's request: the real handler's effect."""
        spec = registry.get(claim.tool_name)
        ctx = ToolContext(
            call_id=claim.call_id, idempotency_key=claim.execution_key, timeout=claim.timeout
        )
        try:
            with transaction.atomic():
                spec.handler(ctx, claim.arguments)
        except registry.ToolFailed:
            pass

    def _note_late_effect(self, claim: Claim, still_current: bool) -> None:
        call = ToolCall.objects.get(pk=claim.call_id)
        if (
            not still_current
            and call.status == Status.FAILED  # a person marked it failed meanwhile
            and Effect.objects.filter(idempotency_key=claim.execution_key).exists()
        ):
            self.effects_after_resolution.add(claim.execution_key)

    def _settle_everything(self) -> None:
        """Healthy workers and the sweeps, until nothing moves: every call must then be
        terminal, or unknown and escalated (or still waiting for a reviewer)."""
        for _ in range(10):
            self.clock = max(self.clock, timezone.now()) + timedelta(hours=2)
            sweeps.expire_leases(now=self.clock)
            self.the_protocol_holds()
            sweeps.reconcile_unknown(now=self.clock)
            self.the_protocol_holds()
            approved = list(ToolCall.objects.filter(pk__in=list(self.seen), status=Status.APPROVED))
            for call in approved:
                claim = claim_call(call_id=call.pk)
                assert claim is not None
                self.the_protocol_holds()
                assert finish_call(claim=claim, outcome=runner.run_handler(claim))
                self.the_protocol_holds()
            if not approved:
                break
        for call in ToolCall.objects.filter(pk__in=list(self.seen)):
            assert call.status in (
                Status.PENDING,
                Status.SUCCEEDED,
                Status.FAILED,
                Status.REJECTED,
                Status.EXPIRED,
            ) or (call.status == Status.UNKNOWN and call.needs_attention), (
                f"{call.pk} left {call.status} after the sweeps"
            )


def test_the_exactly_once_protocol_holds_under_any_interleaving(world: World, dora: User):
    ExecutorMachine.world = world
    ExecutorMachine.dora = dora
    run_state_machine_as_test(
        ExecutorMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
