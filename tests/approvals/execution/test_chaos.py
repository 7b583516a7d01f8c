"""The chaos suite: an approved call takes effect exactly once while workers are killed,
paused, raced and duplicated, the broker loses its queue, the web process dies between
commit and send, and the downstream is slow or times out.

Real `celery worker` processes (a shared fleet of two, plus a victim of its own where a
scenario kills or pauses one) run against PostgreSQL and Redis with short leases; the
payments API is a real gunicorn server. Each scenario ends with ``chaos.check``: from
the sandbox's own records, at most one effect per idempotency key, one per succeeded call,
none without an approval and an earlier committed intent event, and every call terminal
or unknown-and-escalated once the sweeps ran. ``--soak`` makes every scenario ten times
bigger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from django.utils import timezone
from kombu import Connection

from approvals.execution import send
from approvals.execution.tasks import execute_call
from approvals.models import Status, ToolCall
from audit.models import AuditEvent
from sandbox.models import Effect, Payment, SandboxFault
from tests.conftest import World
from tests.support import ROOT, chaos
from tests.support.calls import pending_call
from tests.support.chaos import Fleet
from tests.support.workers import running_worker, worker_env

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

Point = SandboxFault.Point


def executing(call_ids: list) -> list:
    return list(
        ToolCall.objects.filter(pk__in=call_ids, status=Status.EXECUTING).values_list(
            "pk", flat=True
        )
    )


def audited(action: str, call_ids: list) -> int:
    return AuditEvent.objects.filter(call_id__in=call_ids, action=action).count()


def test_the_same_task_delivered_many_times_at_once_runs_each_call_once(
    chaos_world: World, scale: int
) -> None:
    ids = chaos.approved_calls(chaos_world, "send_email", 50 * scale)

    sent = chaos.send(ids, times=8)
    chaos.wait_until(
        lambda: chaos.statuses(ids)[Status.SUCCEEDED] == len(ids),
        timeout=60,
        message="every call to succeed",
    )
    chaos.settle(ids)

    report = chaos.check("duplicate deliveries", ids, messages=sent)
    # Not one repeat even reached a sink: the claim dropped every duplicate before it.
    assert report.deliveries == len(ids)
    assert set(ToolCall.objects.filter(pk__in=ids).values_list("attempts", "fence")) == {(1, 1)}


def test_two_workers_racing_for_the_same_calls_run_each_once(
    chaos_world: World, fleet: Fleet, scale: int
) -> None:
    ids = chaos.approved_calls(chaos_world, "send_email", 40 * scale)
    marks = fleet.log_marks()

    def ran() -> list[int]:
        # Log lines, not ids: the log filter masks id fragments that look like phone numbers.
        return [
            w.log[m:].count(" succeeded in ") for w, m in zip(fleet.workers, marks, strict=True)
        ]

    chaos.send(ids, times=2)  # two copies of each, back to back: the two workers race
    chaos.wait_until(
        lambda: chaos.statuses(ids)[Status.SUCCEEDED] == len(ids),
        timeout=60,
        message="every call to succeed",
    )
    chaos.wait_until(lambda: sum(ran()) >= 2 * len(ids), message="every copy to be taken")
    chaos.settle(ids)

    per_worker = ran()
    report = chaos.check("two workers racing", ids, tasks_per_worker=min(per_worker))
    assert all(n > 0 for n in per_worker), f"one worker never ran a task: {per_worker}"
    # Each call was claimed once: the other copy found it taken and did nothing.
    assert set(ToolCall.objects.filter(pk__in=ids).values_list("attempts", "fence")) == {(1, 1)}
    assert report.deliveries == len(ids)


KILL_MOMENTS = {
    # Held at the top of the handler: claimed, intent committed, nothing sent.
    "before the handler": ("send_email", Point.HANDLER_START),
    # Held inside the payments API, which goes on and refunds after the worker died.
    "during the handler": ("issue_refund", Point.BEFORE_EFFECT),
    # The e-mail is sent and committed; the result never reaches the database.
    "after the effect": ("send_email", Point.AFTER_EFFECT),
}


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_kill_9_of_a_worker(
    chaos_world: World, fleet: Fleet, tmp_path, settings, scale: int, moment: str
) -> None:
    # The hard guard must not stop the held handlers before the kill does.
    settings.EXECUTOR_SOFT_LIMIT_GRACE_SECONDS = 60
    all_ids: list = []
    killed: list = []
    for _ in range(scale):
        ids, in_flight = _kill_round(chaos_world, fleet, tmp_path, moment, done_before=len(all_ids))
        all_ids += ids
        killed += in_flight

    report = chaos.check(f"kill -9 {moment}", all_ids, killed_in_flight=len(killed))
    assert report.statuses == {Status.SUCCEEDED: len(all_ids)}
    assert report.counts["leases_expired"] == len(killed)
    # What the victim's queue still held was sent again, to the fleet.
    assert report.counts["resent"] >= len(all_ids) - len(killed)
    if moment == "before the handler":
        # Not found downstream, so run again with the same key; the only request that
        # reached the sink is the re-run's.
        assert report.counts["reruns"] == len(killed)
    else:
        # The effect happened; the lookup found it.
        assert report.counts.get("reruns", 0) == 0
        assert report.counts["reconciled"] == len(killed)
    assert report.deliveries == len(all_ids)


def _kill_round(
    world: World, fleet: Fleet, tmp_path, moment: str, *, done_before: int, concurrency: int = 4
) -> tuple[list, list]:
    """A victim worker takes calls from its own queue, is held at ``moment`` in each of its
    processes, and is killed with SIGKILL; the sweeps and the fleet then finish the calls."""
    tool, point = KILL_MOMENTS[moment]
    queue = chaos.queue_name("victim")
    ids = chaos.approved_calls(world, tool, 16)
    held = chaos.fault(point, tool=tool, tag="victim", hold=True)
    with chaos.victim_worker(
        fleet.server, tmp_path, queue=queue, concurrency=concurrency
    ) as victim:
        chaos.send(ids, queue=queue)
        chaos.wait_until(lambda: chaos.hits(held) == concurrency, message="the victim to hold")
        in_flight = executing(ids)
        victim.signal_group(signal.SIGKILL)  # the whole process group: parent and children
        victim.proc.wait(10)
    SandboxFault.objects.update(hold=False)
    assert len(in_flight) == concurrency
    if moment == "during the handler":
        # The provider finishes the dead worker's refunds on its own.
        chaos.wait_until(
            lambda: Effect.objects.filter(tool=tool).count() == done_before + concurrency,
            message="the payments API to finish the orphaned refunds",
        )
    # Nothing else touched them: no result, and no lease expiry until the sweeps run.
    assert sorted(executing(ids)) == sorted(in_flight)
    chaos.settle(ids)  # re-send what the victim's queue still holds, expire, reconcile
    chaos.purge(queue)
    return ids, in_flight


def test_a_worker_paused_past_its_lease_is_fenced_off_when_it_resumes(
    chaos_world: World, fleet: Fleet, tmp_path, settings, scale: int
) -> None:
    settings.EXECUTOR_SOFT_LIMIT_GRACE_SECONDS = 60
    all_ids: list = []
    before_effect: list = []
    after_effect: list = []
    for _ in range(scale):
        ids, zombies, applied = _pause_round(chaos_world, fleet, tmp_path)
        all_ids += ids
        before_effect += [z for z in zombies if f"countersign-{z}" not in applied]
        after_effect += [z for z in zombies if f"countersign-{z}" in applied]

    report = chaos.check(
        "SIGSTOP past the lease, then SIGCONT",
        all_ids,
        paused_before_effect=len(before_effect),
        paused_after_effect=len(after_effect),
    )
    assert report.statuses == {Status.SUCCEEDED: len(all_ids)}
    assert len(before_effect) == len(after_effect) == 2 * scale
    assert report.counts["stale_results_refused"] == len(before_effect) + len(after_effect)
    deliveries = dict(Effect.objects.values_list("idempotency_key", "deliveries"))
    # Woken up before its effect: its request reached the sink after the re-run's, and the
    # sink refused it (two requests, one effect).
    assert {deliveries[f"countersign-{z}"] for z in before_effect} == {2}
    assert {deliveries[f"countersign-{z}"] for z in after_effect} == {1}
    assert report.counts["reruns"] == len(before_effect)


def _pause_round(world: World, fleet: Fleet, tmp_path) -> tuple[list, list, set]:
    """A victim holds two calls before their effect and two after it, is paused with
    SIGSTOP past the leases, its calls are taken over and finished, then it resumes."""
    queue = chaos.queue_name("victim")
    ids = chaos.approved_calls(world, "send_email", 16)
    early = chaos.fault(Point.HANDLER_START, tag="victim", hold=True, remaining=2)
    late = chaos.fault(Point.AFTER_EFFECT, tag="victim", hold=True, remaining=2)
    with chaos.victim_worker(fleet.server, tmp_path, queue=queue) as victim:
        chaos.send(ids, queue=queue)
        chaos.wait_until(lambda: chaos.hits(early, late) == 4, message="the victim to hold")
        zombies = executing(ids)
        applied = set(
            Effect.objects.filter(
                idempotency_key__in=[f"countersign-{z}" for z in zombies]
            ).values_list("idempotency_key", flat=True)
        )
        victim.signal_group(signal.SIGSTOP)
        try:
            SandboxFault.objects.update(hold=False)  # they see it when they wake up
            leases = ToolCall.objects.filter(pk__in=zombies).values_list("lease_until", flat=True)
            time.sleep(max(0.0, (max(leases) - timezone.now()).total_seconds()) + 0.2)
            chaos.settle(ids)  # the paused worker's calls are taken over and finished
        finally:
            victim.signal_group(signal.SIGCONT)
        chaos.wait_until(
            lambda: audited("call.stale_result_discarded", zombies) == len(zombies),
            message="the resumed worker's late results to be refused",
        )
    chaos.purge(queue)
    return ids, zombies, applied


def test_redis_restarted_with_tasks_queued(
    chaos_world: World, fleet: Fleet, tmp_path, settings, scale: int
) -> None:
    settings.EXECUTOR_SOFT_LIMIT_GRACE_SECONDS = 60  # the held tasks wait out the restart
    port = chaos.free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    queue = chaos.queue_name("redis")
    ids = chaos.approved_calls(chaos_world, "send_email", 40 * scale)
    held = chaos.fault(Point.HANDLER_START, tag="redis", hold=True, remaining=2)
    env = chaos.chaos_worker_env(fleet.server, tag="redis", REDIS_URL=broker, CELERY_QUEUE=queue)

    with (
        chaos.redis_server(port, tmp_path) as restart,
        running_worker(concurrency=2, tmp_path=tmp_path, env=env),
    ):
        with Connection(broker) as conn:
            producer = conn.Producer()
            for call_id in ids:
                execute_call.apply_async(
                    (str(call_id),), queue=queue, producer=producer, **send.time_limits(call_id)
                )
        chaos.wait_until(lambda: chaos.hits(held) == 2, message="two tasks to start")
        queued = redis.Redis.from_url(broker).llen(queue)
        assert queued == len(ids) - 2

        restart()  # a crash without persistence: every queued and unacknowledged message is gone
        assert redis.Redis.from_url(broker).llen(queue) == 0
        SandboxFault.objects.update(hold=False)

        # The beat side, on the restarted broker: `manage.py run_sweeps --loop`.
        sweeper = subprocess.Popen(
            [sys.executable, "manage.py", "run_sweeps", "--loop", "0.5"],
            cwd=ROOT,
            env=worker_env(
                REDIS_URL=broker,
                CELERY_QUEUE=queue,
                EXECUTOR_RESEND_AFTER_SECONDS="3",
                SANDBOX_PAYMENTS_URL=fleet.server.payments_url,
                AUDIT_ANCHOR_PATH=str(tmp_path / "anchor.jsonl"),
            ),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "sweeper.log").open("wb"),
            start_new_session=True,
        )
        try:
            chaos.wait_until(lambda: chaos.settled(ids), timeout=60, message="every call to settle")
        finally:
            os.killpg(sweeper.pid, signal.SIGTERM)
            sweeper.wait(10)

    report = chaos.check(
        "redis restarted with tasks queued",
        ids,
        anchor_path=tmp_path / "anchor.jsonl",
        lost_messages=queued,
    )
    assert report.statuses == {Status.SUCCEEDED: len(ids)}
    assert report.counts["resent"] >= queued
    assert report.deliveries == len(ids)


def test_the_web_process_dying_between_commit_and_send(chaos_world: World, scale: int) -> None:
    ids = [pending_call(chaos_world).pk for _ in range(40 * scale)]
    # A real process approves the calls, commits, and is killed by the first on-commit
    # callback, before any of the sends registered after it could run.
    script = (
        "import os, signal\n"
        "from django.contrib.auth.models import User\n"
        "from django.db import transaction\n"
        "from approvals.services.decisions import decide\n"
        "bob = User.objects.get(username='bob')\n"
        "with transaction.atomic():\n"
        "    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))\n"
        "    for call_id in os.environ['CALL_IDS'].split(','):\n"
        "        decide(call_id=call_id, reviewer=bob, verdict='approve')\n"
    )
    web = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=worker_env(CALL_IDS=",".join(str(i) for i in ids)),
        capture_output=True,
        timeout=60,
    )
    assert web.returncode == -signal.SIGKILL, web.stderr.decode()[-2000:]
    time.sleep(1.0)  # the fleet is idle: had anything been sent, it would have run by now
    assert chaos.statuses(ids) == {Status.APPROVED: len(ids)}

    chaos.settle(ids)

    report = chaos.check("web process died between commit and send", ids)
    assert report.statuses == {Status.SUCCEEDED: len(ids)}
    assert report.counts["resent"] >= len(ids)
    assert report.deliveries == len(ids)


def test_a_handler_timing_out_after_its_effect_is_reconciled_to_succeeded(
    chaos_world: World, scale: int
) -> None:
    n = 6 * scale
    # The mail system hangs after sending: Celery's soft time limit stops the handler.
    chaos.fault(Point.AFTER_EFFECT, tool="send_email", delay_seconds=30, remaining=n)
    # The payments API refunds, then answers after the client's timeout.
    chaos.fault(Point.AFTER_EFFECT, tool="issue_refund", delay_seconds=3, remaining=n)
    ids = chaos.approved_calls(chaos_world, "send_email", 2 * n)
    ids += chaos.approved_calls(chaos_world, "issue_refund", 2 * n)

    chaos.send(ids)
    chaos.settle(ids, timeout=90)

    timed_out = AuditEvent.objects.filter(
        call_id__in=ids, action="call.execution_finished", outcome=Status.UNKNOWN
    ).count()
    report = chaos.check("handler timed out after the effect", ids, timed_out=timed_out)
    assert timed_out == 2 * n
    assert report.statuses == {Status.SUCCEEDED: len(ids)}
    assert report.counts["reconciled"] == 2 * n
    assert report.counts.get("reruns", 0) == 0
    assert report.deliveries == len(ids)


def test_a_slow_payments_api_moves_each_refund_once(
    chaos_world: World, settings, scale: int
) -> None:
    settings.EXECUTOR_AUTO_RERUNS = 6
    # Up to 0.9 s before and 0.9 s after the refund, against the tool's 1 s timeout: some
    # answers arrive in time, some after the refund, some before it was made.
    chaos.fault(Point.BEFORE_EFFECT, tool="issue_refund", delay_seconds=0.9, random_delay=True)
    chaos.fault(Point.AFTER_EFFECT, tool="issue_refund", delay_seconds=0.9, random_delay=True)
    ids = chaos.approved_calls(chaos_world, "issue_refund", 24 * scale)
    refunded_before = Payment.objects.get(payment_id="pay_chaos").refunded_cents

    chaos.send(ids)
    chaos.settle(ids, timeout=120)

    timed_out = AuditEvent.objects.filter(
        call_id__in=ids, action="call.execution_finished", outcome=Status.UNKNOWN
    ).count()
    report = chaos.check("slow payments API", ids, timed_out=timed_out)
    succeeded = report.statuses.get(Status.SUCCEEDED, 0)
    # The provider's own ledger: one cent per refund that took effect, and not one more.
    refunded = Payment.objects.get(payment_id="pay_chaos").refunded_cents - refunded_before
    assert refunded == report.effects == succeeded
