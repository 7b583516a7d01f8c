"""sync_tools: tools come from code; admins' policy survives; vanished code disables."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from approvals.models import ToolCall
from tests.conftest import World, events
from tests.tools_registry.conftest import GOOD_SCHEMA, code_removed, tool_in_code
from tools_registry import registry, services
from tools_registry.models import Tool
from tools_registry.policy import DEFAULTS, Risk


def test_a_new_tool_gets_its_risk_class_defaults(world: World) -> None:
    with tool_in_code(risk=Risk.DESTRUCTIVE, sensitive_fields=["customer_id"]) as spec:
        report = services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
    assert report.created == [spec.name]
    assert (tool.max_attempts, tool.approvals_required) == (1, 2)
    assert tool.timeout_seconds == DEFAULTS[Risk.DESTRUCTIVE].timeout_seconds
    assert tool.sensitive_fields == ["customer_id"]
    assert tool.version == spec.version
    assert events("tool.registered", tool_name=spec.name)


def test_sync_keeps_admin_edits_and_updates_what_code_owns(world: World) -> None:
    with tool_in_code(risk=Risk.WRITE) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        services.update_policy(
            tool=tool,
            changes={"approvals_required": 3, "timeout_seconds": 12, "enabled": False},
            changed_by=world.alice,
        )
        registry.unregister(spec.name)
    schema = {**GOOD_SCHEMA, "required": ["customer_id"]}
    description = spec.description + " Credits show on the next invoice."
    with tool_in_code(name=spec.name, description=description, input_schema=schema) as changed:
        report = services.sync_tools()
    assert report.updated == [spec.name]
    tool.refresh_from_db()
    # What code owns follows the code ...
    assert (tool.description, tool.input_schema) == (description, schema)
    assert tool.version == changed.version != spec.version
    # ... and what the admin set stays.
    assert (tool.approvals_required, tool.timeout_seconds, tool.enabled) == (3, 12, False)
    [event] = events("tool.updated_from_code", tool_name=spec.name)
    assert event.data["before"]["version"] == spec.version
    assert event.data["after"]["version"] == changed.version
    assert event.data["schema_changed"] is True


def test_a_second_sync_with_no_code_change_changes_nothing(world: World) -> None:
    report = services.sync_tools()
    assert report.created == report.updated == report.disabled == []
    assert sorted(report.unchanged) == sorted(world.tools)


def test_a_tool_whose_code_is_gone_is_disabled_and_stays_so_when_it_returns(
    world: World,
) -> None:
    with code_removed("send_email"):
        report = services.sync_tools()
        tool = Tool.objects.get(name="send_email")
        assert report.disabled == ["send_email"]
        assert (tool.available, tool.enabled, tool.runnable) == (False, False, False)
        assert events("tool.disabled_code_gone", tool_name="send_email")
        response = world.api().submit(
            {
                "tool": "send_email",
                "arguments": {"to": "a@example.com", "subject": "Hi", "body": "Hello."},
                "session_id": "s1",
            }
        )
        assert response.json()["error"]["code"] == "tool_disabled"
    assert "send_email" in {t.name for t in registry.registered()}
    report = services.sync_tools()
    tool.refresh_from_db()
    assert report.updated == ["send_email"]
    # Back in code, but an admin decides when it runs again.
    assert (tool.available, tool.enabled) == (True, False)
    services.update_policy(tool=tool, changes={"enabled": True}, changed_by=world.alice)


def test_sensitive_fields_newly_declared_in_code_are_added_not_replaced(world: World) -> None:
    with tool_in_code() as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        services.update_policy(
            tool=tool, changes={"sensitive_fields": ["amount_cents"]}, changed_by=world.alice
        )
        registry.unregister(spec.name)
    with tool_in_code(name=spec.name, sensitive_fields=["customer_id"]):
        services.sync_tools()
        tool.refresh_from_db()
        assert tool.sensitive_fields == ["amount_cents", "customer_id"]
        # And an admin cannot unmask what the code declares sensitive.
        with pytest.raises(services.PolicyInvalid) as refused:
            services.update_policy(tool=tool, changes={"sensitive_fields": []}, changed_by=None)
        assert list(refused.value.message_dict) == ["sensitive_fields"]


def test_the_command_reports_what_it_did(world: World) -> None:
    out = StringIO()
    with code_removed("search_docs"):
        call_command("sync_tools", stdout=out)
    assert "disabled: search_docs" in out.getvalue()


def test_the_command_says_so_when_no_tool_is_declared_in_code(db: None) -> None:
    """A first deployment without the demo has no tools yet: say it, not nothing."""
    out = StringIO()
    specs = [registry.unregister(spec.name) for spec in registry.registered()]
    try:
        call_command("sync_tools", stdout=out)
    finally:
        for spec in specs:
            assert spec is not None
            registry.restore(spec)
    assert "No tools are declared in code" in out.getvalue()


def test_a_read_that_becomes_a_write_gets_the_policy_a_write_needs(world: World) -> None:
    """The policy fields the new class forbids go back to its defaults; the rest stays."""
    with tool_in_code(risk=Risk.READ) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        services.update_policy(tool=tool, changes={"timeout_seconds": 4}, changed_by=world.alice)
        registry.unregister(spec.name)
    with tool_in_code(name=spec.name, risk=Risk.WRITE):
        report = services.sync_tools()
    assert report.updated == [spec.name]
    tool.refresh_from_db()
    write = DEFAULTS[Risk.WRITE]
    assert (tool.risk, tool.max_attempts, tool.approvals_required) == ("write", 1, 1)
    assert tool.approval_ttl_seconds == write.approval_ttl_seconds
    assert tool.timeout_seconds == 4  # still valid for a write: the admin's value stays
    [event] = events("tool.updated_from_code", tool_name=spec.name)
    assert event.data["before"]["max_attempts"] == 3
    assert event.data["after"]["max_attempts"] == 1

    registry.unregister(spec.name)
    with tool_in_code(name=spec.name, risk=Risk.READ):
        services.sync_tools()
    tool.refresh_from_db()
    assert (tool.risk, tool.approvals_required) == ("read", 0)


def _declared_again(name: str, **options: Any) -> Any:
    """The tool's code replaced by ``options``'s, as a deploy would."""
    registry.unregister(name)
    return tool_in_code(name=name, **options)


def test_a_tool_made_destructive_keeps_the_team_its_rules_ask_for(world: World) -> None:
    """``require 1 from finance`` cannot stand for a destructive tool (2 at least). It was
    dropped, and the calls it sent to finance needed 2 approvals from any reviewer: the
    team's say was lost. It now asks 2 from finance."""
    Group.objects.create(name="finance")
    rule = {"when": "args.amount_cents > 100", "then": "require", "approvals": 1}
    with tool_in_code(risk=Risk.WRITE) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        services.update_policy(
            tool=tool,
            changes={"rules": [{**rule, "team": "finance", "confirm": True}]},
            changed_by=world.alice,
        )
        with _declared_again(spec.name, risk=Risk.DESTRUCTIVE):
            report = services.sync_tools()
            tool.refresh_from_db()
            assert tool.rules == [{**rule, "approvals": 2, "team": "finance", "confirm": True}]
            assert tool.enabled and report.updated == [spec.name] and not report.switched_off
            world.agent.allowed_tools.add(tool)
            body = {"tool": spec.name, "arguments": {"customer_id": "c", "amount_cents": 500}}
            answer = world.api().submit({**body, "session_id": "s"})
    assert answer.status_code == 202, answer.content
    call = ToolCall.objects.get(pk=answer.json()["id"])
    assert (call.policy["approvals_required"], call.policy["teams"]) == (2, ["finance"])


def test_a_tool_made_a_read_refuses_what_its_rules_sent_to_reviewers(world: World) -> None:
    """A read runs at once: a ``require`` rule dropped let its calls run unseen."""
    rule = {"when": "args.amount_cents > 100", "then": "require", "approvals": 1}
    with tool_in_code(risk=Risk.WRITE) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        services.update_policy(tool=tool, changes={"rules": [rule]}, changed_by=world.alice)
        with _declared_again(spec.name, risk=Risk.READ):
            services.sync_tools()
            tool.refresh_from_db()
            assert [(r["when"], r["then"]) for r in tool.rules] == [(rule["when"], "refuse")]
            world.agent.allowed_tools.add(tool)
            body = {"tool": spec.name, "arguments": {"customer_id": "c", "amount_cents": 500}}
            answer = world.api().submit({**body, "session_id": "s"})
    assert answer.status_code == 403, answer.content
    assert answer.json()["error"]["code"] == "refused_by_policy"


def test_a_refusal_the_new_schema_cannot_read_stays_and_the_tool_goes_off(world: World) -> None:
    """A new risk class and a schema without the argument a refusal reads: the refusal was
    dropped with the rules the class refuses, and the calls it refused went through. It
    stays, and the tool waits for an admin, with the reason in the trail."""
    schema = {
        **GOOD_SCHEMA,
        "properties": {**GOOD_SCHEMA["properties"], "account": {"type": "string"}},
    }
    refuse = {"when": 'args.account == "root"', "then": "refuse", "note": "Never root."}
    with tool_in_code(risk=Risk.WRITE, input_schema=schema) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        services.update_policy(tool=tool, changes={"rules": [refuse]}, changed_by=world.alice)
        out = StringIO()
        with _declared_again(spec.name, risk=Risk.DESTRUCTIVE):
            call_command("sync_tools", stdout=out)
    tool.refresh_from_db()
    assert tool.rules == [refuse]
    assert not tool.enabled
    why = "rules: Rule 1: args.account is not an argument of this tool."
    assert f"switched off, its policy no longer fits: {spec.name}: {why}" in out.getvalue()
    [event] = events("tool.updated_from_code", tool_name=spec.name)
    assert event.data["before"]["enabled"] is True and event.data["after"]["enabled"] is False
    assert event.data["disabled_because"] == [why]
