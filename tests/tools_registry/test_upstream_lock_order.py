"""A resync and a switch-off lock the tools they change in the order of their ids, as every
change that locks several tools does: no deadlock with another such change. Committed (kept
apart from test_upstreams.py, whose tests share one world and roll back)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from tests.support.locks import takes_in_id_order
from tests.tools_registry.test_upstreams import _tools_named
from tools_registry.models import Tool, Upstream
from tools_registry.services.upstreams import (
    register_upstream,
    set_upstream_enabled,
    sync_upstream,
)
from tools_registry.upstreams import mcp as upstream_mcp

pytestmark = pytest.mark.django_db


def test_a_resync_locks_the_tools_it_changes_in_the_order_of_their_ids(
    transactional_db: None,
) -> None:
    """A resync locks the tools still offered and those gone in one id order, as every
    change that locks several tools does (a person deactivated: ``grants.hold_reviews_of``).
    Two batches, each in id order, held an offered tool while waiting for a gone one of a
    lower id: a deactivation holding the gone one and then asking for the offered one was a
    deadlock, and PostgreSQL aborted one of them."""
    upstream = register_upstream(name="pair", kind=Upstream.Kind.MCP, url="http://mcp.invalid/mcp")
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: upstream_mcp.offer_from(u.name, _tools_named("first", "second")),
    )
    gone = Tool.objects.get(name="pair__first")
    offered = Tool.objects.get(name="pair__second")
    assert gone.pk < offered.pk
    done: dict[str, Any] = {}

    def resync() -> None:
        done["report"] = sync_upstream(
            upstream=Upstream.objects.get(pk=upstream.pk),
            reader=lambda u: upstream_mcp.offer_from(u.name, _tools_named("second")),
        )

    takes_in_id_order(resync, lower=gone, higher=offered)
    assert done["report"].removed == ["pair__first"]


def test_switching_an_upstream_off_locks_its_tools_in_the_order_of_their_ids(
    transactional_db: None,
) -> None:
    """The switch-off takes every tool of the upstream out, as a change that locks several
    tools: in the order of their ids (``grants.hold_reviews_of``). An UPDATE of them all
    took them in the order it found them on disk, where a tool changed since lies after
    those made after it: holding that one, it waited for an older one that a deactivation
    held while waiting for it."""
    upstream = register_upstream(name="halt", kind=Upstream.Kind.MCP, url="http://mcp.invalid/mcp")
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: upstream_mcp.offer_from(u.name, _tools_named("older", "newer")),
    )
    older = Tool.objects.get(name="halt__older")
    newer = Tool.objects.get(name="halt__newer")
    assert older.pk < newer.pk
    # The older tool changed since (renamed: a new version of its row, in its indexes too),
    # its row now written after the newer's.
    Tool.objects.filter(pk=older.pk).update(name="halt__renamed")
    done: list[bool] = []

    def switch_off() -> None:
        with transaction.atomic():
            set_upstream_enabled(
                upstream=Upstream.objects.get(pk=upstream.pk), enabled=False, changed_by=None
            )
        done.append(True)

    takes_in_id_order(switch_off, lower=older, higher=newer)
    assert done == [True]
    assert not Tool.objects.filter(upstream=upstream, available=True).exists()
