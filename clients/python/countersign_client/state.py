"""Where the client keeps each step's Idempotency-Key: written before the request is sent.

A step is one tool call within a session (one run of your task). Its key is created and
made durable *before* the request goes out, so an agent that crashes after sending and is
run again with the same session finds the key and sends the same request with it:
Countersign answers with the call it already has instead of making a second one.

``DirectoryState`` keeps one JSON file per session in a directory, replaced atomically
(write, fsync, rename): a crash never leaves one half written, and sessions running in
separate processes never write the same file. ``MemoryState`` keeps nothing past the
process (tests, or agents that accept a repeat after a crash).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any


class StateStore:
    """Steps of sessions, by name: ``{"key": ..., "request": ..., "call_id": ...,
    "status": ...}`` (``request``: the fingerprint of the request sent with the key)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, dict[str, Any]]] = {}

    def step(self, session_id: str, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._steps(session_id).get(name, {}))

    def steps(self, session_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._steps(session_id).items()}

    def key_for(self, session_id: str, name: str, *, request: str = "") -> str:
        """The step's Idempotency-Key, created and made durable on first use, with
        ``request`` (the fingerprint of what the step asks) beside it."""
        with self._lock:
            entry = self._steps(session_id).setdefault(name, {})
            if not entry.get("key"):
                entry["key"] = str(uuid.uuid4())
                if request:
                    entry["request"] = request
                self._write(session_id)
            return str(entry["key"])

    def new_key(self, session_id: str, name: str) -> str:
        """Replace the step's key (a read that failed transiently is asked again afresh:
        the same request, whose fingerprint it keeps)."""
        with self._lock:
            old = self._steps(session_id).get(name, {})
            entry = {"key": str(uuid.uuid4())}
            if old.get("request"):
                entry["request"] = old["request"]
            self._steps(session_id)[name] = entry
            self._write(session_id)
            return entry["key"]

    def update(self, session_id: str, name: str, **values: Any) -> None:
        with self._lock:
            self._steps(session_id).setdefault(name, {}).update(values)
            self._write(session_id)

    def forget(self, session_id: str) -> None:
        """Drop a finished session's steps."""
        with self._lock:
            self._sessions.pop(session_id, None)
            self._remove(session_id)

    def _steps(self, session_id: str) -> dict[str, dict[str, Any]]:
        if session_id not in self._sessions:
            self._sessions[session_id] = self._load(session_id)
        return self._sessions[session_id]

    def _load(self, session_id: str) -> dict[str, dict[str, Any]]:
        return {}

    def _write(self, session_id: str) -> None:
        return None

    def _remove(self, session_id: str) -> None:
        return None


class MemoryState(StateStore):
    """Keys kept in memory only: enough for one process, not for a restart."""


class DirectoryState(StateStore):
    """One JSON file per session under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]):
        super().__init__()
        self.directory = Path(directory)

    def path(self, session_id: str) -> Path:
        # Readable where the id is, unique by its hash whatever it holds.
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id)[:64]
        digest = hashlib.sha256(session_id.encode()).hexdigest()[:16]
        return self.directory / f"{safe}-{digest}.json"

    def _load(self, session_id: str) -> dict[str, dict[str, Any]]:
        path = self.path(session_id)
        if not path.exists():
            return {}
        loaded = json.loads(path.read_text() or "{}")
        return dict(loaded.get("steps", {}))

    def _write(self, session_id: str) -> None:
        path = self.path(session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(
            {"session_id": session_id, "steps": self._sessions[session_id]},
            indent=1,
            sort_keys=True,
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _remove(self, session_id: str) -> None:
        self.path(session_id).unlink(missing_ok=True)


def default_state() -> StateStore:
    """``$COUNTERSIGN_STATE_DIR``, else ``.countersign`` in the working directory."""
    return DirectoryState(os.environ.get("COUNTERSIGN_STATE_DIR") or ".countersign")
