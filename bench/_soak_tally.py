"""The soak's count (``bench/soak.py``), made once every worker has stopped: effects read
from the sinks' own records (the sandbox's tables, the upstream test servers' logs),
matched to calls by the marker in their arguments, never by the call rows' own word.

* an effect: one row of a sink (an e-mail sent, a refund made, an order placed, an entry
  or a note written) carrying a soak call's marker;
* a duplicate: a second (third...) effect for one call's marker;
* lost: an approved call that is neither terminal nor escalated to a person, with no
  effect;
* unknown, resolved, escalated: calls whose outcome became unknown (a lease expired, a
  handler timed out), settled by the product's reconciliation, or escalated to a person.
  The soak then plays that person: it checks the sink's records and marks the outcome
  through the attention service, as the *Needs attention* page would.

Anything else that breaks the protocol fails the run too: an effect no call asked for, or
under another key than its call's, or earlier than its approval and intent event; a call
that succeeded with no effect, or failed with one; an audit chain that does not verify.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from approvals.models import Status, ToolCall
from approvals.services.attention import resolve_call
from audit import chain
from audit.models import AuditEvent
from audit.verify import verify_chain
from bench._soak_calls import MARKER_PREFIX, SINKS, SoakWorld, kind_of
from sandbox.models import Effect, OutboxMessage, Refund
from tests.support import chaos
from tests.support.web import WebProcess

KINDS = (
    "none",
    "duplicate",
    "web_kill",
    "redis_restart",
    "kill_before",
    "kill_during",
    "kill_after",
    "sigstop",
    "timeout_after",
    "slow",
)
TERMINAL = (Status.SUCCEEDED, Status.FAILED)
PERSON_NOTE = "Checked the downstream's own records (the soak, acting as the person on call)."


@dataclass(frozen=True)
class SinkEffect:
    sink: str
    marker: str
    key: str
    at: datetime | None


@dataclass
class Row:
    calls: int = 0
    effects: int = 0
    duplicates: int = 0
    lost: int = 0
    unknown: int = 0
    resolved: int = 0
    escalated: int = 0
    reruns: int = 0
    resent: int = 0
    stale: int = 0
    in_flight: int = 0
    requests: int = 0

    def add(self, other: Row) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Tally:
    by_kind: dict[str, Row] = field(default_factory=lambda: defaultdict(Row))
    by_sink: dict[str, Row] = field(default_factory=lambda: defaultdict(Row))
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    person_marked: Counter[str] = field(default_factory=Counter)
    chain_ok: bool = True
    chain_reason: str = ""

    def problem(self, what: str, example: str) -> None:
        self.problems[what] += 1
        self.examples.setdefault(what, example)

    @property
    def total(self) -> Row:
        row = Row()
        for r in self.by_kind.values():
            row.add(r)
        return row


def sink_effects(http: WebProcess, mcp: WebProcess) -> tuple[list[SinkEffect], Counter[str]]:
    """Every effect the sinks applied with a soak marker, and the requests each key brought."""
    effects: list[SinkEffect] = []
    requests: Counter[str] = Counter()
    for m in OutboxMessage.objects.filter(subject__startswith=MARKER_PREFIX).values_list(
        "subject", "idempotency_key", "sent_at"
    ):
        effects.append(SinkEffect("email", *m))
    for r in Refund.objects.filter(reason__startswith=MARKER_PREFIX).values_list(
        "reason", "idempotency_key", "created_at"
    ):
        effects.append(SinkEffect("refund", *r))
    for key, deliveries in Effect.objects.filter(
        tool__in=["send_email", "issue_refund"]
    ).values_list("idempotency_key", "deliveries"):
        requests[key] += deliveries
    orders = httpx.get(f"{http.url}/_effects", timeout=30).json()
    for key, placed in orders["placed"].items():
        for _ in range(orders["effects"].get(key, 0)):
            effects.append(SinkEffect("order", placed["item"], key, _when(placed["at"])))
    requests.update(orders["requests"])
    log = httpx.get(f"{mcp.url}/_effects", timeout=30).json()
    for key, entry in log["entries"].items():
        effects.append(SinkEffect("entry", entry["text"], key, _when(entry["at"])))
    for note, at in zip(log["notes"], log["notes_at"], strict=True):
        effects.append(SinkEffect("note", note["text"], note["key"] or "", _when(at)))
    requests.update(log["requests"])
    return [e for e in effects if e.marker.startswith(MARKER_PREFIX)], requests


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def resolve_escalated(world: SoakWorld, effects: list[SinkEffect]) -> Counter[str]:
    """The person on call: each escalated call is marked as the sink's records say."""
    applied = {e.marker for e in effects}
    marked: Counter[str] = Counter()
    waiting = ToolCall.objects.filter(
        agent=world.agent, status=Status.UNKNOWN, needs_attention=True
    ).select_related("tool")
    for call in waiting:
        outcome = Status.SUCCEEDED if _marker(call) in applied else Status.FAILED
        resolve_call(call_id=call.pk, person=world.reviewer, outcome=outcome, note=PERSON_NOTE)
        marked[outcome] += 1
    return marked


def _marker(call: ToolCall) -> str:
    sink = next(s for s in SINKS.values() if s.tool == call.tool.name)
    return str(call.arguments.get(sink.field, ""))


def count(
    world: SoakWorld,
    effects: list[SinkEffect],
    requests: Counter[str],
    in_flight: dict[str, int],
    anchor_path: Path,
) -> Tally:
    tally = Tally()
    sink_of_tool = {s.tool: name for name, s in SINKS.items()}
    calls = list(
        ToolCall.objects.filter(agent=world.agent, session_id__startswith="soak-").select_related(
            "tool"
        )
    )
    by_marker = {_marker(c): c for c in calls}
    per_marker: dict[str, list[SinkEffect]] = defaultdict(list)
    for e in effects:
        per_marker[e.marker].append(e)
        if e.marker not in by_marker:
            tally.problem("effects no call asked for", e.marker)

    audit: dict[Any, Counter[str]] = defaultdict(Counter)
    for call_id, action, outcome in AuditEvent.objects.filter(
        call_id__isnull=False,
        action__in=[
            "call.lease_expired",
            "call.execution_finished",
            "call.escalated",
            "call.resolved",
            "call.rerun",
            "call.execution_resent",
            "call.stale_result_discarded",
        ],
    ).values_list("call_id", "action", "outcome"):
        audit[call_id][action] += 1
        if action == "call.execution_finished" and outcome == Status.UNKNOWN:
            audit[call_id]["finished_unknown"] += 1
    marks = chaos._audit_marks(calls)  # when each call was approved, and its first intent
    results = dict(
        Effect.objects.filter(tool__in=["send_email", "issue_refund"]).values_list(
            "idempotency_key", "summary"
        )
    )

    for call in calls:
        m = _marker(call)
        sink = sink_of_tool[call.tool.name]
        kind = kind_of(m)
        applied = per_marker.get(m, [])
        seen = audit[call.pk]
        row = Row(
            calls=1,
            effects=len(applied),
            duplicates=max(0, len(applied) - 1),
            reruns=seen["call.rerun"],
            resent=seen["call.execution_resent"],
            stale=seen["call.stale_result_discarded"],
            requests=requests.get(call.execution_key, 0),
        )
        terminal = call.status in TERMINAL
        escalated = call.status == Status.UNKNOWN and call.needs_attention
        went_unknown = bool(seen["call.lease_expired"] or seen["finished_unknown"])
        row.unknown = int(went_unknown)
        row.escalated = int(bool(seen["call.escalated"]))
        row.resolved = int(went_unknown and terminal and not seen["call.resolved"])
        if not terminal and not escalated and not applied:
            row.lost = 1
            tally.problem("lost", f"{call.pk} ({kind}, {sink}) is {call.status}")
        elif not terminal and not escalated:
            tally.problem("not settled", f"{call.pk} ({kind}, {sink}) is {call.status}")
        if row.duplicates:
            tally.problem("duplicates", f"{call.pk} ({kind}, {sink}): {len(applied)} effects")
        if call.status == Status.SUCCEEDED and not applied:
            tally.problem("succeeded without an effect", f"{call.pk} ({kind}, {sink})")
        if call.status == Status.FAILED and applied:
            tally.problem("failed, but took effect", f"{call.pk} ({kind}, {sink})")
        approved_at, first_intent = marks.get(call.pk, (None, None))
        for e in applied:
            if e.key != call.execution_key:
                tally.problem("effects under another key", f"{call.pk}: {e.key}")
            if e.at is not None and not (
                approved_at is not None
                and first_intent is not None
                and approved_at <= first_intent < e.at
            ):
                tally.problem(
                    "effects before their approval and intent event",
                    f"{call.pk}: approved {approved_at}, intent {first_intent}, effect {e.at}",
                )
        if (
            call.status == Status.SUCCEEDED
            and SINKS[sink].code
            and not seen["call.resolved"]
            and call.execution_key in results
            and call.result != results[call.execution_key].get("result")
        ):
            tally.problem("results that differ from the effect", str(call.pk))
        tally.by_kind[kind].add(row)
        tally.by_sink[sink].add(row)
    for kind, n in in_flight.items():
        tally.by_kind[kind].in_flight += n

    chain.seal_pending()
    verification = verify_chain(anchor_path=anchor_path)
    tally.chain_ok, tally.chain_reason = verification.ok, verification.reason or ""
    if not verification.ok:
        tally.problem("audit chain broken", tally.chain_reason)
    return tally


COLUMNS = (
    ("calls", "calls"),
    ("effects", "effects"),
    ("duplicates", "dups"),
    ("lost", "lost"),
    ("unknown", "unknown"),
    ("resolved", "resolved"),
    ("escalated", "escalated"),
    ("reruns", "reruns"),
    ("resent", "resent"),
    ("stale", "stale"),
    ("in_flight", "in-flight"),
    ("requests", "requests"),
)


def table(title: str, rows: dict[str, Row], order: tuple[str, ...], total: Row) -> list[str]:
    width = max(len(title), *(len(k) for k in order), 5)
    head = f"{title:<{width}} " + " ".join(f"{label:>9}" for _, label in COLUMNS)
    lines = [head, "-" * len(head)]
    for name in [*order, "total"]:
        row = total if name == "total" else rows.get(name)
        if row is None:
            continue
        lines.append(
            f"{name:<{width}} " + " ".join(f"{getattr(row, attr):>9}" for attr, _ in COLUMNS)
        )
    return lines
