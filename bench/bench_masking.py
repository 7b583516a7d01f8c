"""mask_value on typical audit payloads: the masking of issue 15 against the one before it
(bench/_masking_before.py, the same code as audit/masking.py had) and against a plain JSON
round trip, all measured in this run, in this process.

    python bench/bench_masking.py [--seconds 2] [--repeats 5]

Masking runs on every audit event (``audit.log.record()``), every log record and every
reviewer page, so its cost per event is what matters. Each payload kind is timed alone
(best of ``--repeats`` rounds of about ``--seconds`` each) and then the mix, in the
proportions a call's events come in. No database is touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from _audit_bench import event_data, setup_django


def submitted(n: int) -> dict[str, Any]:
    """A write call as an agent proposes it: arguments with an e-mail address, reasoning."""
    return {
        "arguments": {
            "to": f"customer{n}@example.com",
            "subject": f"Your refund #{n}",
            "body": f"Hello, your refund of {n % 500}.00 EUR for order 2024-{n:06d} is on its way.",
        },
        "reasoning": f"Ticket {n} asks for a confirmation of the refund sent on 2026-11-21.",
        "token_cost": {"input_tokens": 800 + n % 400, "output_tokens": 120, "usd": 0.012},
        "policy": {"version": 3, "rule": "default"},
    }


def finished(n: int) -> dict[str, Any]:
    """A read's result: a customer record with a phone number, ids and timestamps."""
    return {
        "status": "succeeded",
        "latency_ms": 41.7,
        "result": {
            "id": f"cus_{n:04d}",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": "+44 20 7946 0958",
            "created_at": "2026-11-21T21:44:00.123456+00:00",
            "request_id": "3f2a1c2b-1111-2222-3333-444455556666",
            "orders": [{"id": 1000 + n, "total": "12.50", "currency": "EUR"}],
        },
        "attempt": 1,
    }


def decision(n: int) -> dict[str, Any]:
    """A reviewer's vote: nothing to mask (the fast path everywhere)."""
    return {
        "verdict": "approve",
        "comment": "Checked against the ticket, fine.",
        "arguments_hash": hashlib.sha256(f"call-{n}".encode()).hexdigest(),
        "policy_version": 3,
        "votes": 1,
    }


PAYLOADS: dict[str, Callable[[int], dict[str, Any]]] = {
    "intent (already masked)": event_data,
    "submitted (an e-mail)": submitted,
    "finished (e-mail, phone)": finished,
    "decision (nothing)": decision,
}
# One call's events: submitted, a decision, approved + intent, finished.
MIX = ["submitted (an e-mail)", "decision (nothing)", "intent (already masked)"] * 1 + [
    "intent (already masked)",
    "finished (e-mail, phone)",
]


def per_call(function: Callable[[Any], Any], payloads: list[Any], seconds: float) -> float:
    """Seconds per payload, over whole passes through ``payloads`` for about ``seconds``."""
    rounds, started = 0, time.perf_counter()
    while True:
        for payload in payloads:
            function(payload)
        rounds += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / (rounds * len(payloads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    setup_django()
    import _masking_before as before

    from audit import masking as after

    def json_round_trip(value: Any) -> Any:
        return json.loads(json.dumps(value))

    functions = {
        "json round trip": json_round_trip,
        "before": before.mask_value,
        "after": after.mask_value,
    }
    kinds = {name: [make(n) for n in range(200)] for name, make in PAYLOADS.items()}
    kinds["mix of a call's events"] = [PAYLOADS[name](n) for n in range(40) for name in MIX]
    for payloads in kinds.values():  # warm up: caches, compiled patterns, metadata
        for function in functions.values():
            for payload in payloads[:20]:
                function(payload)

    print(f"mask_value, microseconds per payload (best of {args.repeats} x {args.seconds:g} s)")
    print(
        f"{'payload':28} {'json':>8} {'before':>8} {'after':>8} {'after/before':>13} {'after/json':>11}"
    )
    for name, payloads in kinds.items():
        best = {
            label: min(per_call(f, payloads, args.seconds) for _ in range(args.repeats)) * 1e6
            for label, f in functions.items()
        }
        print(
            f"{name:28} {best['json round trip']:8.1f} {best['before']:8.1f} {best['after']:8.1f}"
            f" {best['after'] / best['before']:12.2f}x {best['after'] / best['json round trip']:10.2f}x"
        )


if __name__ == "__main__":
    main()
