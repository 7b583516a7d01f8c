"""An edit saved from an admin page loaded before someone else's change: the Django admin
posts every field the page showed, so what the page held would write the other change back
unseen (a refusal rule removed, an allowlist widened again). It is refused instead."""

from __future__ import annotations

import mcp_types as types
import pytest
from django.test import Client

from tests.conftest import World, events
from tests.tools_registry.conftest import admin_form_data
from tools_registry import services
from tools_registry.models import IdentityProvider, Tool, Upstream
from tools_registry.services.upstreams import (
    register_upstream,
    set_upstream_enabled,
    sync_upstream,
    update_upstream,
)
from tools_registry.upstreams import mcp as upstream_mcp

pytestmark = pytest.mark.usefixtures("world")

REFUSE_BIG = {"when": "size(args.to) > 3", "then": "refuse", "note": "No mass mailings."}


def test_a_policy_page_loaded_before_another_edit_does_not_undo_it(
    world: World, admin_client: Client
) -> None:
    """Alice opens send_email's policy to shorten its TTL. Meanwhile bob adds a rule that
    refuses mass mailings. Alice saves: the page still holds the rules without bob's, and the
    admin posted them as hers, so the refusal was gone (audited, but nobody had decided it)."""
    tool = world.tools["send_email"]
    url = f"/admin/tools_registry/tool/{tool.pk}/change/"
    shown = admin_client.get(url)
    page = admin_form_data(shown)
    services.update_policy(tool=tool, changes={"rules": [REFUSE_BIG]}, changed_by=world.alice)
    response = admin_client.post(url, {**page, "approval_ttl_seconds": 600})
    assert response.status_code == 200
    assert "changed since you opened" in str(response.context["adminform"].form.non_field_errors())
    tool.refresh_from_db()
    assert (tool.rules, tool.approval_ttl_seconds, tool.policy_version) == ([REFUSE_BIG], 3600, 2)
    assert len(events("tool.policy_changed")) == 1
    # Reloaded, the page holds bob's rule, and her edit goes through with it kept.
    page = admin_form_data(admin_client.get(url))
    response = admin_client.post(url, {**page, "approval_ttl_seconds": 600})
    assert response.status_code == 302, response.context["adminform"].form.errors
    tool.refresh_from_db()
    assert (tool.rules, tool.approval_ttl_seconds, tool.policy_version) == ([REFUSE_BIG], 600, 3)
    # The version travels in the page itself, as a browser posts it back.
    assert 'type="hidden" name="shown_state"' in shown.content.decode()


def test_an_agent_page_loaded_before_a_disable_does_not_enable_it_again(
    world: World, admin_client: Client
) -> None:
    """Root opens the agent's page to give it more rounds. Meanwhile alice disables it (its
    token leaked) and takes send_email off its allowlist. Root saves: the page still held
    the agent enabled, with send_email, and the admin posted both as root's: the leaked
    token worked again, and could send e-mail."""
    url = f"/admin/tools_registry/agent/{world.agent.pk}/change/"
    shown = admin_client.get(url)
    page = admin_form_data(shown)
    agent = services.set_enabled(agent=world.agent, enabled=False, changed_by=world.alice)
    kept = agent.allowed_tools.exclude(name="send_email")
    services.save_agent(agent=agent, allowed_tools=list(kept), changed_by=world.alice)
    response = admin_client.post(url, {**page, "max_rounds_per_session": 20})
    assert response.status_code == 200
    assert "changed since you opened" in str(response.context["adminform"].form.non_field_errors())
    rounds = world.agent.max_rounds_per_session
    agent.refresh_from_db()
    assert (agent.enabled, agent.max_rounds_per_session) == (False, rounds)
    assert not agent.allowed_tools.filter(name="send_email").exists()
    assert world.api().get("/api/v1/tools").status_code == 401
    assert [e.actor_label for e in events("agent.updated")] == ["alice", "alice"]
    # Reloaded, the page shows alice's changes, and root's edit keeps them.
    page = admin_form_data(admin_client.get(url))
    response = admin_client.post(url, {**page, "max_rounds_per_session": 20})
    assert response.status_code == 302, response.context["adminform"].form.errors
    agent.refresh_from_db()
    assert (agent.enabled, agent.max_rounds_per_session) == (False, 20)
    assert not agent.allowed_tools.filter(name="send_email").exists()
    assert 'type="hidden" name="shown_state"' in shown.content.decode()


def test_a_grant_page_loaded_before_a_revocation_does_not_grant_it_again(
    world: World, admin_client: Client
) -> None:
    """Root opens bob's page on issue_refund to let him reveal its arguments too. Meanwhile
    alice takes bob's review away (he approved refunds to himself). Root saves: the page
    still had review ticked, and the page sets exactly what it posts, so bob reviewed the
    tool again, granted by root, who never meant to."""
    tool = world.tools["issue_refund"]
    url = f"/admin/tools_registry/tool/{tool.pk}/permissions/user-manage/{world.bob.pk}/"
    shown = admin_client.get(url)
    form = shown.context["form"]
    page = {name: form[name].value() for name in form.fields}
    assert page["permissions"] == ["review_tool"]
    services.revoke_review(tool=tool, revoked_by=world.alice, user=world.bob)
    response = admin_client.post(
        url, {**page, "permissions": ["review_tool", "reveal_tool_arguments"]}
    )
    assert response.status_code == 200
    assert "changed since you opened" in str(response.context["form"].non_field_errors())
    assert services.current_permissions(tool=tool, user=world.bob) == set()
    assert events("grant.added", actor_label="root") == []
    # Reloaded, the page shows the review gone; what root ticks then is what he means.
    form = admin_client.get(url).context["form"]
    page = {name: form[name].value() for name in form.fields}
    response = admin_client.post(url, {**page, "permissions": ["reveal_tool_arguments"]})
    assert response.status_code == 302
    assert services.current_permissions(tool=tool, user=world.bob) == {"reveal_tool_arguments"}
    assert 'type="hidden" name="shown_state"' in shown.content.decode()


def test_an_identity_provider_page_loaded_before_a_change_does_not_undo_it(
    world: World, admin_client: Client
) -> None:
    """Root opens the provider's page to rename it. Meanwhile alice points it at the
    provider's new issuer (the old tenant was compromised). Root saves: the page still held
    the old issuer, and the admin posted it as root's: tokens of the compromised tenant
    were believed again."""
    provider = IdentityProvider.objects.create(
        name="okta",
        issuer="https://old.okta.example/",
        audience="countersign",
        jwks_url="https://old.okta.example/v1/keys",
        user_id_claim="sub",
        roles_claim="groups",
        algorithms=["RS256"],
    )
    url = f"/admin/tools_registry/identityprovider/{provider.pk}/change/"
    shown = admin_client.get(url)
    page = admin_form_data(shown)
    provider.issuer, provider.jwks_url = "https://new.okta.example/", "https://new.okta.example/k"
    services.save_identity_provider(provider=provider, changed_by=world.alice)
    response = admin_client.post(url, {**page, "name": "okta-main"})
    assert response.status_code == 200
    assert "changed since you opened" in str(response.context["adminform"].form.non_field_errors())
    provider.refresh_from_db()
    assert (provider.name, provider.issuer) == ("okta", "https://new.okta.example/")
    page = admin_form_data(admin_client.get(url))
    assert admin_client.post(url, {**page, "name": "okta-main"}).status_code == 302
    provider.refresh_from_db()
    assert (provider.name, provider.issuer) == ("okta-main", "https://new.okta.example/")
    assert 'type="hidden" name="shown_state"' in shown.content.decode()


def test_an_upstream_page_loaded_before_a_move_does_not_move_it_back(
    world: World, admin_client: Client
) -> None:
    """Root opens the CRM upstream's page to give it a longer timeout. Meanwhile alice moves
    it off a compromised host to a new one, with new credentials, and switches it off until
    she has checked the new server. Root saves: the page still held the old host, switched
    on, and the admin posted both as root's: calls went to the compromised host again, and
    the upstream was on before alice had checked it."""
    old, new = "http://crm-old.invalid/mcp", "http://crm-new.invalid/mcp"
    upstream = register_upstream(
        name="crm",
        kind=Upstream.Kind.MCP,
        url=old,
        headers=[("Authorization", "Bearer s3cret-old")],
    )
    url = f"/admin/tools_registry/upstream/{upstream.pk}/change/"
    shown = admin_client.get(url)
    page = admin_form_data(shown)
    update_upstream(
        upstream=upstream,
        changes={"url": new},
        headers=[("Authorization", "Bearer s3cret-new")],
        changed_by=world.alice,
    )
    set_upstream_enabled(upstream=upstream, enabled=False, changed_by=world.alice)
    response = admin_client.post(url, {**page, "timeout_seconds": 20})
    assert response.status_code == 200
    assert "changed since you opened" in str(response.context["adminform"].form.non_field_errors())
    upstream.refresh_from_db()
    assert (upstream.url, upstream.enabled, upstream.timeout_seconds) == (new, False, 10)
    assert [e.actor_label for e in events("upstream.changed")] == ["alice"]
    assert events("upstream.enabled") == []
    # Reloaded, the page shows alice's host, switched off; root's edit keeps both.
    page = admin_form_data(admin_client.get(url))
    assert admin_client.post(url, {**page, "timeout_seconds": 20}).status_code == 302
    upstream.refresh_from_db()
    assert (upstream.url, upstream.enabled, upstream.timeout_seconds) == (new, False, 20)
    # The digest travels in the page; the headers never do, not even as a hash of theirs.
    body = shown.content.decode()
    assert 'type="hidden" name="shown_state"' in body
    assert "s3cret" not in body and upstream.headers_encrypted not in body


def test_an_imported_tools_page_loaded_before_a_resync_does_not_undo_its_description(
    world: World, admin_client: Client
) -> None:
    """Root opens an imported tool's page to give it a longer timeout. Meanwhile a resync
    brings the upstream's new description, which says the tool now returns card numbers (a
    new version: approvals of the old one no longer hold). Root saves: the page still held
    the old description, and the admin posted it as root's own edit: reviewers read the old
    one, and later resyncs kept it, as an admin's."""
    upstream = register_upstream(name="crm", kind=Upstream.Kind.MCP, url="http://mcp.invalid/mcp")
    read = types.ToolAnnotations(read_only_hint=True)

    def offering(description: str) -> object:
        listed = [
            types.Tool(
                name="find",
                description=description,
                input_schema={"type": "object"},
                annotations=read,
            )
        ]
        return lambda u: upstream_mcp.offer_from(u.name, listed)

    sync_upstream(upstream=upstream, enable_new=True, reader=offering("Find customers."))
    tool = Tool.objects.get(name="crm__find")
    timeout = tool.timeout_seconds
    url = f"/admin/tools_registry/tool/{tool.pk}/change/"
    shown = admin_client.get(url)
    page = admin_form_data(shown)
    told = "Find customers, with their card numbers."
    assert sync_upstream(upstream=upstream, reader=offering(told)).changed == ["crm__find"]
    response = admin_client.post(url, {**page, "timeout_seconds": 20})
    assert response.status_code == 200
    assert "changed since you opened" in str(response.context["adminform"].form.non_field_errors())
    tool.refresh_from_db()
    assert (tool.description, tool.timeout_seconds) == (told, timeout)
    assert events("tool.edited") == []
    page = admin_form_data(admin_client.get(url))
    assert admin_client.post(url, {**page, "timeout_seconds": 20}).status_code == 302
    tool.refresh_from_db()
    assert (tool.description, tool.timeout_seconds) == (told, 20)
    assert 'type="hidden" name="shown_state"' in shown.content.decode()
