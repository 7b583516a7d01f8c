"""verify_audit over N sealed events (default 1,000,000) against COPY reading the same rows.

    python bench/bench_audit_verify.py [--events 1000000]

Aim: the walk takes at most 3x the time PostgreSQL's COPY takes to hand the same columns,
in the same order, to a client. Runs in its own database, dropped at the end.
"""

from __future__ import annotations

import argparse
import resource
import time

from _audit_bench import (
    bench_database,
    best_of,
    copy_read_seconds,
    load_sealed_events,
    setup_django,
)

COLUMNS = (
    "seq, prev_hash, hash, id, occurred_at, action, outcome, actor_type, actor_id, actor_label, "
    "agent_name, tool_name, session_id, call_id, data"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    options = parser.parse_args()
    with bench_database():
        setup_django()
        from audit.verify import verify_chain

        loaded = load_sealed_events(options.events)
        print(f"loaded {options.events:,} sealed events in {loaded:.1f} s")
        sql = f"SELECT {COLUMNS} FROM audit_auditevent WHERE seq IS NOT NULL ORDER BY seq"  # noqa: S608

        def copy_run() -> tuple[float, int]:
            return copy_read_seconds(sql)

        def verify_run() -> tuple[float, object]:
            started = time.perf_counter()
            result = verify_chain()
            return time.perf_counter() - started, result

        copy_read_seconds(sql)  # warm the cache for both
        copy_seconds, copy_bytes = best_of(2, copy_run)
        verify_seconds, result = best_of(2, verify_run)
        assert result.ok and result.checked == options.events, result  # type: ignore[attr-defined]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"COPY of the same rows: {copy_seconds:.2f} s ({copy_bytes / 1e6:.0f} MB, "
            f"{options.events / copy_seconds:,.0f} rows/s)"
        )
        print(
            f"verify_chain:          {verify_seconds:.2f} s ({options.events / verify_seconds:,.0f} events/s), "
            f"peak RSS of this process {peak_mb:.0f} MB"
        )
        ratio = verify_seconds / copy_seconds
        print(
            f"verify / COPY = {ratio:.2f}x (aim: at most 3x) -> {'OK' if ratio <= 3 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
