"""The agent's admin page: end-user roles and their scopes set, validated and audited; the
Stop and Resume buttons and the stop action, for admins and for whoever holds the new "stop
agents" permission (and nobody else); and ``manage.py stop_agent`` / ``resume_agent``."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client

from approvals.models import Status, ToolCall
from audit.masking import mask_text
from tests.conftest import World, events
from tests.gateway.conftest import SEND_EMAIL
from tests.tools_registry.conftest import admin_form_data
from tools_registry.models import Agent, IdentityProvider

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

CHECKLIST = {
    "viewer": {"risks": ["read"]},
    "support": {"risks": ["read", "write"]},
    "admin": {"risks": ["read", "write", "destructive"]},
}


def change_url(agent: Agent) -> str:
    return f"/admin/tools_registry/agent/{agent.pk}/change/"


@pytest.fixture
def operator(world: World) -> Client:
    """oscar is on call: staff, with the "stop agents" permission and nothing else."""
    oscar = User.objects.create_user("oscar", "oscar@example.com", "pw", is_staff=True)
    oscar.user_permissions.add(Permission.objects.get(codename="stop_agent"))
    client = Client()
    client.force_login(oscar)
    return client


@pytest.fixture
def staff(world: World) -> Client:
    """charlie may sign in to the admin and view agents, but not stop them."""
    world.charlie.is_staff = True
    world.charlie.save()
    world.charlie.user_permissions.add(Permission.objects.get(codename="view_agent"))
    client = Client()
    client.force_login(world.charlie)
    return client


def test_an_admin_sets_the_roles_and_their_scopes_audited(
    world: World, admin_client: Client
) -> None:
    data = admin_form_data(admin_client.get(change_url(world.agent)))
    data.update(
        user_roles_from="asserted",
        assertable_roles="viewer, support,admin",
        role_scopes=json.dumps(CHECKLIST),
        unscoped_access="reads",
    )
    response = admin_client.post(change_url(world.agent), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    agent = Agent.objects.get(pk=world.agent.pk)
    assert agent.assertable_roles == ["viewer", "support", "admin"]
    assert agent.role_scopes["support"] == {"risks": ["read", "write"], "tools": []}
    [event] = events("agent.updated")
    assert set(event.data["after"]) == {
        "user_roles_from",
        "assertable_roles",
        "role_scopes",
        "unscoped_access",
    }
    page = admin_client.get(change_url(world.agent)).content.decode()
    assert "<th>viewer</th><td>get_customer, search_docs</td>" in page
    assert "<th>no user, or no scoped role</th><td>get_customer, search_docs</td>" in page


def test_scopes_that_make_no_sense_are_shown_next_to_their_field(
    world: World, admin_client: Client
) -> None:
    data = admin_form_data(admin_client.get(change_url(world.agent)))
    data.update(
        role_scopes=json.dumps({"viewer": {"tools": ["launch_rocket"]}}),
        user_roles_from="verified",
        assertable_roles="ok, bad\x01role",
    )
    response = admin_client.post(change_url(world.agent), data)
    errors = response.context["adminform"].form.errors
    assert {"role_scopes", "identity_provider", "assertable_roles"} <= set(errors)
    assert "launch_rocket" in str(errors["role_scopes"])
    assert events("agent.updated") == []


def test_a_role_named_by_an_unpaired_surrogate_is_a_form_error_not_a_500(
    world: World, admin_client: Client
) -> None:
    """Refused as a role name, it was then written back into the page, which no UTF-8 page
    can hold."""
    data = admin_form_data(admin_client.get(change_url(world.agent)))
    data.update(role_scopes='{"\\ud800": {"risks": ["read"]}}')
    response = admin_client.post(change_url(world.agent), data)
    assert response.status_code == 200
    assert "is not a role name" in str(response.context["adminform"].form.errors["role_scopes"])
    assert "\\ud800" in response.content.decode()  # as typed, escaped
    assert events("agent.updated") == []


def test_a_tool_named_by_an_unpaired_surrogate_is_a_form_error_not_a_500(
    world: World, admin_client: Client
) -> None:
    """No such tool, its name was quoted in the error as typed, which no UTF-8 page can
    hold (as a role's name was)."""
    data = admin_form_data(admin_client.get(change_url(world.agent)))
    data.update(role_scopes='{"viewer": {"tools": ["x\\udc00y"]}}')
    response = admin_client.post(change_url(world.agent), data)
    assert response.status_code == 200
    assert "no such tools" in str(response.context["adminform"].form.errors["role_scopes"])
    assert "x\\udc00y" in response.content.decode()  # as typed, escaped
    assert events("agent.updated") == []


def test_an_identity_provider_is_registered_and_audited(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/tools_registry/identityprovider/add/",
        {
            "name": "okta",
            "issuer": "https://example.okta.com/",
            "audience": "countersign",
            "jwks_url": "https://example.okta.com/v1/keys",
            "user_id_claim": "sub",
            "roles_claim": "groups",
            "algorithms": ["RS256"],
            "max_token_age_seconds": 86400,
        },
    )
    assert response.status_code == 302
    assert IdentityProvider.objects.get().algorithms == ["RS256"]
    [event] = events("identity_provider.created")
    assert (event.actor_label, event.data["roles_claim"]) == ("root", "groups")


def test_hmac_cannot_even_be_chosen_for_a_provider(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/tools_registry/identityprovider/add/",
        {
            "name": "weak",
            "issuer": "x",
            "audience": "y",
            "jwks_url": "https://example.com/keys",
            "user_id_claim": "sub",
            "roles_claim": "roles",
            "algorithms": ["HS256"],
            "max_token_age_seconds": 86400,
        },
    )
    assert "algorithms" in response.context["adminform"].form.errors
    assert not IdentityProvider.objects.exists()


def test_the_on_call_operator_stops_and_resumes_an_agent(world: World, operator: Client) -> None:
    waiting = world.api().submit(SEND_EMAIL).json()["id"]
    page = operator.get(change_url(world.agent)).content.decode()
    assert "/stop/" in page, "the Stop button"
    form = operator.get(f"/admin/tools_registry/agent/{world.agent.pk}/stop/")
    assert "1 call waiting for a decision is cancelled" in form.content.decode()
    stopped = operator.post(
        f"/admin/tools_registry/agent/{world.agent.pk}/stop/",
        {"reason": "Sending odd e-mails"},
        follow=True,
    )
    assert "1 call(s) waiting for a decision were cancelled" in stopped.content.decode()
    assert ToolCall.objects.get(pk=waiting).status == Status.CANCELLED
    [event] = events("agent.stopped")
    assert (event.actor_label, event.data["cancelled_calls"]) == ("oscar", [mask_text(waiting)])
    assert world.api().get("/api/v1/tools").json()["error"]["code"] == "agent_stopped"
    assert "/resume/" in stopped.content.decode()
    operator.post(f"/admin/tools_registry/agent/{world.agent.pk}/resume/", {"note": "ok"})
    assert world.api().get("/api/v1/tools").status_code == 200
    assert events("agent.resumed")[0].actor_label == "oscar"


def test_the_operator_cannot_change_anything_else(world: World, operator: Client) -> None:
    data = admin_form_data(operator.get(change_url(world.agent)))
    operator.post(change_url(world.agent), {**data, "max_rounds_per_session": 99})
    assert Agent.objects.get(pk=world.agent.pk).max_rounds_per_session == 10


def test_a_stop_needs_a_reason(world: World, operator: Client) -> None:
    response = operator.post(f"/admin/tools_registry/agent/{world.agent.pk}/stop/", {"reason": ""})
    assert response.status_code == 200 and "reason" in response.context["form"].errors
    assert Agent.objects.get(pk=world.agent.pk).stopped_at is None


def test_staff_without_the_permission_cannot_stop(world: World, staff: Client) -> None:
    assert "/stop/" not in staff.get(change_url(world.agent)).content.decode()
    url = f"/admin/tools_registry/agent/{world.agent.pk}/stop/"
    assert staff.get(url).status_code == 403
    assert staff.post(url, {"reason": "because"}).status_code == 403
    changelist = staff.get("/admin/tools_registry/agent/").content.decode()
    assert "stop_selected" not in changelist
    assert Agent.objects.get(pk=world.agent.pk).stopped_at is None


def test_the_changelist_action_asks_for_a_reason_then_stops_each_agent(
    world: World, admin_client: Client
) -> None:
    other = Agent.objects.create(name="other-bot", owner=world.alice)
    selected = {"action": "stop_selected", "_selected_action": [world.agent.pk, other.pk]}
    page = admin_client.post("/admin/tools_registry/agent/", selected)
    assert page.status_code == 200 and 'name="reason"' in page.content.decode()
    assert not Agent.objects.filter(stopped_at__isnull=False).exists()
    admin_client.post("/admin/tools_registry/agent/", {**selected, "reason": "incident"})
    assert set(Agent.objects.filter(stop_reason="incident").values_list("name", flat=True)) == {
        "support-bot",
        "other-bot",
    }


def test_the_commands_stop_and_resume(world: World) -> None:
    waiting = world.api().submit(SEND_EMAIL).json()["id"]
    out = StringIO()
    call_command("stop_agent", "support-bot", reason="incident", stdout=out)
    assert "cancelled 1 call(s)" in out.getvalue() and waiting in out.getvalue()
    out = StringIO()
    call_command("stop_agent", "support-bot", reason="again", stdout=out)
    assert "already stopped" in out.getvalue() and "incident" in out.getvalue()
    with pytest.raises(CommandError, match="reason"):
        call_command("stop_agent", "support-bot", reason=" ")
    with pytest.raises(CommandError, match="No agent"):
        call_command("stop_agent", "nobody", reason="x")
    out = StringIO()
    call_command("resume_agent", "support-bot", note="fixed", stdout=out)
    assert "Resumed support-bot" in out.getvalue()
    assert world.api().get("/api/v1/tools").status_code == 200


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://idp.example.com/keys", False),
        ("ftp://idp.example.com/keys", False),
        ("http://127.0.0.1:8080/keys", True),
        ("http://localhost/keys", True),
        ("https://idp.example.com/keys", True),
    ],
)
def test_a_providers_keys_are_fetched_over_tls_or_from_this_machine(
    admin_client: Client, url: str, accepted: bool
) -> None:
    """Keys fetched over plain http from elsewhere could be swapped on the way by anyone,
    who would then sign any user's token."""
    response = admin_client.post(
        "/admin/tools_registry/identityprovider/add/",
        {
            "name": "idp",
            "issuer": "https://idp.example.com/",
            "audience": "countersign",
            "jwks_url": url,
            "user_id_claim": "sub",
            "roles_claim": "roles",
            "algorithms": ["RS256"],
            "max_token_age_seconds": 86400,
        },
    )
    assert IdentityProvider.objects.exists() is accepted
    if not accepted:
        assert "jwks_url" in response.context["adminform"].form.errors


def test_a_verified_agent_whose_calls_without_a_token_may_act_is_warned_of(
    world: World, admin_client: Client
) -> None:
    """Verified promises that the provider, not the agent, says what a user may do; a call
    that leaves the token out names no user and got the whole allowlist by default, with
    nothing on the agent's page to say so."""
    provider = IdentityProvider.objects.create(
        name="okta", issuer="https://example.okta.com/", audience="countersign",
        jwks_url="https://example.okta.com/v1/keys", algorithms=["RS256"],
    )  # fmt: skip
    Agent.objects.filter(pk=world.agent.pk).update(
        user_roles_from="verified", identity_provider=provider, role_scopes=CHECKLIST
    )
    page = admin_client.get(change_url(world.agent)).content.decode()
    assert "A call that leaves out the user's token gets the row above, which may act" in page
    assert "send_email" in page.split("which may act (")[1].split(")")[0]
    Agent.objects.filter(pk=world.agent.pk).update(unscoped_access="reads")
    page = admin_client.get(change_url(world.agent)).content.decode()
    assert "leaves out the user" not in page
