"""The events the issue lists that the walking skeleton did not record yet."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from approvals.execution import runner
from approvals.models import Status, ToolCall
from approvals.services.decisions import confirmation_phrase, decide
from audit.models import AuditEvent
from tests.conftest import World
from tests.support.workers import purge_queue
from tools_registry import services as registry_services
from tools_registry.admin import ToolPolicyForm


def test_a_refused_round_is_audited_after_the_rollback(world: World) -> None:
    world.agent.max_rounds_per_session = 1
    world.agent.save()
    body = {"tool": "search_docs", "arguments": {"query": "refund"}, "session_id": "tight"}
    assert world.api().submit(body).status_code == 200
    refused = world.api().submit(body)
    assert refused.status_code == 429 or refused.json()["error"]["code"] == "max_rounds_exceeded"
    event = AuditEvent.objects.get(action="call.refused")
    assert (event.outcome, event.session_id, event.tool_name) == (
        "max_rounds_exceeded",
        "tight",
        "search_docs",
    )


def test_a_failed_destructive_call_is_escalated(world: World) -> None:
    purge_queue()
    frank = User.objects.create_user("frank", "frank@example.com", "pw")
    registry_services.grant_review(tool=world.tools["delete_customer"], user=frank)
    response = world.api().submit(
        {
            "tool": "delete_customer",
            "arguments": {"customer_id": "cus_9999", "reason": "asked to be forgotten"},
            "session_id": "s",
        }
    )
    call = ToolCall.objects.get(pk=response.json()["id"])
    for reviewer in (world.bob, frank):
        decide(
            call_id=call.pk,
            reviewer=reviewer,
            verdict="approve",
            confirmation=confirmation_phrase(call),
            authenticated_at=timezone.now(),
        )
    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.status == Status.FAILED
    event = AuditEvent.objects.get(action="call.escalated", call_id=call.pk)
    assert "destructive" in event.data["reason"]
    purge_queue()


def test_a_policy_change_in_the_admin_is_audited_with_before_and_after(world: World) -> None:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    tool = world.tools["send_email"]
    fields = [
        "enabled", "timeout_seconds", "max_attempts", "rate_limit_per_agent",
        "rate_limit_per_user", "approvals_required", "approval_ttl_seconds",
        "breaker_threshold", "breaker_cooldown_seconds", "reminder_after_seconds",
    ]  # fmt: skip
    data = {name: getattr(tool, name) for name in fields}
    # No sensitive field ticked: the multi-select of argument paths posts nothing.
    data.update(enabled="on", reminder_after_seconds="", approvals_required=2)
    data["shown_state"] = ToolPolicyForm(instance=tool).initial["shown_state"]  # as the page
    data = {k: v for k, v in data.items() if v is not None}
    response = client.post(f"/admin/tools_registry/tool/{tool.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.get(action="tool.policy_changed")
    assert event.actor_label == "root"
    assert (event.data["before"], event.data["after"]) == (
        {"approvals_required": 1},
        {"approvals_required": 2},
    )
