"""Countersign's ASGI app (``config.asgi``) with Redis slow to answer the count of an
agent's waits: each place is taken at once, but its answer comes ``TAKE_SECONDS`` later, as
over a slow network. A client may then leave while its request is taking a place. Served
by ``running_web(app="tests.support.slow_waits_web:application")``."""

from __future__ import annotations

import time

from config.asgi import application
from gateway import waits

TAKE_SECONDS = 1.5

_take = waits.Places.take


def _slow_take(self: waits.Places, agent_id: int, place: str) -> bool:
    taken = _take(self, agent_id, place)
    time.sleep(TAKE_SECONDS)
    return taken


waits.Places.take = _slow_take  # type: ignore[method-assign]

__all__ = ["application"]
