"""Where a benchmark phase's CPU went: per task, by process kind, from the kernel's own
accounting (psutil), so a ratio comes with the reason for it.

Kinds: the benchmark's own processes under the names it gives them (its workers, its
server), each with its children; ``postgresql``
(the backends connected to the benchmark's database, and the server's own processes such as
the WAL writer, which work for whoever writes), ``redis`` (the whole server: other clients
count too), and ``driver`` (this process). A process that exits during a phase is not
counted; a ratio's two sides are measured alike, so both lose the same little.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import psutil


class CpuTally:
    def __init__(self, roots: dict[str, Iterable[int]], database: str) -> None:
        self.roots = {kind: [psutil.Process(pid) for pid in pids] for kind, pids in roots.items()}
        self.backend = re.compile(rf"\s{re.escape(database)}(\s|$)")
        self.driver = psutil.Process()

    def snapshot(self) -> dict[int, tuple[str, float]]:
        """CPU seconds so far of every process of interest, by pid, with its kind."""
        found: dict[int, tuple[str, float]] = {}
        for kind, process in self._processes():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue  # gone since it was listed
            found[process.pid] = (kind, times.user + times.system)
        return found

    def per_task(
        self, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], n: int
    ) -> dict[str, float]:
        """Milliseconds of CPU per task by kind between two snapshots."""
        spent: Counter[str] = Counter()
        for pid, (kind, seconds) in after.items():
            spent[kind] += seconds - before.get(pid, (kind, 0.0))[1]
        return {kind: spent[kind] * 1000 / n for kind in sorted(spent)}

    def _processes(self) -> Iterable[tuple[str, psutil.Process]]:
        yield "driver", self.driver
        for kind, roots in self.roots.items():
            for root in roots:
                try:
                    children = root.children(recursive=True)
                except psutil.Error:
                    continue
                yield kind, root
                for child in children:
                    yield kind, child
        for process in psutil.process_iter(["name", "cmdline"]):
            name = process.info["name"] or ""
            title = " ".join(process.info["cmdline"] or ()).rstrip()
            if name.startswith("redis-server") or title.startswith("redis-server"):
                yield "redis", process
            elif title.startswith("postgres:") and (
                self.backend.search(title) or title.endswith(SERVER_PROCESSES)
            ):
                yield "postgresql", process


# PostgreSQL's own processes (their titles end with their role), shared by every database.
SERVER_PROCESSES = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
)


def line(figures: dict[str, float]) -> str:
    return "  ".join(f"{kind} {ms:.2f}" for kind, ms in figures.items())
