"""Applying an effect at most once per idempotency key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from sandbox import faults
from sandbox.models import Effect
from tools_registry.registry import LookupResult, ToolContext

JSON = dict[str, Any]


def apply_once(*, tool: str, key: str, effect: Callable[[], JSON]) -> tuple[JSON, bool]:
    """Run ``effect`` unless one already ran with ``key``; returns (result, was_duplicate).

    The unique (tool, key) row is inserted first, in the same transaction as the effect:
    a concurrent request with the same key waits on the insert, then sees a duplicate.
    """
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = Effect.objects.create(tool=tool, idempotency_key=key)
        except IntegrityError:
            Effect.objects.filter(tool=tool, idempotency_key=key).update(
                deliveries=F("deliveries") + 1
            )
            original = Effect.objects.get(tool=tool, idempotency_key=key)
            return dict(original.summary.get("result", {})), True
        result = effect()
        record.summary = {"result": result}
        record.save(update_fields=["summary"])
        return result, False


def find(*, tool: str, key: str) -> JSON | None:
    """The result of the effect applied with ``key``, or None if there was none."""
    found = Effect.objects.filter(tool=tool, idempotency_key=key).first()
    return dict(found.summary.get("result", {})) if found else None


def deliver(*, tool: str, key: str, effect: Callable[[], JSON]) -> JSON:
    """A request reaching an in-process sandbox system: the effect once per key, with the
    fault checkpoints a real system's failures would sit at."""
    faults.checkpoint(tool=tool, point=faults.Point.BEFORE_EFFECT)
    result, _ = apply_once(tool=tool, key=key, effect=effect)
    faults.checkpoint(tool=tool, point=faults.Point.AFTER_EFFECT)
    return result


def recorded(tool: str) -> Callable[[ToolContext], LookupResult]:
    """The lookup of an in-process sandbox tool: the effect recorded under the call's key."""

    def lookup(ctx: ToolContext) -> LookupResult:
        found = find(tool=tool, key=ctx.idempotency_key)
        return LookupResult.found_with(found) if found is not None else LookupResult.not_found()

    return lookup
