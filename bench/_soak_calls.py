"""The soak's calls (``bench/soak.py``): the sinks they act on, the label each carries, how
one is made and approved through the product's services, and the two roles the soak runs
in processes of their own:

* ``produce``: the steady stream of calls, approved and sent on commit as a web process
  does; a share of them is then delivered again (the same task sent up to three more
  times, as a duplicating broker would);
* ``web-kill``: a web process that approves a batch of calls in one transaction and is
  killed (SIGKILL) by its first on-commit callback, before any of their sends ran.

Every call carries a marker in the arguments the sink keeps (an e-mail's subject, a
refund's reason, an order's item, an entry's or a note's text): ``soak:<fault
kind>:<origin>-<n>``. The tally counts effects per marker from the sinks' own records, so a
second effect for one call shows up even if it came with another key.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AGENT = "support-bot"  # tests.conftest.build_world's agent
REVIEWER = "bob"  # reviews every tool in that world
PAYMENT = "pay_chaos"  # tests.support.calls.ensure_refundable: room for every 1-cent refund
# Calls made for this end user are approved as they arrive by the tools' soak rule; the
# others wait for bob, who approves them through the decision service.
AUTO_USER = "soak-auto"
AUTO_RULE = {
    "when": f'user.id == "{AUTO_USER}"',
    "then": "approve",
    "note": "The soak's calls approve themselves; a fifth of them go to a reviewer instead.",
}
MARKER_PREFIX = "soak:"


@dataclass(frozen=True)
class Sink:
    tool: str
    field: str  # the argument that carries the marker, kept by the sink
    arguments: Callable[[str], dict[str, Any]]
    code: bool  # a handler in code (the sandbox); else an imported upstream tool


SINKS: dict[str, Sink] = {
    # The sandbox mail system, in the worker's process (sandbox.effects).
    "email": Sink(
        "send_email",
        "subject",
        lambda m: {"to": "soak@example.com", "subject": m, "body": "Soak."},
        code=True,
    ),
    # The sandbox payments API over HTTP (gunicorn), one refund per Idempotency-Key.
    "refund": Sink(
        "issue_refund",
        "reason",
        lambda m: {"payment_id": PAYMENT, "amount_cents": 1, "currency": "usd", "reason": m},
        code=True,
    ),
    # An HTTP API imported from its OpenAPI document; honours Idempotency-Key, no lookup.
    "order": Sink("orders__create_order", "item", lambda m: {"item": m, "quantity": 1}, code=False),
    # An MCP server's tool that honours the key in _meta (registered --rerunnable).
    "entry": Sink("notes__add_entry", "text", lambda m: {"text": m}, code=False),
    # An MCP server's tool that does not: every request is a note. Never re-run by itself;
    # an unknown outcome goes to a person.
    "note": Sink("journal__write_note", "text", lambda m: {"text": m}, code=False),
}
# The mix, in the order calls cycle through it: e-mail 3, refund 2, order 2, entry 2, note 1.
PATTERN = (
    "email",
    "refund",
    "order",
    "entry",
    "email",
    "note",
    "order",
    "refund",
    "entry",
    "email",
)


def marker(kind: str, origin: str, n: int) -> str:
    return f"{MARKER_PREFIX}{kind}:{origin}-{n}"


def kind_of(marker_text: str) -> str:
    return marker_text.split(":")[1]


def sinks_cycle(allowed: tuple[str, ...] | None = None) -> itertools.cycle[str]:
    return itertools.cycle([s for s in PATTERN if allowed is None or s in allowed])


@dataclass
class SoakWorld:
    """The agent, the reviewer and the tools, as the soak's set-up left them."""

    agent: Any
    reviewer: Any
    tools: dict[str, Any]

    @classmethod
    def load(cls) -> SoakWorld:
        from django.contrib.auth.models import User

        from tools_registry.models import Agent, Tool

        names = [s.tool for s in SINKS.values()]
        return cls(
            agent=Agent.objects.get(name=AGENT),
            reviewer=User.objects.get(username=REVIEWER),
            tools={t.name: t for t in Tool.objects.filter(name__in=names)},
        )


@dataclass(frozen=True)
class Made:
    """A call the soak made: its id, sink and marker."""

    call_id: uuid.UUID
    sink: str
    marker: str

    @property
    def key(self) -> str:
        return f"countersign-{self.call_id}"


def make_call(world: SoakWorld, sink: str, text: str, *, kind: str, by_person: bool) -> Made:
    """A call approved through the product: by the tool's soak rule as it arrives, or by bob
    through the decision service. Its task is sent when the approval commits (unless the
    caller holds the sends back, as the soak's driver does to route them itself)."""
    from approvals.services.calls import create_call
    from approvals.services.decisions import decide

    spec = SINKS[sink]
    call = create_call(
        agent=world.agent,
        tool=world.tools[spec.tool],
        arguments=spec.arguments(text),
        session_id=f"soak-{kind}",
        request_key=uuid.uuid4().hex,
        on_behalf_of="" if by_person else AUTO_USER,
        reasoning="The soak asked for it.",
    )
    if by_person:
        decide(call_id=call.pk, reviewer=world.reviewer, verdict="approve")
    return Made(call_id=call.pk, sink=sink, marker=text)


def by_person(n: int) -> bool:
    return n % 5 == 0


# --- The roles run as processes of their own --------------------------------------------


def produce(*, origin: str, none: int, duplicate: int, queue_limit: int) -> None:
    """Make ``none + duplicate`` calls, spread evenly; send each duplicate's task again
    1-3 times right after its approval's own send. Keeps the main queue under
    ``queue_limit`` messages, as a steady agent load would."""
    import redis
    from django.conf import settings

    from tests.support import chaos

    world = SoakWorld.load()
    total = none + duplicate
    sinks = sinks_cycle()
    made_duplicates = 0
    extra_sent = 0
    for n in range(total):
        # Even spread: the n-th call is a duplicate when the running share falls behind.
        dup = made_duplicates < duplicate and (n + 1) * duplicate >= (made_duplicates + 1) * total
        kind = "duplicate" if dup else "none"
        made = make_call(
            world, next(sinks), marker(kind, origin, n), kind=kind, by_person=by_person(n)
        )
        if dup:
            made_duplicates += 1
            try:
                extra_sent += chaos.send([made.call_id], times=1 + n % 3)
            except Exception as exc:  # a broker restart: the copies are lost, nothing else
                print(f"{origin}: duplicate copies of {made.call_id} not sent: {exc!r}")
        while True:
            try:
                if chaos.queue_length(settings.CELERY_TASK_DEFAULT_QUEUE) < queue_limit:
                    break
            except redis.RedisError:
                pass
            time.sleep(0.1)
        if n % 250 == 0:
            print(f"{origin}: {n}/{total} calls", flush=True)
    print(f"{origin}: done, {total} calls, {extra_sent} extra copies sent", flush=True)


def web_kill(*, origin: str, count: int) -> None:
    """Approve ``count`` calls in one transaction; the first on-commit callback kills this
    process, so none of the sends registered after it runs: every call stays ``approved``
    with no message anywhere, for the re-send sweep to find."""
    from django.db import transaction

    world = SoakWorld.load()
    sinks = sinks_cycle()
    with transaction.atomic():
        transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
        for n in range(count):
            make_call(
                world,
                next(sinks),
                marker("web_kill", origin, n),
                kind="web_kill",
                by_person=by_person(n),
            )
    raise SystemExit("the on-commit kill did not happen")
