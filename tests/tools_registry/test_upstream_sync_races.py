"""A sync that reads an upstream while an admin changes it, from another thread, against
PostgreSQL. Committed (kept apart from test_upstreams.py, whose tests share one world and
roll back)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client

from audit.models import AuditEvent
from tests.support.uncommitted import uncommitted
from tests.tools_registry.test_upstreams import _tools_named
from tools_registry.models import Tool, Upstream
from tools_registry.services.upstreams import register_upstream, sync_upstream, update_upstream
from tools_registry.upstreams import mcp as upstream_mcp
from tools_registry.upstreams.offers import Offer

pytestmark = pytest.mark.django_db(transaction=True)


def _moved_by_another_admin(upstream: Upstream, url: str) -> None:
    """The upstream's URL changed and committed by another request, while this one waits."""
    failures: list[BaseException] = []

    def move() -> None:
        try:
            update_upstream(
                upstream=Upstream.objects.get(pk=upstream.pk), changes={"url": url}, changed_by=None
            )
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=move)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and failures == []


def test_a_tool_imported_while_its_mcp_server_moved_is_bound_to_the_new_one() -> None:
    """A sync reads the offer outside any transaction; an admin moved the server meanwhile.
    The tools it created took their version from the upstream as the sync first read it,
    bound to the old endpoint while their calls went to the new one: the next sync, with
    nothing changed upstream, made each a new version, refusing every call approved since."""
    upstream = register_upstream(
        name="moving", kind=Upstream.Kind.MCP, url="http://old.invalid/mcp"
    )

    def read_while_moved(read: Upstream) -> Offer:
        offer = upstream_mcp.offer_from(read.name, _tools_named("first"))
        _moved_by_another_admin(read, "http://new.invalid/mcp")
        return offer

    sync_upstream(upstream=upstream, reader=read_while_moved)
    imported = Tool.objects.get(name="moving__first")
    again = sync_upstream(
        upstream=Upstream.objects.get(pk=upstream.pk),
        reader=lambda u: upstream_mcp.offer_from(u.name, _tools_named("first")),
    )
    assert again.changed == [] and again.unchanged == ["moving__first"]
    assert Tool.objects.get(pk=imported.pk).version == imported.version


@pytest.mark.parametrize("door", ["page", "action"])
def test_an_upstream_deleted_while_a_sync_imports_its_tools_is_kept_not_a_500(
    admin_client: Client, door: str
) -> None:
    """The delete page found no tools (the sync had not committed them), then the deletion
    waited for the sync's lock and met the tools it had made: ProtectedError, a 500. Now
    the admin is told the upstream has tools, and it stays, with them."""
    upstream = register_upstream(name="racing", kind=Upstream.Kind.MCP, url="http://mcp.invalid/")

    def sync() -> None:
        sync_upstream(
            upstream=Upstream.objects.get(pk=upstream.pk),
            reader=lambda u: upstream_mcp.offer_from(u.name, _tools_named("first")),
        )

    with uncommitted(sync):
        if door == "page":
            response = admin_client.post(
                f"/admin/tools_registry/upstream/{upstream.pk}/delete/", {"post": "yes"}
            )
        else:
            response = admin_client.post(
                "/admin/tools_registry/upstream/",
                {"action": "delete_selected", "_selected_action": [upstream.pk], "post": "yes"},
            )
    assert response.status_code == 302
    shown = admin_client.get(response["Location"]).content.decode()
    assert "Racing has tools now (imported meanwhile), so it was not deleted" in shown
    assert Upstream.objects.filter(pk=upstream.pk).exists()
    assert Tool.objects.filter(upstream=upstream).count() == 1
    assert not AuditEvent.objects.filter(action="upstream.deleted").exists()
