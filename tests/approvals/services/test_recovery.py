"""Lease expiry and reconciliation: the sweep transitions of the exactly-once protocol."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
from django.utils import timezone

from approvals import sweeps
from approvals.execution import runner, send
from approvals.execution.claim import claim_call
from approvals.execution.finish import Outcome, expire_lease, finish_call
from approvals.models import Status, ToolCall
from approvals.services.attention import rerun_call, resolve_call
from approvals.services.calls import create_call
from approvals.services.recovery import reconcile_call
from audit.models import AuditEvent
from sandbox import effects
from tests.conftest import World, sandbox_effects
from tests.support.calls import (
    age_lease,
    approved_call,
    claimed_call,
    delete_arguments,
    unknown_call,
)
from tools_registry import registry
from tools_registry.registry import LookupResult
from tools_registry.services import stop_agent

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def actions(call: ToolCall) -> list[str]:
    return list(
        AuditEvent.objects.filter(call_id=call.pk).order_by("id").values_list("action", flat=True)
    )


def apply_effect_of(call: ToolCall) -> None:
    """What a worker that died after the effect left behind: the effect, no result."""
    effects.apply_once(tool=call.tool.name, key=call.execution_key, effect=lambda: {"sent": 1})


def sends(callbacks: list) -> list[str]:
    return [
        str(cb.args[0])
        for cb in callbacks
        if isinstance(cb, partial) and cb.func is send.send_execution
    ]


class TestLeaseExpiry:
    def test_an_expired_lease_makes_a_write_unknown_and_moves_the_fence(self, world: World):
        call, claim = claimed_call(world)
        age_lease(call)

        assert sweeps.expire_leases() == 1

        call.refresh_from_db()
        assert call.status == Status.UNKNOWN
        assert call.fence == claim.fence + 1
        assert call.lease_until is None
        assert call.error["code"] == "lease_expired"
        event = AuditEvent.objects.get(call_id=call.pk, action="call.lease_expired")
        assert event.data["claim_fence"] == claim.fence
        assert event.data["fence"] == claim.fence + 1

    def test_the_silent_workers_late_result_is_refused_once_the_call_moved_on(self, world: World):
        """Reconciliation sent it to run again meanwhile (the effect not found): the re-run
        has it. (A call nothing acted on since is settled by the late result:
        tests/approvals/execution/test_late_results.py.)"""
        call, claim = claimed_call(world)
        age_lease(call)
        sweeps.expire_leases()
        assert sweeps.reconcile_unknown() == {"rerun": 1}

        late = Outcome(status=Status.SUCCEEDED, result={"late": True})
        assert finish_call(claim=claim, outcome=late) is False

        call.refresh_from_db()
        assert call.status == Status.APPROVED
        assert call.result is None
        assert "call.stale_result_discarded" in actions(call)

    def test_a_live_lease_is_left_alone(self, world: World):
        call, claim = claimed_call(world)

        assert sweeps.expire_leases() == 0

        call.refresh_from_db()
        assert call.status == Status.EXECUTING
        assert call.fence == claim.fence

    @pytest.mark.parametrize("whose", ["worker's clock behind", "sweeper's clock ahead"])
    def test_a_lease_is_measured_by_the_databases_clock_not_the_machines(
        self, world: World, whose: str, monkeypatch: pytest.MonkeyPatch
    ):
        """A worker on a machine whose clock runs ten minutes behind stamped a lease that
        had lapsed when it was given (the sweep read it with its own clock): its calls were
        taken from it as it ran them, every one left for reconciliation or a person. So was a
        running call for a sweep on a machine whose clock runs ahead."""
        real_now = timezone.now
        skew = timedelta(minutes=10)
        if whose == "worker's clock behind":
            with monkeypatch.context() as clock:
                clock.setattr(timezone, "now", lambda: real_now() - skew)
                call, claim = claimed_call(world)
            assert sweeps.expire_leases() == 0
        else:
            call, claim = claimed_call(world)
            monkeypatch.setattr(timezone, "now", lambda: real_now() + skew)
            assert sweeps.expire_leases() == 0
            assert expire_lease(call_id=call.pk) is None
        call.refresh_from_db()
        assert (call.status, call.fence) == (Status.EXECUTING, claim.fence)
        assert call.lease_until > real_now()

    def test_an_expired_read_fails_because_a_read_has_no_effect(self, world: World):
        call = create_call(
            agent=world.agent,
            tool=world.tools["get_customer"],
            arguments={"customer_id": "cus_0001"},
            session_id="s",
            request_key="read-1",
        )
        assert claim_call(call_id=call.pk) is not None
        age_lease(call)

        assert sweeps.expire_leases() == 1

        call.refresh_from_db()
        assert call.status == Status.FAILED
        assert call.error["code"] == "lease_expired"


class TestReconciliation:
    def test_a_found_effect_makes_the_call_succeed_with_the_downstreams_result(self, world: World):
        call = unknown_call(world)
        apply_effect_of(call)

        assert sweeps.reconcile_unknown() == {"succeeded": 1}

        call.refresh_from_db()
        assert call.status == Status.SUCCEEDED
        assert call.result == {"sent": 1}
        assert call.needs_attention is False
        event = AuditEvent.objects.get(call_id=call.pk, action="call.reconciled")
        assert event.data["finding"] == "found"

    def test_a_missing_effect_runs_again_with_the_same_key(
        self, world: World, django_capture_on_commit_callbacks
    ):
        call = unknown_call(world)
        key = call.execution_key

        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            assert sweeps.reconcile_unknown() == {"rerun": 1}

        call.refresh_from_db()
        assert call.status == Status.APPROVED
        assert sends(callbacks) == [str(call.pk)]
        assert actions(call)[-2:] == ["call.reconciled", "call.rerun"]
        # The re-run claims like the first run, with the same key and a new fence.
        outcome = runner.execute(call.pk)
        assert outcome is not None and outcome.status == Status.SUCCEEDED
        call.refresh_from_db()
        assert call.execution_key == key
        assert call.attempts == 2
        assert [(e["idempotency_key"], e["deliveries"]) for e in sandbox_effects()] == [(key, 1)]

    def test_a_destructive_call_is_never_rerun_by_itself(self, world: World, dora):
        call = unknown_call(world, "delete_customer")

        assert sweeps.reconcile_unknown() == {"escalated": 1}

        call.refresh_from_db()
        assert call.status == Status.UNKNOWN
        assert call.needs_attention is True
        assert "A destructive call runs once" in call.attention_reason
        assert "call.escalated" in actions(call)

    def test_a_downstream_that_cannot_tell_escalates_once(self, world: World, settings):
        settings.SANDBOX_PAYMENTS_URL = "http://127.0.0.1:9/nowhere"  # nothing listens
        call = unknown_call(world, "issue_refund")

        assert sweeps.reconcile_unknown() == {"escalated": 1}
        # Asked again before the re-check interval: the escalated call is not asked.
        assert sweeps.reconcile_unknown() == {}
        later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
        assert sweeps.reconcile_unknown(now=later) == {"unchanged": 1}

        call.refresh_from_db()
        assert call.status == Status.UNKNOWN
        assert call.needs_attention is True
        assert actions(call).count("call.escalated") == 1

    def test_an_escalated_call_succeeds_when_the_downstream_can_tell_again(
        self, world: World, settings
    ):
        settings.SANDBOX_PAYMENTS_URL = "http://127.0.0.1:9/nowhere"
        call = unknown_call(world, "send_email")
        spec = registry.get("send_email")
        lookup = spec.lookup_fn
        spec.lookup_fn = None  # the downstream cannot be asked for now
        try:
            assert sweeps.reconcile_unknown() == {"escalated": 1}
        finally:
            spec.lookup_fn = lookup
        apply_effect_of(call)
        later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)

        assert sweeps.reconcile_unknown(now=later) == {"succeeded": 1}

        call.refresh_from_db()
        assert call.status == Status.SUCCEEDED
        assert call.needs_attention is False

    def test_automatic_reruns_stop_at_the_limit_and_a_person_decides(self, world: World, settings):
        settings.EXECUTOR_AUTO_RERUNS = 1
        call = unknown_call(world)
        assert sweeps.reconcile_unknown() == {"rerun": 1}
        claim_call(call_id=call.pk)
        assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))

        assert sweeps.reconcile_unknown() == {"escalated": 1}

        call.refresh_from_db()
        assert call.attempts == 2
        assert call.status == Status.UNKNOWN
        assert call.attention_reason == "The outcome stayed unknown after 2 attempts."

    def test_a_call_moved_meanwhile_is_skipped(self, world: World):
        call = unknown_call(world)
        resolve_call(
            call_id=call.pk, person=world.bob, outcome=Status.FAILED, note="checked the outbox"
        )

        assert reconcile_call(call_id=call.pk).action == "skipped"


class TestResend:
    def test_an_approved_call_whose_task_never_started_is_sent_again(
        self, world: World, django_capture_on_commit_callbacks
    ):
        call = approved_call(world)
        ToolCall.objects.filter(pk=call.pk).update(
            enqueued_at=timezone.now() - timedelta(minutes=5)
        )
        fresh = approved_call(world)

        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            assert sweeps.resend_stalled_approved() == 1

        assert sends(callbacks) == [str(call.pk)]
        assert str(fresh.pk) not in sends(callbacks)
        assert "call.execution_resent" in actions(call)
        # Sent again only once per interval.
        assert sweeps.resend_stalled_approved() == 0


class TestEscalationOfDestructiveFailures:
    def test_a_failed_destructive_call_is_escalated_and_never_retried(self, world: World, dora):
        call = approved_call(world, "delete_customer", delete_arguments())  # no such customer

        outcome = runner.execute(call.pk)

        assert outcome is not None and outcome.status == Status.FAILED
        call.refresh_from_db()
        assert call.needs_attention is True
        assert "call.escalated" in actions(call)
        assert sweeps.run_all().as_dict() == sweeps.SweepReport().as_dict()
        call.refresh_from_db()
        assert call.status == Status.FAILED


def test_the_hard_guard_sits_between_the_tools_timeout_and_the_lease(world: World, settings):
    settings.EXECUTOR_SOFT_LIMIT_GRACE_SECONDS = 5
    settings.EXECUTOR_HARD_LIMIT_GRACE_SECONDS = 10
    settings.EXECUTOR_LEASE_GRACE_SECONDS = 30
    tool = world.tools["send_email"]
    tool.timeout_seconds = 12
    tool.save()
    call, _ = claimed_call(world)

    limits = send.time_limits(call.pk)

    assert limits == {"soft_time_limit": 17, "time_limit": 27}
    # The lease by the database's clock, the start by the worker's: the same instant here.
    lease = (call.lease_until - call.started_at).total_seconds()
    assert limits["soft_time_limit"] < limits["time_limit"] < 41 < lease < 43


@pytest.mark.parametrize("command", ["resend_approved", "expire_leases", "expire_pending"])
def test_each_sweep_has_a_command(world: World, command: str):
    from io import StringIO

    from django.core.management import call_command

    call, _ = claimed_call(world)
    age_lease(call)
    out = StringIO()
    call_command(command, stdout=out)
    expected = {"resend_approved": "resent: 0", "expire_leases": "leases expired: 1"}
    assert out.getvalue().strip() == expected.get(command, "expired: 0")


def test_the_reconcile_command_reports_what_it_did(world: World):
    from io import StringIO

    from django.core.management import call_command

    call = unknown_call(world)
    apply_effect_of(call)
    out = StringIO()
    call_command("reconcile_unknown", stdout=out)
    assert out.getvalue().strip() == "reconciled: {'succeeded': 1}"


def test_an_unknown_call_is_not_rerun_by_itself_once_it_may_not_run(
    world: World, settings: Any
) -> None:
    """The agent was stopped while one of its calls was unknown and its effect had in fact
    happened: reconciliation does not re-run it (the claim would refuse it and call it
    "failed, never ran"), it goes to a person."""
    call = unknown_call(world)
    apply_effect_of(call)
    spec = registry.get("send_email")
    saved = (spec.lookup_fn, spec.rerun_reconciles)
    spec.lookup_fn, spec.rerun_reconciles = None, True  # a keyed upstream without a lookup
    try:
        stop_agent(agent=world.agent, reason="misbehaving")  # escalates it at once
        later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
        assert sweeps.reconcile_unknown(now=later) == {"unchanged": 1}
    finally:
        spec.lookup_fn, spec.rerun_reconciles = saved
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.needs_attention
    assert "may not run again now" in call.attention_reason


def test_a_persons_rerun_refused_at_its_claim_goes_back_to_them_unknown(world: World) -> None:
    """Re-run by a person, then the agent stopped before a worker claimed it: the first
    attempt may have had its effect, so the call is unknown again and needs a person, not
    failed as if nothing ran."""
    call = unknown_call(world)
    apply_effect_of(call)
    rerun_call(call_id=call.pk, person=world.bob, confirmed=True, note="Downstream unsure.")
    stop_agent(agent=world.agent, reason="incident")
    assert runner.execute(call.pk) is None
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.needs_attention
    assert "whether an earlier attempt had its effect is not known" in call.attention_reason
    assert actions(call)[-2:] == ["call.execution_refused", "call.escalated"]


def test_a_lookup_answer_the_database_cannot_hold_stops_no_other_call(world: World) -> None:
    """A found effect whose result holds a NUL (an upstream's "\\u0000") is stored with it
    replaced; a lookup that answers nonsense is a failed lookup; neither holds up the calls
    after it in the sweep."""
    odd = unknown_call(world)
    nonsense = unknown_call(world)
    plain = unknown_call(world)
    spec = registry.get("send_email")
    saved = spec.lookup_fn

    def lookup(ctx: Any) -> Any:
        if ctx.call_id == odd.pk:
            return LookupResult.found_with({"id": "msg\x00_1"})
        if ctx.call_id == nonsense.pk:
            return "yes"
        return LookupResult.found_with({"id": "ok"})

    spec.lookup_fn = lookup
    try:
        assert sweeps.reconcile_unknown() == {"succeeded": 2, "escalated": 1}
    finally:
        spec.lookup_fn = saved
    odd.refresh_from_db()
    assert odd.status == Status.SUCCEEDED and odd.result == {"id": "msg\ufffd_1"}
    nonsense.refresh_from_db()
    assert nonsense.status == Status.UNKNOWN and nonsense.needs_attention
    plain.refresh_from_db()
    assert plain.status == Status.SUCCEEDED


def test_a_lookup_answer_json_cannot_hold_goes_to_a_person(world: World) -> None:
    """A code tool's lookup that found the effect and answered with a value JSON cannot
    encode (a datetime): the move failed on every check, the call stayed unknown, never
    escalated, and took its place at the head of each pass. It is a failed lookup now."""
    odd = unknown_call(world)
    spec = registry.get("send_email")
    saved = spec.lookup_fn
    spec.lookup_fn = lambda ctx: LookupResult.found_with({"sent_at": datetime(2026, 1, 1)})
    try:
        assert sweeps.reconcile_unknown() == {"escalated": 1}
    finally:
        spec.lookup_fn = saved
    odd.refresh_from_db()
    assert odd.status == Status.UNKNOWN and odd.needs_attention
    assert AuditEvent.objects.get(call_id=odd.pk, action="call.escalated").data["finding"] == (
        "lookup_failed"
    )


def test_a_call_escalated_while_its_agent_was_stopped_is_not_rerun_after_the_resume(
    world: World, settings: Any
) -> None:
    """Escalated as it could not run, the call is a person's: re-checked later, only a found
    effect settles it by itself, never a re-run nobody decided (a resume is not that)."""
    from tools_registry.services import resume_agent

    call = unknown_call(world)
    stop_agent(agent=world.agent, reason="sending odd e-mails")
    assert sweeps.reconcile_unknown() == {}, "the stop escalated it at once"
    call.refresh_from_db()
    assert call.needs_attention and call.left_to_person
    assert "may not run again now" in call.attention_reason and "stopped" in call.attention_reason
    assert actions(call)[-1] == "call.escalated"
    resume_agent(agent=world.agent, note="prompt fixed")
    later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=later) == {"unchanged": 1}
    again = later + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=again) == {"unchanged": 1}
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.needs_attention
    assert "call.rerun" not in actions(call)
    apply_effect_of(call)  # the effect shows up after all
    much_later = again + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=much_later) == {"succeeded": 1}


def test_a_rerun_refused_for_now_leaves_the_earlier_attempts_outcome_open(
    world: World, probe_tool_cleanup: None
) -> None:
    """The first attempt timed out (it may have had its effect); the re-run is told 'the
    key's first request is still running' (an upstream's 409, retryable): that says nothing
    of the first attempt, so the call stays unknown, never failed for the agent to resend.
    A definite refusal of the re-run, or a retryable one of a first attempt, is a failure."""
    from approvals.services.decisions import decide
    from tests.support.probe import install_probe_tool, stock_call
    from tools_registry.policy import Risk

    probe = install_probe_tool(world, risk=Risk.WRITE)
    from tools_registry import services as registry_services

    registry_services.grant_review(tool=world.tools["check_stock"], user=world.bob)

    def unknown_probe_call() -> ToolCall:
        call = create_call(
            agent=world.agent, tool=world.tools["check_stock"],
            arguments=stock_call()["arguments"], session_id="s", request_key=f"k{probe.calls}",
        )  # fmt: skip
        decide(call_id=call.pk, reviewer=world.bob, verdict="approve")
        probe.mode = "timeout"
        runner.execute(call.pk)
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN
        return call

    call = unknown_probe_call()
    rerun_call(call_id=call.pk, person=world.bob, confirmed=True, note="Checked: unsure.")
    probe.mode = "busy"
    runner.execute(call.pk)
    call.refresh_from_db()
    assert (call.status, call.error["code"]) == (Status.UNKNOWN, "upstream_409")

    other = unknown_probe_call()
    rerun_call(call_id=other.pk, person=world.bob, confirmed=True, note="Checked: unsure.")
    probe.mode = "refuse"
    runner.execute(other.pk)
    other.refresh_from_db()
    assert other.status == Status.FAILED


def test_a_rerun_whose_tool_code_is_gone_leaves_the_earlier_attempts_outcome_open(
    world: World,
) -> None:
    """A worker lost mid-call in a deploy that also took the tool's code away (the registry
    not synced yet): reconciliation re-runs the call on a new worker, which has no handler.
    That re-run ran nothing and says nothing of the first attempt, which may have had its
    effect: the call stays unknown, never failed for the agent to send again."""
    call = unknown_call(world)
    assert sweeps.reconcile_unknown() == {"rerun": 1}
    spec = registry.unregister("send_email")
    try:
        runner.execute(call.pk)
        call.refresh_from_db()
        assert (call.status, call.error["code"]) == (Status.UNKNOWN, "tool_not_in_code")
        # No handler, no lookup: a person decides.
        assert sweeps.reconcile_unknown() == {"escalated": 1}
    finally:
        assert spec is not None
        registry.restore(spec)
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.needs_attention


def escalated_while_the_downstream_is_down(world: World) -> ToolCall:
    """An unknown call the check escalated only because its lookup failed."""
    call = unknown_call(world)
    spec = registry.get(call.tool.name)
    lookup = spec.lookup_fn

    def down(ctx: Any) -> Any:
        raise ConnectionError("the downstream is down for a minute")

    spec.lookup_fn = down
    try:
        assert sweeps.reconcile_unknown() == {"escalated": 1}
    finally:
        spec.lookup_fn = lookup
    return call


def test_a_call_escalated_as_its_downstream_could_not_be_asked_is_rerun_once_it_can(
    world: World, settings: Any
) -> None:
    """Escalated only because the lookup failed (the downstream down for a minute): asked
    again later, no effect under its key, and the tool honours keys: it runs again."""
    call = escalated_while_the_downstream_is_down(world)
    later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=later) == {"rerun": 1}
    call.refresh_from_db()
    assert call.status == Status.APPROVED and not call.needs_attention


def test_a_rerun_refused_at_its_claim_for_any_reason_goes_to_a_person(world: World) -> None:
    """The longest reason (the user's scopes narrowed) is kept as a call keeps a reason."""
    from tools_registry import services as registry_services
    from tools_registry.models import Agent

    call = unknown_call(world)
    rerun_call(call_id=call.pk, person=world.bob, confirmed=True, note="Checked, unsure.")
    world.agent.unscoped_access = Agent.UnscopedAccess.READS
    registry_services.save_agent(agent=world.agent, changed_by=world.alice)
    assert runner.execute(call.pk) is None
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.needs_attention
    assert call.attention_reason.startswith("A re-run was refused (")
    escalated = AuditEvent.objects.filter(call_id=call.pk, action="call.escalated").last()
    assert escalated is not None and "role scopes" in escalated.data["reason"]


def test_a_stop_and_resume_between_two_checks_does_not_rerun_an_escalated_call(
    world: World, settings: Any
) -> None:
    """Escalated as the downstream could not be asked (a re-run would be allowed once it
    can), then its agent stopped and resumed before the next check: the stop left it to a
    person, so the check that finds no effect does not re-run it."""
    from tools_registry.services import resume_agent

    call = escalated_while_the_downstream_is_down(world)
    stop_agent(agent=world.agent, reason="incident")
    resume_agent(agent=world.agent, note="false alarm")
    later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=later) == {"unchanged": 1}
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and call.left_to_person
    assert "call.rerun" not in actions(call)
    # A person's re-run is the decision: it clears the mark with the escalation.
    rerun_call(call_id=call.pk, person=world.bob, confirmed=True, note="Checked: not sent.")
    call.refresh_from_db()
    assert call.status == Status.APPROVED and not call.needs_attention
    assert not call.left_to_person


def test_a_stop_leaves_a_call_settled_or_left_already_as_it_is(world: World) -> None:
    """Only unknown calls not yet left to a person are escalated by a stop."""
    left = unknown_call(world)
    rerun_call(call_id=left.pk, person=world.bob, confirmed=True, note="Checked, unsure.")
    stop_agent(agent=world.agent, reason="first")
    assert runner.execute(left.pk) is None  # refused at its claim: left to a person
    left.refresh_from_db()
    reason = left.attention_reason
    assert left.left_to_person and reason.startswith("A re-run was refused (")
    from tools_registry.services import resume_agent

    resume_agent(agent=world.agent)
    stop_agent(agent=world.agent, reason="second")
    left.refresh_from_db()
    assert left.attention_reason == reason
    assert actions(left).count("call.escalated") == 1


def test_calls_left_to_a_person_before_the_mark_existed_are_marked_by_the_migration(
    world: World,
) -> None:
    """Told apart by their reason's start before: the migration marks those, no other."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("approvals.migrations.0014_left_to_person")
    stopped, refused, other = unknown_call(world), unknown_call(world), unknown_call(world)
    for call, reason in (
        (stopped, "The outcome is unknown, and the call may not run again now: The agent..."),
        (refused, "A re-run was refused (The tool is disabled...); whether an earlier..."),
        (other, "The downstream has no record of the effect."),
    ):
        ToolCall.objects.filter(pk=call.pk).update(needs_attention=True, attention_reason=reason)
    migration.mark_calls_left_to_a_person(apps, None)
    marked = set(ToolCall.objects.filter(left_to_person=True).values_list("pk", flat=True))
    assert marked == {stopped.pk, refused.pk}


def test_a_call_left_open_while_its_agent_is_stopped_is_left_to_a_person(
    world: World, settings: Any
) -> None:
    """Running when its agent was stopped, the call ends unknown after the stop (its handler
    timed out, or its worker went silent): a person's, as the calls the stop found unknown
    are, so a resume before the next check does not let reconciliation re-run it."""
    from tools_registry.services import resume_agent

    timed_out, claim = claimed_call(world)
    silent, _ = claimed_call(world)
    stop_agent(agent=world.agent, reason="incident")
    unknown = Outcome(status=Status.UNKNOWN, error={"code": "timeout", "message": "timed out"})
    assert finish_call(claim=claim, outcome=unknown)
    age_lease(silent)
    assert sweeps.expire_leases() == 1
    resume_agent(agent=world.agent, note="false alarm")
    later = timezone.now() + timedelta(seconds=settings.EXECUTOR_RECHECK_ESCALATED_SECONDS + 1)
    assert sweeps.reconcile_unknown(now=later) == {"unchanged": 2}
    for call in (timed_out, silent):
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN and call.left_to_person
        assert "stopped" in call.attention_reason
        assert actions(call)[-1] != "call.rerun"
        assert "call.escalated" in actions(call)


def test_a_call_left_open_while_its_agent_runs_is_reconciled_as_before(world: World) -> None:
    """Not stopped: an unknown outcome is reconciliation's (here a re-run with its key)."""
    call, claim = claimed_call(world)
    unknown = Outcome(status=Status.UNKNOWN, error={"code": "timeout", "message": "timed out"})
    assert finish_call(claim=claim, outcome=unknown)
    call.refresh_from_db()
    assert not call.needs_attention and not call.left_to_person
    assert sweeps.reconcile_unknown() == {"rerun": 1}
