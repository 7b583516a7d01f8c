"""update_policy: every policy edit is validated, versioned and audited with before/after."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction

from tests.conftest import World, events
from tests.tools_registry.conftest import tool_in_code
from tools_registry import services
from tools_registry.models import Tool
from tools_registry.policy import DEFAULTS, POLICY_FIELDS, Risk, validate_policy


def test_a_valid_change_is_saved_versioned_and_audited_with_before_and_after(
    world: World,
) -> None:
    tool = world.tools["send_email"]
    team = Group.objects.create(name="mail-oncall")
    saved = services.update_policy(
        tool=tool,
        changes={
            "approvals_required": 2,
            "approval_ttl_seconds": 600,
            "rate_limit_per_user": "5/hour",
            "escalation_group": team,
        },
        changed_by=world.alice,
    )
    assert saved.policy_version == tool.policy_version + 1
    stored = Tool.objects.get(pk=tool.pk)
    assert (stored.approvals_required, stored.approval_ttl_seconds) == (2, 600)
    assert stored.rate_limit_per_user == "5/hour"
    assert stored.escalation_group == team
    [event] = events("tool.policy_changed", tool_name="send_email")
    assert event.actor_label == "alice"
    assert event.data == {
        "policy_version": stored.policy_version,
        "before": {
            "rate_limit_per_user": "",
            "approvals_required": 1,
            "approval_ttl_seconds": 3600,
            "escalation_group": None,
        },
        "after": {
            "rate_limit_per_user": "5/hour",
            "approvals_required": 2,
            "approval_ttl_seconds": 600,
            "escalation_group": "mail-oncall",
        },
    }


def test_a_change_to_the_same_values_records_nothing(world: World) -> None:
    tool = world.tools["send_email"]
    saved = services.update_policy(
        tool=tool, changes={"approvals_required": 1, "enabled": True}, changed_by=world.alice
    )
    assert saved.policy_version == tool.policy_version
    assert events("tool.policy_changed") == []


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("delete_customer", {"max_attempts": 2}, "max_attempts"),
    ("send_email", {"max_attempts": 3}, "max_attempts"),
    ("search_docs", {"max_attempts": 0}, "max_attempts"),
    ("search_docs", {"max_attempts": 6}, "max_attempts"),
    ("send_email", {"approval_ttl_seconds": 0}, "approval_ttl_seconds"),
    ("delete_customer", {"approval_ttl_seconds": 40 * 24 * 3600}, "approval_ttl_seconds"),
    ("send_email", {"timeout_seconds": 0}, "timeout_seconds"),
    ("send_email", {"timeout_seconds": -1.5}, "timeout_seconds"),
    ("send_email", {"timeout_seconds": 3600}, "timeout_seconds"),
    ("search_docs", {"timeout_seconds": 60}, "timeout_seconds"),
    ("send_email", {"rate_limit_per_agent": "lots"}, "rate_limit_per_agent"),
    ("send_email", {"rate_limit_per_agent": "0/minute"}, "rate_limit_per_agent"),
    ("send_email", {"rate_limit_per_user": "5/second;100/day"}, "rate_limit_per_user"),
    ("send_email", {"approvals_required": 0}, "approvals_required"),
    ("delete_customer", {"approvals_required": 11}, "approvals_required"),
    ("search_docs", {"approvals_required": 1}, "approvals_required"),
    ("search_docs", {"approval_ttl_seconds": 60}, "approval_ttl_seconds"),
    ("send_email", {"breaker_threshold": 0}, "breaker_threshold"),
    ("send_email", {"breaker_cooldown_seconds": 0}, "breaker_cooldown_seconds"),
    ("send_email", {"reminder_after_seconds": 3600}, "reminder_after_seconds"),
    ("send_email", {"reminder_after_seconds": 0}, "reminder_after_seconds"),
    ("search_docs", {"reminder_after_seconds": 10}, "reminder_after_seconds"),
    ("send_email", {"sensitive_fields": ["recipient"]}, "sensitive_fields"),
    ("update_customer", {"sensitive_fields": ["changes.email"]}, "sensitive_fields"),
    (
        "update_customer",
        {"sensitive_fields": ["changes.email", "changes.phone", 3]},
        "sensitive_fields",
    ),
    ("send_email", {"sensitive_fields": "to"}, "sensitive_fields"),
    ("send_email", {"sensitive_fields": ["to", "to"]}, "sensitive_fields"),
    ("send_email", {"sensitive_fields": ["to."]}, "sensitive_fields"),
]


@pytest.mark.parametrize(("tool_name", "changes", "field"), INVALID)
def test_an_invalid_change_is_refused_and_nothing_is_written(
    world: World, tool_name: str, changes: dict[str, Any], field: str
) -> None:
    tool = world.tools[tool_name]
    before = Tool.objects.values(*POLICY_FIELDS, "policy_version").get(pk=tool.pk)
    with pytest.raises(services.PolicyInvalid) as refused:
        services.update_policy(tool=tool, changes=changes, changed_by=world.alice)
    assert list(refused.value.message_dict) == [field]
    assert Tool.objects.values(*POLICY_FIELDS, "policy_version").get(pk=tool.pk) == before
    assert events("tool.policy_changed") == []


def test_rules_given_as_null_or_empty_are_no_rules(world: World) -> None:
    """A null failed the column's NOT NULL (a 500), and "" was stored as a JSON string."""
    tool = world.tools["send_email"]
    rule = {"when": '"external_link" in signals', "then": "refuse"}
    services.update_policy(tool=tool, changes={"rules": [rule]}, changed_by=world.alice)
    for empty in (None, ""):
        services.update_policy(tool=tool, changes={"rules": empty}, changed_by=world.alice)
        assert Tool.objects.get(pk=tool.pk).rules == []
    assert [e.data["after"] for e in events("tool.policy_changed")][-1] == {"rules": []}


def test_the_whole_resulting_policy_is_validated_not_only_the_changed_field(
    world: World,
) -> None:
    tool = world.tools["send_email"]
    services.update_policy(
        tool=tool, changes={"reminder_after_seconds": 1800}, changed_by=world.alice
    )
    # Lowering the TTL under the reminder breaks the reminder rule, though it was not edited.
    with pytest.raises(services.PolicyInvalid) as refused:
        services.update_policy(
            tool=tool, changes={"approval_ttl_seconds": 900}, changed_by=world.alice
        )
    assert "reminder_after_seconds" in refused.value.message_dict


def test_sensitive_fields_may_name_nested_and_array_arguments(world: World) -> None:
    tool = world.tools["update_customer"]
    saved = services.update_policy(
        tool=tool,
        changes={"sensitive_fields": ["changes.email", "changes.phone", "changes.name"]},
        changed_by=world.alice,
    )
    assert saved.sensitive_fields == ["changes.email", "changes.phone", "changes.name"]


def test_a_tool_whose_code_is_gone_cannot_be_enabled(world: World) -> None:
    tool = world.tools["send_email"]
    Tool.objects.filter(pk=tool.pk).update(available=False, enabled=False)
    with pytest.raises(services.PolicyInvalid) as refused:
        services.update_policy(tool=tool, changes={"enabled": True}, changed_by=world.alice)
    assert list(refused.value.message_dict) == ["enabled"]


def test_only_policy_fields_can_be_changed(world: World) -> None:
    with pytest.raises(ValueError, match="risk"):
        services.update_policy(
            tool=world.tools["delete_customer"], changes={"risk": "read"}, changed_by=world.alice
        )


def test_the_database_refuses_a_retried_write_even_past_the_service(world: World) -> None:
    for name in ("send_email", "delete_customer"):
        with pytest.raises(IntegrityError), transaction.atomic():
            Tool.objects.filter(name=name).update(max_attempts=2)
    with pytest.raises(IntegrityError), transaction.atomic():
        Tool.objects.filter(name="search_docs").update(timeout_seconds=0)


@pytest.mark.parametrize("risk", list(Risk))
def test_the_defaults_of_every_risk_class_are_valid(risk: Risk) -> None:
    values = {
        **DEFAULTS[risk].as_fields(),
        "enabled": True,
        "sensitive_fields": [],
        "reminder_after_seconds": None,
        "escalation_group": None,
    }
    assert validate_policy(risk=risk, values=values, input_schema={"type": "object"}) == {}
    assert DEFAULTS[Risk.DESTRUCTIVE].approvals_required == 2
    assert DEFAULTS[Risk.DESTRUCTIVE].max_attempts == 1
    assert DEFAULTS[Risk.READ].max_attempts == 3


def test_concurrent_edits_are_validated_one_after_the_other(live_world: World) -> None:
    """Each edit alone is valid; together they are not (a reminder after the TTL). The row
    lock makes the second edit wait for the first and validate against its result."""
    tool = live_world.tools["send_email"]
    first_holds_the_lock = threading.Event()
    let_first_commit = threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                services.update_policy(
                    tool=tool, changes={"reminder_after_seconds": 1800}, changed_by=None
                )
                first_holds_the_lock.set()
                let_first_commit.wait(10)
        finally:
            connection.close()

    def second() -> None:
        first_holds_the_lock.wait(10)
        try:
            services.update_policy(
                tool=tool, changes={"approval_ttl_seconds": 900}, changed_by=None
            )
            outcome["second"] = "saved"
        except services.PolicyInvalid as exc:
            outcome["second"] = sorted(exc.message_dict)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_holds_the_lock.wait(10)
    time.sleep(0.3)
    assert threads[1].is_alive(), "the second edit must wait for the first one's lock"
    let_first_commit.set()
    for thread in threads:
        thread.join(10)
    assert outcome["second"] == ["reminder_after_seconds"]
    stored = Tool.objects.get(pk=tool.pk)
    assert (stored.reminder_after_seconds, stored.approval_ttl_seconds) == (1800, 3600)
    assert stored.policy_version == tool.policy_version + 1


PATTERN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string"}, "pattern": {"type": "string"}},
    "required": ["code", "pattern"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (
            "args.code.matches(args.pattern)",
            "Rule 1: matches() takes its pattern as a string literal, "
            'like args.code.matches("^[A-Z]{3}$"), not a value of the call.',
        ),
        (
            "matches(args.code, args.pattern)",
            "Rule 1: matches() takes its pattern as a string literal, "
            'like args.code.matches("^[A-Z]{3}$"), not a value of the call.',
        ),
        (
            'args.code.matches("(unclosed")',
            "Rule 1: the pattern '(unclosed' is not a regular expression RE2 reads: "
            "missing ): (unclosed.",
        ),
    ],
)
def test_a_pattern_is_a_valid_literal_or_the_rule_is_refused(
    world: World, capfd: pytest.CaptureFixture[str], condition: str, expected: str
) -> None:
    """A pattern from the call lets the agent choose what the rule matches (``.*``); an
    invalid literal was refused only as "cannot be evaluated", after re2 logged it."""
    with tool_in_code(input_schema=PATTERN_SCHEMA) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        with pytest.raises(services.PolicyInvalid) as refused:
            services.update_policy(
                tool=tool,
                changes={"rules": [{"when": condition, "then": "refuse"}]},
                changed_by=world.alice,
            )
    assert refused.value.message_dict["rules"] == [expected]
    assert "unclosed" not in capfd.readouterr().err
    assert Tool.objects.get(pk=tool.pk).rules == []


def test_a_pattern_taken_from_the_call_never_reaches_the_logs(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    """A rule saved before patterns had to be literals: re2 wrote the argument it could not
    read as a pattern (a secret, maybe) to stderr, the process's log. The rule still fails
    closed: the read is refused."""
    with tool_in_code(risk=Risk.READ, input_schema=PATTERN_SCHEMA) as spec:
        services.sync_tools()
        tool = Tool.objects.get(name=spec.name)
        rules = [{"when": "args.code.matches(args.pattern)", "then": "refuse"}]
        Tool.objects.filter(pk=tool.pk).update(rules=rules)
        world.agent.allowed_tools.add(tool)
        capfd.readouterr()
        secret = "(sk_live_4eC39HqLyjWDarjtT1zdp7dc"
        answer = world.api().submit(
            {"tool": spec.name, "arguments": {"code": "A", "pattern": secret}, "session_id": "s"}
        )
    assert answer.status_code == 403, answer.content
    assert answer.json()["error"]["code"] == "refused_by_policy"
    captured = capfd.readouterr()
    assert "sk_live" not in captured.err + captured.out
