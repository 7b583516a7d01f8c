"""A spy on the long-poll (``gateway.longpoll``) in this process: when a waiting request has
sat down to wait (read its call, given its database connection back), and what ended each
of its pauses: a status message (``True``) or the clock (``False``, a recheck or the
deadline). Tests wait on these events and assert on what woke a request, not on how many
seconds it took: speed belongs in bench/."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from gateway import longpoll


class LongPollSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._changed = threading.Condition()
        # Per waiting request (its thread): how each of its pauses on Redis ended.
        self._waiters: dict[int, list[bool]] = {}
        release, next_message = longpoll._release_connection, longpoll._next_message

        def spied_release() -> None:
            release()
            with self._changed:
                self._waiters.setdefault(threading.get_ident(), [])
                self._changed.notify_all()

        def spied_next_message(pubsub: Any, timeout: float, *rest: Any) -> bool:
            woken = next_message(pubsub, timeout, *rest)
            with self._changed:
                self._waiters.setdefault(threading.get_ident(), []).append(woken)
                self._changed.notify_all()
            return woken

        monkeypatch.setattr(longpoll, "_release_connection", spied_release)
        monkeypatch.setattr(longpoll, "_next_message", spied_next_message)

    def reset(self) -> None:
        with self._changed:
            self._waiters.clear()

    def wait_until_waiting(self, count: int = 1, timeout: float = 30) -> None:
        """Block until ``count`` requests sit waiting (a change after this wakes them)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._waiters) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._waiters)} of {count} long-polls sat down in {timeout}s"
                )

    @property
    def waited(self) -> bool:
        """Whether any request paused at all (one that answers at once never does)."""
        with self._changed:
            return bool(self._waiters)

    def pauses(self) -> list[list[bool]]:
        """Per waiting request, how each pause on Redis ended: True for a status message."""
        with self._changed:
            return [list(ends) for ends in self._waiters.values()]

    def woken_by_a_message(self) -> list[bool]:
        """Per waiting request: whether its last pause was ended by a status message (and
        not by the clock: a recheck or its deadline)."""
        return [bool(ends) and ends[-1] for ends in self.pauses()]
