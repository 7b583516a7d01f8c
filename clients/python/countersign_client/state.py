"""The task's state file: each step's Idempotency-Key, written before the request is sent.

An agent that crashes after sending a request and restarts finds the step's key here and
sends the request again with it: Countersign answers with the first request's call instead
of creating a second one. The file is JSON, replaced atomically (write, fsync, rename), so
a crash never leaves it half written.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any


class TaskState:
    """Steps of one task, by name: ``{"key": ..., "call_id": ..., "status": ...}``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._steps: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            loaded = json.loads(self.path.read_text() or "{}")
            self._steps = dict(loaded.get("steps", {}))

    def step(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._steps.get(name, {}))

    def key_for(self, name: str) -> str:
        """The step's Idempotency-Key, created and made durable on first use."""
        with self._lock:
            entry = self._steps.setdefault(name, {})
            if not entry.get("key"):
                entry["key"] = str(uuid.uuid4())
                self._write()
            return str(entry["key"])

    def new_key(self, name: str) -> str:
        """Replace the step's key (a failed read is asked again as a new request)."""
        with self._lock:
            self._steps[name] = {"key": str(uuid.uuid4())}
            self._write()
            return str(self._steps[name]["key"])

    def update(self, name: str, **values: Any) -> None:
        with self._lock:
            self._steps.setdefault(name, {}).update(values)
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"steps": self._steps}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class MemoryState(TaskState):
    """Keys kept in memory only: enough for one process, not for a restart."""

    def __init__(self) -> None:
        self.path = Path(os.devnull)
        self._lock = threading.Lock()
        self._steps = {}

    def _write(self) -> None:
        return None
