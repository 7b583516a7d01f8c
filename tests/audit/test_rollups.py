"""The analytics summary the sealer keeps: every sealed event counted once, the same
figures as a rebuild from the trail, and the latency of each decided call."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit import analytics, chain, rollups
from audit.log import record
from audit.models import AuditEvent, DailyCount, DecisionLatency

pytestmark = pytest.mark.django_db


def summary() -> set[tuple]:
    return set(
        DailyCount.objects.values_list(
            "day", "metric", "key", "variant", "n", "input_tokens", "output_tokens", "usd"
        )
    ) | set(DecisionLatency.objects.values_list("call_id", "tool_name", "seconds"))


def seed(calls: int) -> None:
    start = timezone.now() - timedelta(days=2)
    rows = []
    for n in range(calls):
        call_id, at = uuid.uuid4(), start + timedelta(minutes=37 * n)
        common = {
            "agent_name": f"agent-{n % 3}",
            "tool_name": ["a", "b"][n % 2],
            "call_id": call_id,
        }
        cost = {"token_cost": {"input_tokens": 100 + n, "output_tokens": 10, "usd": 0.5}}
        rows += [
            AuditEvent(occurred_at=at, action="call.submitted", actor_type="agent", data=cost, **common),
            AuditEvent(occurred_at=at + timedelta(seconds=60 + n), action="call.decision",
                       outcome="approve" if n % 3 else "reject", actor_type="user",
                       actor_label=f"rev-{n % 2}", **common),
            AuditEvent(occurred_at=at + timedelta(seconds=60 + n),
                       action="call.approved" if n % 3 else "call.rejected", actor_type="system", **common),
            AuditEvent(occurred_at=at + timedelta(seconds=90 + n), action="call.execution_finished",
                       outcome="succeeded", actor_type="system", **common),
            AuditEvent(occurred_at=at, action="grant.added", actor_type="system"),
        ]  # fmt: skip
    AuditEvent.objects.bulk_create(rows)


def test_sealing_in_small_batches_counts_what_a_rebuild_counts() -> None:
    seed(60)
    while chain.seal_pending(batch_size=7) == 7:  # many passes, decisions apart from proposals
        pass
    assert not AuditEvent.objects.filter(hash="").exists()
    folded = summary()
    chain.rebuild_rollups()
    assert summary() == folded
    assert DailyCount.objects.filter(metric=rollups.CALLS).values_list("n", flat=True)
    assert DecisionLatency.objects.count() == 60


def test_the_page_figures_come_from_the_summary() -> None:
    seed(10)
    chain.seal_pending()
    since, _ = analytics.window(7)
    calls = analytics.calls_per_tool_per_day(since)
    assert sum(sum(days.values()) for days in calls.values()) == 10
    assert analytics.verdicts(since, "tool_name")["a"] == {"approve": 3, "reject": 2}
    assert analytics.token_cost_per_agent(since)["agent-0"]["usd"] == 2.0
    latency = {item.tool: item for item in analytics.approval_latency(since)}
    assert latency["a"].decided == 5 and latency["a"].median_seconds == 64.0


def test_calls_approved_with_no_reviewer_are_not_a_reviewers_latency() -> None:
    """A call a policy rule or a standing approval approved as it arrived waited for
    nobody: counted as a 0 s wait it would pull the reviewers' median down."""
    at = timezone.now() - timedelta(hours=1)
    rows = []
    for n, by in enumerate(["rule", "standing_approval", "rule", None]):
        call_id = uuid.uuid4()
        common = {"tool_name": "a", "call_id": call_id, "actor_type": "system"}
        waited = timedelta(seconds=120) if by is None else timedelta(0)
        rows += [
            AuditEvent(occurred_at=at + timedelta(minutes=n), action="call.submitted", **common),
            AuditEvent(
                occurred_at=at + timedelta(minutes=n) + waited,
                action="call.approved",
                outcome="approved",
                data={"approvals": 0, "by": by} if by else {"approvals": 1},
                **common,
            ),
        ]
    AuditEvent.objects.bulk_create(rows)
    chain.seal_pending()
    since, _ = analytics.window(7)
    [latency] = analytics.approval_latency(since)
    assert (latency.decided, latency.median_seconds) == (1, 120.0)
    chain.rebuild_rollups()
    [latency] = analytics.approval_latency(since)
    assert (latency.decided, latency.median_seconds) == (1, 120.0)


def test_an_event_is_counted_only_when_sealed_and_only_once() -> None:
    record(action="call.submitted", data={"token_cost": {"usd": 1}})
    assert not DailyCount.objects.exists()
    chain.seal_pending()
    chain.seal_pending()
    assert DailyCount.objects.get(metric=rollups.TOKENS).usd == 1


def test_the_rebuild_command() -> None:
    seed(3)
    chain.seal_pending()
    DailyCount.objects.all().delete()
    call_command("rebuild_audit_rollups", stdout=open("/dev/null", "w"))  # noqa: SIM115, PTH123
    assert DailyCount.objects.filter(metric=rollups.CALLS).exists()


def test_the_migration_forgets_the_automatic_approvals_already_counted() -> None:
    from importlib import import_module

    from django.apps import apps

    forget = import_module("audit.migrations.0007_forget_automatic_approval_latencies").forget
    at = timezone.now() - timedelta(hours=1)
    automatic, reviewed = uuid.uuid4(), uuid.uuid4()
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(occurred_at=at, action="call.approved", actor_type="system",
                       call_id=automatic, data={"approvals": 0, "by": "rule"}),
            AuditEvent(occurred_at=at, action="call.approved", actor_type="system",
                       call_id=reviewed, data={"approvals": 1}),
        ]
    )  # fmt: skip
    DecisionLatency.objects.bulk_create(
        [
            DecisionLatency(call_id=automatic, tool_name="a", decided_at=at, seconds=0),
            DecisionLatency(call_id=reviewed, tool_name="a", decided_at=at, seconds=60),
        ]
    )
    forget(apps, None)
    assert list(DecisionLatency.objects.values_list("call_id", flat=True)) == [reviewed]
