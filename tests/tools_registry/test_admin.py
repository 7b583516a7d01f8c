"""The Django admin goes through the services: policy edits are validated and audited, grants
made on guardian's object-permission pages are audited, tokens are issued and revoked
through the service and the plaintext is shown once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals.services.calls import create_call
from tests.conftest import World, events
from tests.support.uncommitted import uncommitted
from tests.tools_registry.conftest import admin_form_data, tool_in_code
from tools_registry import services
from tools_registry.models import Agent, AgentToken, Tool, Upstream
from tools_registry.permissions import can_review
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams.offers import ImportedTool, Offer

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world", "world")


def _change_url(tool: Tool) -> str:
    return f"/admin/tools_registry/tool/{tool.pk}/change/"


def test_a_policy_edit_in_the_admin_is_validated_versioned_and_audited(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["delete_customer"]
    data = admin_form_data(admin_client.get(_change_url(tool)))
    data.update(approvals_required=3, rate_limit_per_agent="2/minute")
    response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    tool.refresh_from_db()
    assert (tool.approvals_required, tool.rate_limit_per_agent) == (3, "2/minute")
    assert tool.policy_version == 2
    [event] = events("tool.policy_changed", tool_name="delete_customer")
    assert event.actor_label == "root"
    assert event.data["before"] == {"approvals_required": 2, "rate_limit_per_agent": "10/minute"}
    assert event.data["after"] == {"approvals_required": 3, "rate_limit_per_agent": "2/minute"}


def test_an_invalid_edit_in_the_admin_is_shown_next_to_its_field_and_not_saved(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["delete_customer"]
    data = admin_form_data(admin_client.get(_change_url(tool)))
    data.update(max_attempts=2, approval_ttl_seconds=0, sensitive_fields='["nope"]')
    response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"max_attempts", "approval_ttl_seconds", "sensitive_fields"} <= set(errors)
    assert "never retried" in " ".join(errors["max_attempts"])
    tool.refresh_from_db()
    assert (tool.max_attempts, tool.approval_ttl_seconds, tool.policy_version) == (1, 3600, 1)
    assert events("tool.policy_changed") == []


def test_json_nested_past_any_reader_is_a_form_error_not_a_500(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["send_email"]
    data = admin_form_data(admin_client.get(_change_url(tool)))
    deep = "[" * 10_000 + "]" * 10_000
    data.update(rules=deep)
    response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "nested too deeply" in " ".join(errors["rules"])


def test_a_rule_holding_what_postgresql_cannot_store_is_a_form_error_not_a_500(
    world: World, admin_client: Client
) -> None:
    """A NUL (or an unpaired surrogate) in a rule's note or condition passed every check
    and failed as the rules were written to jsonb."""
    tool = world.tools["send_email"]
    for rule in (
        '{"when": "true", "then": "require", "approvals": 1, "note": "a\\u0000b"}',
        '{"when": "args.to == \\"a\\u0000\\"", "then": "refuse"}',
        '{"when": "true", "then": "refuse", "note": "\\ud800"}',
    ):
        data = admin_form_data(admin_client.get(_change_url(tool)))
        data.update(rules=f"[{rule}]")
        response = admin_client.post(_change_url(tool), data)
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert "may not hold" in " ".join(errors["rules"]), rule
    tool.refresh_from_db()
    assert (tool.rules, tool.policy_version) == ([], 1)
    assert events("tool.policy_changed") == []


@pytest.mark.parametrize(
    ("when", "message"),
    [
        # cel-python raised its own CELSyntaxError on evaluating it against the sample calls.
        ("[args.to].all(1, true)", "all() takes a name for each item first"),
        # Checked against the schema as args.sujbect is: saved, it would never have matched.
        ('args["sujbect"] == "x"', "args.sujbect is not an argument of this tool"),
    ],
    ids=["macro-without-a-name", "misspelt-key"],
)
def test_a_rule_the_checks_refuse_is_a_form_error_not_a_500(
    world: World, admin_client: Client, when: str, message: str
) -> None:
    tool = world.tools["send_email"]
    data = admin_form_data(admin_client.get(_change_url(tool)))
    data.update(rules=json.dumps([{"when": when, "then": "refuse"}]))
    response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors["rules"])
    tool.refresh_from_db()
    assert (tool.rules, tool.policy_version) == ([], 1)


def test_an_imported_tools_new_risk_with_a_policy_it_forbids_is_a_form_error(
    world: World, admin_client: Client
) -> None:
    """Made destructive, with a rule that reads an argument the tool lacks: the form shows
    why, as for any policy edit; nothing changes (it was a 500)."""
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "integer"}, "to": {"type": "string"}},
        "required": ["amount", "to"],
    }
    offered = Offer(
        tools=[
            ImportedTool(
                source_name="pay", name="bank__pay", description="Pay someone.",
                input_schema=schema, risk="write", overwrites=False, idempotent=False,
                open_world=True,
            )
        ]
    )  # fmt: skip
    upstream = register_upstream(name="bank", kind="mcp", url="http://127.0.0.1:9/mcp")
    sync_upstream(upstream=upstream, reader=lambda _: offered, enable_new=True)
    tool = Tool.objects.get(name="bank__pay")
    data = admin_form_data(admin_client.get(_change_url(tool)))
    data.update(risk="destructive", rules='[{"when": "args.nope > 1", "then": "refuse"}]')
    response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "args.nope is not an argument" in " ".join(errors["rules"])
    tool.refresh_from_db()
    assert (tool.risk, tool.rules) == ("write", [])


def test_the_tool_pages_show_each_tools_lint_result(world: World, admin_client: Client) -> None:
    page = admin_client.get(_change_url(world.tools["send_email"])).content.decode()
    assert "The definition passes every lint rule." in page
    sloppy = world.tools["search_docs"]
    Tool.objects.filter(pk=sloppy.pk).update(
        description="Search.",
        input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
    )
    page = admin_client.get(_change_url(sloppy)).content.decode()
    for rule in ("description", "argument_names", "property_descriptions", "string_max_length"):
        assert f"<code>{rule}</code>" in page
    listing = admin_client.get("/admin/tools_registry/tool/").content.decode()
    assert listing.count('alt="False"') == 1  # only search_docs fails
    assert listing.count('alt="True"') >= 5


def test_tools_are_neither_added_nor_deleted_in_the_admin(
    world: World, admin_client: Client
) -> None:
    assert admin_client.get("/admin/tools_registry/tool/add/").status_code == 403
    tool = world.tools["send_email"]
    assert admin_client.get(f"/admin/tools_registry/tool/{tool.pk}/delete/").status_code == 403


def _perm_url(tool: Tool, kind: str, subject_id: int) -> str:
    return f"/admin/tools_registry/tool/{tool.pk}/permissions/{kind}-manage/{subject_id}/"


def _shown(client: Client, url: str) -> dict[str, str]:
    """What the grant page carries of what it showed (``shown_state``), as stored now."""
    return {"shown_state": client.get(url).context["form"]["shown_state"].value()}


def test_a_grant_and_a_revoke_on_the_object_permission_page_are_audited(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["issue_refund"]
    url = _perm_url(tool, "user", world.charlie.pk)
    # Each post says what its page showed held (``shown_state``), as the page does.
    response = admin_client.post(url, {"permissions": ["review_tool"], **_shown(admin_client, url)})
    assert response.status_code == 302
    assert can_review(world.charlie, tool) is True
    [added] = events("grant.added", tool_name="issue_refund", actor_label="root")
    assert added.data == {"permission": "review_tool", "user": "charlie"}

    # Saving the same selection again changes nothing and records nothing.
    shown = _shown(admin_client, url)
    response = admin_client.post(url, {"permissions": ["review_tool"], **shown})
    assert response.status_code == 302
    assert len(events("grant.added", tool_name="issue_refund", actor_label="root")) == 1

    # A browser always sends the CSRF field; guardian ignores a POST with no data at all.
    assert admin_client.post(url, {"csrfmiddlewaretoken": "-", **shown}).status_code == 302
    charlie = type(world.charlie).objects.get(pk=world.charlie.pk)  # fresh permission cache
    assert can_review(charlie, tool) is False
    [removed] = events("grant.removed", tool_name="issue_refund")
    assert removed.actor_label == "root"
    assert removed.data == {"permission": "review_tool", "user": "charlie"}


def test_a_team_grant_on_the_object_permission_page_is_audited(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["update_customer"]
    team = Group.objects.create(name="crm-team")
    world.charlie.groups.add(team)
    url = _perm_url(tool, "group", team.pk)
    chosen = {"permissions": ["review_tool", "reveal_tool_arguments"]}
    response = admin_client.post(url, {**chosen, **_shown(admin_client, url)})
    assert response.status_code == 302
    assert can_review(world.charlie, tool) is True
    granted = events("grant.added", tool_name="update_customer", actor_label="root")
    assert sorted(e.data["permission"] for e in granted) == [
        "reveal_tool_arguments",
        "review_tool",
    ]
    assert {e.data["group"] for e in granted} == {"crm-team"}


def test_model_wide_permissions_are_not_offered_per_tool(
    world: World, admin_client: Client
) -> None:
    tool = world.tools["send_email"]
    overview = admin_client.get(f"/admin/tools_registry/tool/{tool.pk}/permissions/")
    assert overview.status_code == 200
    assert "bob" in overview.content.decode()  # bob's grant is listed
    page = admin_client.get(_perm_url(tool, "user", world.charlie.pk)).content.decode()
    assert 'value="review_tool"' in page
    assert 'value="reveal_tool_arguments"' in page
    assert 'value="change_tool"' not in page
    url = _perm_url(tool, "user", world.charlie.pk)
    response = admin_client.post(url, {"permissions": ["change_tool"], **_shown(admin_client, url)})
    assert response.status_code == 200  # refused as an invalid choice
    assert events("grant.added", actor_label="root") == []


def test_issuing_a_token_in_the_admin_shows_it_once_and_audits_it(
    world: World, admin_client: Client
) -> None:
    url = f"/admin/tools_registry/agent/{world.agent.pk}/issue-token/"
    agent_page = admin_client.get(f"/admin/tools_registry/agent/{world.agent.pk}/change/")
    assert url in agent_page.content.decode()
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, {"label": "ci runner"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    plaintext = response.context["plaintext"]
    assert plaintext in response.content.decode()
    assert services.authenticate_token(plaintext) == world.agent
    token = AgentToken.objects.get(label="ci runner")
    assert token.created_by.username == "root"
    [event] = events("token.created", actor_label="root")
    assert event.data == {"token_prefix": token.prefix, "label": "ci runner"}
    # Never shown again: not on the agent's page, not in the token's own page.
    secret = plaintext.partition("_")[2].partition("_")[2]
    again = admin_client.get(f"/admin/tools_registry/agent/{world.agent.pk}/change/")
    assert secret not in again.content.decode()
    detail = admin_client.get(f"/admin/tools_registry/agenttoken/{token.pk}/change/")
    assert secret not in detail.content.decode()
    assert token.secret_hash not in detail.content.decode()


def test_revoking_in_the_admin_is_audited_and_the_token_is_refused_at_once(
    world: World, admin_client: Client
) -> None:
    api = world.api()
    assert api.get("/api/v1/tools").status_code == 200
    token = AgentToken.objects.get(agent=world.agent)
    response = admin_client.post(
        "/admin/tools_registry/agenttoken/",
        {"action": "revoke_tokens", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    [event] = events("token.revoked", actor_label="root")
    assert event.data["token_prefix"] == token.prefix
    refused = api.get("/api/v1/tools")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "not_authenticated"


def test_tokens_cannot_be_edited_or_deleted_in_the_admin(
    world: World, admin_client: Client
) -> None:
    token = AgentToken.objects.get(agent=world.agent)
    url = f"/admin/tools_registry/agenttoken/{token.pk}/change/"
    admin_client.post(url, {"label": "renamed"})
    token.refresh_from_db()
    assert token.label == "tests"
    assert (
        admin_client.get(f"/admin/tools_registry/agenttoken/{token.pk}/delete/").status_code == 403
    )


def test_an_agent_edit_in_the_admin_is_audited_with_its_allowlist(
    world: World, admin_client: Client
) -> None:
    url = f"/admin/tools_registry/agent/{world.agent.pk}/change/"
    data = admin_form_data(admin_client.get(url))
    keep = [world.tools["search_docs"].pk, world.tools["send_email"].pk]
    data.update(allowed_tools=keep, enabled="", max_rounds_per_session=4)
    data.pop("enabled")
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    agent = Agent.objects.get(pk=world.agent.pk)
    assert (agent.enabled, agent.max_rounds_per_session) == (False, 4)
    assert sorted(agent.allowed_tools.values_list("name", flat=True)) == [
        "search_docs",
        "send_email",
    ]
    [event] = events("agent.updated", actor_label="root")
    assert event.data["before"]["enabled"] is True
    assert event.data["after"] == {
        "enabled": False,
        "max_rounds_per_session": 4,
        "allowed_tools": ["search_docs", "send_email"],
    }
    assert world.api().get("/api/v1/tools").status_code == 401


def test_an_agent_created_in_the_admin_is_audited(world: World, admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/tools_registry/agent/add/",
        {
            "name": "billing-bot",
            "owner": world.alice.pk,
            "allowed_tools": [world.tools["issue_refund"].pk],
            "max_rounds_per_session": 10,
            "enabled": "on",
            "tokens-TOTAL_FORMS": 0,
            "tokens-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302
    [event] = events("agent.created", agent_name="billing-bot")
    assert event.actor_label == "root"
    assert event.data["allowed_tools"] == ["issue_refund"]
    assert event.data["owner"] == "alice"


def name_taken_uncommitted(model: type[Any], **fields: Any) -> Any:
    """Another admin's save of the same name, under way: its row is written, not yet
    committed, and commits a moment after the block's request has checked the name."""
    return uncommitted(lambda: model._default_manager.create(**fields))


def _user_form(admin_client: Client, user: Any) -> dict[str, Any]:
    """The user admin's change form as shown, ready to post back (its split date field
    written as the form reads it)."""
    data = admin_form_data(admin_client.get(f"/admin/auth/user/{user.pk}/change/"))
    data.pop("date_joined", None)
    data.pop("last_login", None)
    data.update(
        date_joined_0=user.date_joined.strftime("%Y-%m-%d"),
        date_joined_1=user.date_joined.strftime("%H:%M:%S"),
    )
    return data


def test_joining_a_team_or_becoming_superuser_in_the_user_admin_is_audited(
    world: World, admin_client: Client
) -> None:
    team = Group.objects.create(name="refunds")
    services.grant_review(tool=world.tools["issue_refund"], group=team)
    url = f"/admin/auth/user/{world.charlie.pk}/change/"
    data = _user_form(admin_client, world.charlie)
    data.update(groups=[team.pk], is_superuser="on")
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    [event] = events("user.access_changed", actor_label="root")
    assert event.data == {
        "user": "charlie",
        "before": {"groups": [], "is_superuser": False},
        "after": {"groups": ["refunds"], "is_superuser": True},
    }


def test_a_model_wide_permission_given_in_the_user_admin_is_audited_with_who_gave_it(
    world: World, admin_client: Client
) -> None:
    """Changing tools makes a tool admin, who may grant anyone any tool: the trail only said
    that Countersign had given it (``auth.permissions_changed``, with no person)."""
    change_tool = Permission.objects.get(codename="change_tool")
    url = f"/admin/auth/user/{world.charlie.pk}/change/"
    data = _user_form(admin_client, world.charlie)
    data.update(is_staff="on", user_permissions=[change_tool.pk])
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    [event] = events("user.access_changed", actor_label="root")
    assert event.data == {
        "user": "charlie",
        "before": {"is_staff": False, "permissions": []},
        "after": {"is_staff": True, "permissions": ["tools_registry.change_tool"]},
    }


def test_deleting_an_upstream_in_the_admin_is_audited(world: World, admin_client: Client) -> None:
    """An upstream without tools (its import failed; its name, which cannot be changed, was
    mistyped) may be deleted, its stored credentials with it: that was not in the trail."""
    billing = register_upstream(
        name="billing", kind="mcp", url="http://127.0.0.1:9/mcp",
        headers=[("Authorization", "Bearer sk-canary")], enabled=False,
    )  # fmt: skip
    response = admin_client.post(
        f"/admin/tools_registry/upstream/{billing.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Upstream.objects.filter(pk=billing.pk).exists()
    [event] = events("upstream.deleted", actor_label="root")
    assert event.data == {
        "upstream": "billing",
        "kind": "mcp",
        "url": "http://127.0.0.1:9/mcp",
        "base_url": "",
        "header_names": ["Authorization"],
    }
    # The list's bulk delete too, one event each.
    crm = register_upstream(name="crm", kind="mcp", url="http://127.0.0.1:9/crm", enabled=False)
    admin_client.post(
        "/admin/tools_registry/upstream/",
        {"action": "delete_selected", "_selected_action": [crm.pk], "post": "yes"},
    )
    assert not Upstream.objects.filter(pk=crm.pk).exists()
    assert [e.data["upstream"] for e in events("upstream.deleted")] == ["billing", "crm"]


@pytest.mark.parametrize(
    "url",
    [
        "/admin/tools_registry/tool/?risk=%00",
        "/admin/audit/auditevent/?action=%00",
        "/admin/approvals/standingapproval/?match=%00",
        "/admin/tools_registry/agent/?name=a%00b",
    ],
)
def test_a_nul_in_an_admin_list_query_is_a_bad_request_not_a_500(
    admin_client: Client, url: str
) -> None:
    """The admin hands list filters and lookups to PostgreSQL as they come."""
    response = admin_client.get(url)
    assert response.status_code == 400
    assert "NUL character" in response.content.decode()
    assert admin_client.get(url.replace("%00", "x")).status_code in (200, 302)


def test_a_nul_in_an_admin_form_is_a_bad_request_and_saves_nothing(
    world: World, admin_client: Client
) -> None:
    url = f"/admin/tools_registry/agent/{world.agent.pk}/change/"
    data = admin_form_data(admin_client.get(url))
    data["description"] = "Helps\x00customers"
    response = admin_client.post(url, data)
    assert response.status_code == 400
    world.agent.refresh_from_db()
    assert "\x00" not in world.agent.description


@pytest.mark.parametrize(
    ("url", "action"),
    [
        ("/admin/tools_registry/agenttoken/", "revoke_tokens"),
        ("/admin/tools_registry/agent/", "stop_selected"),
        ("/admin/auth/user/", "delete_selected"),
    ],
)
def test_an_action_on_a_row_that_is_no_number_is_a_bad_request_not_a_500(
    world: World, admin_client: Client, url: str, action: str
) -> None:
    """Django filters the list by the selection as it comes: ?_selected_action=abc was a
    500 on every list with an action."""
    token = AgentToken.objects.get(agent=world.agent)
    for selected in (["abc"], [str(token.pk), "1.5"], ["²"]):
        response = admin_client.post(url, {"action": action, "_selected_action": selected})
        assert response.status_code == 400, selected
    assert AgentToken.objects.get(pk=token.pk).revoked_at is None
    # A selection of numbers (one that is no row among them) works as before.
    response = admin_client.post(
        "/admin/tools_registry/agenttoken/",
        {"action": "revoke_tokens", "_selected_action": [str(token.pk), "99999999999999999999"]},
    )
    assert response.status_code == 302
    assert AgentToken.objects.get(pk=token.pk).revoked_at is not None


def _queries(client: Client, url: str, data: dict[str, Any] | None = None) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.post(url, data) if data is not None else client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries), response.content.decode()


def test_the_agent_page_costs_the_same_queries_however_many_tokens_it_lists(
    world: World, admin_client: Client, tool_admin: User
) -> None:
    """Each token's row names its agent and who issued it: read with the tokens, not two
    queries per token."""
    url = f"/admin/tools_registry/agent/{world.agent.pk}/change/"
    issued = [services.issue_token(agent=world.agent, label="ci", created_by=tool_admin)[0]]
    _queries(admin_client, url)  # warm-up: the first request of a session touches it
    few, _ = _queries(admin_client, url)
    issued += [
        services.issue_token(agent=world.agent, label="ci", created_by=tool_admin)[0]
        for _ in range(9)
    ]
    many, body = _queries(admin_client, url)
    assert all(token.prefix in body for token in issued)
    assert many == few, f"2 tokens: {few} queries, 11 tokens: {many}"


def test_the_stop_action_costs_the_same_queries_however_many_agents_are_selected(
    world: World, admin_client: Client
) -> None:
    """The page asking for the reason says how many calls the stop would cancel: counted
    for all the selected agents at once, not a query per agent."""

    def selection(agents: int) -> dict[str, Any]:
        for n in range(Agent.objects.filter(name__startswith="bot-").count(), agents):
            agent = Agent.objects.create(name=f"bot-{n}", owner=world.alice)
            agent.allowed_tools.add(world.tools["send_email"])
            create_call(
                agent=agent, tool=world.tools["send_email"], session_id="s",
                arguments={"to": "ada@example.com", "subject": f"n{n}", "body": "Hello."},
                request_key=uuid.uuid4().hex,
            )  # fmt: skip
        chosen = Agent.objects.filter(name__startswith="bot-").values_list("pk", flat=True)
        return {"action": "stop_selected", "_selected_action": [str(pk) for pk in chosen]}

    _queries(admin_client, "/admin/tools_registry/agent/", selection(2))  # warm-up
    few, body = _queries(admin_client, "/admin/tools_registry/agent/", selection(2))
    assert "its 2 calls waiting for a decision are cancelled" in body
    many, body = _queries(admin_client, "/admin/tools_registry/agent/", selection(12))
    assert "its 12 calls waiting for a decision are cancelled" in body
    assert many == few, f"2 agents: {few} queries, 12 agents: {many}"


DOTTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_id": {"type": "string"},
        "meta": {
            "type": "object",
            "properties": {"card.holder": {"type": "string"}, "card": {"type": "string"}},
        },
    },
    "required": ["customer_id"],
    "additionalProperties": False,
}


def test_a_property_whose_name_holds_a_dot_can_be_masked(
    world: World, admin_client: Client
) -> None:
    """The picker offered ``meta.card.holder``, which the policy check read as ``holder`` in
    ``card`` in ``meta`` and refused: such a field could not be hidden at all. Its dot is now
    written ``\\.``, and the value is masked in the trail and on the reviewer's page."""
    with tool_in_code(input_schema=DOTTED_SCHEMA) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        page = admin_client.get(_change_url(tool))
        offered = [
            value for value, _ in page.context["adminform"].form.fields["sensitive_fields"].choices
        ]
        [holder_path] = [path for path in offered if "holder" in path]
        data = admin_form_data(page)
        data["sensitive_fields"] = [holder_path]
        response = admin_client.post(_change_url(tool), data)
        assert response.status_code == 302, response.context["adminform"].form.errors
        tool.refresh_from_db()
        assert tool.sensitive_fields == ["meta.card\\.holder"]
        world.agent.allowed_tools.add(tool)
        services.grant_review(tool=tool, user=world.bob)
        holder = "Zebulon Quarterfield"
        arguments = {"customer_id": "c1", "meta": {"card.holder": holder, "card": "visible"}}
        answer = world.api().submit({"tool": spec.name, "arguments": arguments, "session_id": "s"})
    assert answer.status_code == 202, answer.content
    [submitted] = events("call.submitted", tool_name=spec.name)
    assert holder not in json.dumps(submitted.data)
    assert submitted.data["arguments"]["meta"]["card"] == "visible"
    reviewer = Client()
    reviewer.force_login(world.bob)
    detail = reviewer.get(f"/approvals/{answer.json()['id']}/")
    assert detail.status_code == 200
    assert holder not in detail.content.decode()
    assert "visible" in detail.content.decode()


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("meta.card.holder", "'meta.card.holder' is not an argument of this tool."),
        ("meta..card", "'meta..card' is not a dotted argument path"),
    ],
)
def test_a_dotted_name_written_unescaped_is_refused_clearly(
    world: World, path: str, problem: str
) -> None:
    with tool_in_code(input_schema=DOTTED_SCHEMA) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        with pytest.raises(services.PolicyInvalid) as refused:
            services.update_policy(
                tool=tool, changes={"sensitive_fields": [path]}, changed_by=world.alice
            )
    assert refused.value.message_dict["sensitive_fields"][0].startswith(problem)


@pytest.mark.parametrize(
    "rules",
    [
        '[{"when": "true", "then": "require", "approvals": 1' + "0" * 5000 + "}]",
        '[{"when": "true", "then": "require", "approvals": NaN}]',
        '[{"when": "true", "then": "require", "approvals": 1, "confirm": Infinity}]',
    ],
    ids=["a-number-past-python-s-digit-limit", "nan", "infinity"],
)
def test_rules_json_no_reader_takes_is_a_form_error_not_a_500(
    world: World, admin_client: Client, rules: str
) -> None:
    """A whole number of more than 4300 digits is valid JSON that Python refuses to read (a
    ValueError, not the JSONDecodeError Django's field catches); NaN and Infinity are read,
    and PostgreSQL's jsonb cannot store them."""
    tool = world.tools["send_email"]
    data = admin_form_data(admin_client.get(_change_url(tool)))
    data.update(rules=rules)
    response = admin_client.post(_change_url(tool), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["rules"]
    tool.refresh_from_db()
    assert (tool.rules, tool.policy_version) == ([], 1)
