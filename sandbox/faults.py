"""Fault injection in the sandbox systems: make them slow, or hang before or after applying
an effect, so that tests can kill, pause or time out the executor at a known point.

Faults are rows (``SandboxFault``); the checkpoints below read them only when the
``SANDBOX_FAULTS`` setting is on, so production and the benchmarks pay nothing.
"""

from __future__ import annotations

import random
import time

from django.conf import settings
from django.db import connection
from django.db.models import F, Q

from sandbox.models import SandboxFault

Point = SandboxFault.Point
# How often a held process looks whether its fault was released.
HOLD_POLL_SECONDS = 0.05
# Name of the header that carries the caller's tag to the payments API.
TAG_HEADER = "X-Sandbox-Fault-Tag"


def current_tag() -> str:
    return settings.SANDBOX_FAULT_TAG


def checkpoint(*, tool: str, point: str, tag: str | None = None) -> None:
    """Act out every active fault that matches this tool, point and tag.

    Must be called outside any transaction: the hit is committed before the wait, so a
    test polling ``hits`` knows the process is at the point.
    """
    if not settings.SANDBOX_FAULTS:
        return
    if connection.in_atomic_block:
        raise RuntimeError("sandbox fault checkpoints run outside transactions")
    tag = current_tag() if tag is None else tag
    faults = SandboxFault.objects.filter(
        Q(tool="") | Q(tool=tool),
        Q(tag="") | Q(tag=tag),
        Q(remaining__isnull=True) | Q(remaining__gt=0),
        point=point,
    )
    for fault in list(faults):
        if fault.remaining is not None:
            # Take one strike, conditionally: concurrent callers never overdraw the count.
            taken = SandboxFault.objects.filter(pk=fault.pk, remaining__gt=0).update(
                remaining=F("remaining") - 1, hits=F("hits") + 1
            )
            if not taken:
                continue
        else:
            SandboxFault.objects.filter(pk=fault.pk).update(hits=F("hits") + 1)
        _act(fault)


def _act(fault: SandboxFault) -> None:
    delay = fault.delay_seconds
    if fault.random_delay:
        delay = random.uniform(0, delay)
    if not fault.hold:
        if delay > 0:
            time.sleep(delay)
        return
    deadline = time.monotonic() + (delay if delay > 0 else 3600)
    while time.monotonic() < deadline:
        if not SandboxFault.objects.filter(pk=fault.pk, hold=True).exists():
            return
        time.sleep(HOLD_POLL_SECONDS)


def release(**filters: object) -> int:
    """Let every process held by the matching faults go on."""
    return SandboxFault.objects.filter(hold=True, **filters).update(hold=False)
