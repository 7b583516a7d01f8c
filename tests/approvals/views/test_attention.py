"""The "needs attention" page: unknown and escalated calls, settled by a permitted person."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.html import escape

from approvals.execution import runner
from approvals.execution.claim import claim_call
from approvals.execution.finish import expire_lease
from approvals.guards import CONFLICTS
from approvals.models import Status, ToolCall
from approvals.services.notes import add_note
from audit.models import AuditEvent
from tests.conftest import World, executions_sent
from tests.support.calls import approved_call, delete_arguments, unknown_call
from tools_registry import services as registry_services
from tools_registry.models import Agent, Tool, Upstream
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams import openapi

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

PAGE = "/approvals/attention/"


def client_for(user: User, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def url(call: ToolCall, action: str = "") -> str:
    return f"{PAGE}{call.pk}/{action + '/' if action else ''}"


def audited(call: ToolCall, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(call_id=call.pk, action=action))


class TestList:
    def test_it_lists_unknown_calls_and_failed_destructive_calls(self, world: World, dora):
        unknown = unknown_call(world)
        failed = approved_call(world, "delete_customer", delete_arguments())
        runner.execute(failed.pk)  # no such customer: fails, escalated
        approved_call(world)  # nothing wrong with this one

        page = client_for(world.bob).get(PAGE)

        assert page.status_code == 200
        body = page.content.decode()
        assert f"attention-{unknown.pk}" in body
        assert f"attention-{failed.pk}" in body
        assert body.count('class="attention-item') == 2
        assert unknown.execution_key in body

    def test_it_says_whether_the_end_user_was_verified(self, world: World):
        call = unknown_call(world)
        # Set-up only: as a call named for a user by the agent alone would be stored.
        ToolCall.objects.filter(pk=call.pk).update(on_behalf_of="grace", end_user_source="named")

        body = client_for(world.bob).get(PAGE).content.decode()

        assert (
            '<dd>grace <span class="tag" title="named by the agent; nothing verifies it">unverified</span></dd>'
            in body
        )

    def test_it_shows_only_the_tools_the_person_may_review(self, world: World):
        email = unknown_call(world, "send_email")
        refund = unknown_call(world, "issue_refund")
        erin = User.objects.create_user("erin", "erin@example.com", "pw")
        registry_services.grant_review(tool=world.tools["issue_refund"], user=erin)

        body = client_for(erin).get(PAGE).content.decode()

        assert f"attention-{refund.pk}" in body
        assert f"attention-{email.pk}" not in body
        assert (
            "Nothing needs your attention" in client_for(world.charlie).get(PAGE).content.decode()
        )
        assert client_for(world.charlie).get(url(email)).status_code == 403

    def test_an_htmx_request_gets_only_the_list(self, world: World):
        unknown_call(world)
        page = client_for(world.bob).get(PAGE, HTTP_HX_REQUEST="true")
        body = page.content.decode()
        assert body.lstrip().startswith('<div id="attention-list">')
        assert "<html" not in body

    def test_what_the_agent_wrote_is_escaped(self, world: World):
        call = unknown_call(world)
        ToolCall.objects.filter(pk=call.pk).update(
            arguments={"to": "a@example.com", "subject": "<script>x()</script>", "body": "b"}
        )
        body = client_for(world.bob).get(PAGE).content.decode()
        assert "<script>x()" not in body
        assert "&lt;script&gt;x()" in body

    def test_the_agents_owner_sees_the_call_but_no_actions(self, world: World):
        call = unknown_call(world)
        registry_services.grant_review(tool=world.tools["send_email"], user=world.alice)
        body = client_for(world.alice).get(PAGE).content.decode()
        assert f"attention-{call.pk}" in body
        assert "You own the agent that made this call. Another reviewer must settle it." in body
        assert url(call, "resolve") not in body


class TestResolve:
    def test_a_reviewer_marks_an_unknown_call_succeeded_and_it_is_audited(self, world: World):
        call = unknown_call(world)

        response = client_for(world.bob).post(
            url(call, "resolve"), {"outcome": "succeeded", "note": "The outbox shows it."}
        )

        assert response.status_code == 302
        call.refresh_from_db()
        assert call.status == Status.SUCCEEDED
        assert call.needs_attention is False
        [event] = audited(call, "call.resolved")
        assert event.actor_label == "bob"
        assert event.data == {
            "previous_status": "unknown",
            "note": "The outbox shows it.",
            "fence": call.fence,
        }

    def test_marking_the_outcome_needs_a_note(self, world: World):
        call = unknown_call(world)
        response = client_for(world.bob).post(url(call, "resolve"), {"outcome": "failed"})
        assert response.status_code == 409
        assert "Say how you established the outcome" in response.content.decode()
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_a_form_filled_wrong_is_a_400_and_changes_nothing(self, world: World):
        call = unknown_call(world)
        response = client_for(world.bob).post(url(call, "resolve"), {"outcome": "maybe"})
        assert response.status_code == 400
        assert "Choose whether the effect happened" in response.content.decode()
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_a_failed_destructive_call_can_be_acknowledged_but_not_marked_succeeded(
        self, world: World, dora
    ):
        call = approved_call(world, "delete_customer", delete_arguments())
        runner.execute(call.pk)
        bob = client_for(world.bob)

        refused = bob.post(url(call, "resolve"), {"outcome": "succeeded", "note": "sure"})
        assert refused.status_code == 409
        acknowledged = bob.post(url(call, "resolve"), {"outcome": "failed", "note": "Gone anyway."})

        assert acknowledged.status_code == 302
        call.refresh_from_db()
        assert call.status == Status.FAILED
        assert call.needs_attention is False
        assert f"attention-{call.pk}" not in bob.get(PAGE).content.decode()

    def test_a_failed_destructive_call_is_never_run_again_by_one_person(
        self, world: World, dora, django_capture_on_commit_callbacks
    ):
        """Two reviewers approved it once; one person alone may not send it again."""
        call = approved_call(world, "delete_customer", delete_arguments())
        runner.execute(call.pk)
        call.refresh_from_db()
        assert (call.status, call.needs_attention) == (Status.FAILED, True)
        bob = client_for(world.bob)
        assert "Re-run with the same key" not in bob.get(PAGE).content.decode()
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = bob.post(url(call, "rerun"), {"confirm": "on", "note": "again"})
        assert response.status_code == 409
        assert "A destructive call runs once" in response.content.decode()
        assert executions_sent(callbacks) == []
        call.refresh_from_db()
        assert call.status == Status.FAILED

    def test_an_outsider_gets_403_and_nothing_changes(self, world: World):
        call = unknown_call(world)
        response = client_for(world.charlie).post(
            url(call, "resolve"), {"outcome": "succeeded", "note": "trust me"}
        )
        assert response.status_code == 403
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN
        assert audited(call, "call.resolved") == []

    def test_the_agents_owner_may_not_settle_its_call(self, world: World):
        call = unknown_call(world)
        registry_services.grant_review(tool=world.tools["send_email"], user=world.alice)
        response = client_for(world.alice).post(
            url(call, "resolve"), {"outcome": "failed", "note": "never happened"}
        )
        assert response.status_code == 409
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_the_user_their_token_named_by_e_mail_may_not_settle_their_call(self, world: World):
        """bob signs in with a password: the token's ``sub`` is no name of his account, the
        e-mail address it gave (kept on the call) is (tests/gateway/test_end_users.py)."""
        call = unknown_call(world)
        ToolCall.objects.filter(pk=call.pk).update(
            on_behalf_of="00u1bob", end_user_source="verified", end_user_aliases=["bob@example.com"]
        )
        for action, form in [
            ("resolve", {"outcome": "failed", "note": "never happened"}),
            ("rerun", {"confirm": "on", "note": "again"}),
        ]:
            response = client_for(world.bob).post(url(call, action), form)
            assert response.status_code == 409, action
            assert "on your behalf" in response.content.decode()
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_a_post_without_the_csrf_token_is_refused(self, world: World):
        call = unknown_call(world)
        client = client_for(world.bob, enforce_csrf_checks=True)
        response = client.post(url(call, "resolve"), {"outcome": "failed", "note": "n"})
        assert response.status_code == 403
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_an_htmx_resolution_swaps_in_the_card(self, world: World):
        call = unknown_call(world)
        response = client_for(world.bob).post(
            url(call, "resolve"),
            {"outcome": "failed", "note": "Bounced."},
            HTTP_HX_REQUEST="true",
        )
        body = response.content.decode()
        assert response.status_code == 200
        assert body.lstrip().startswith(
            f'<article class="attention-item card" id="attention-{call.pk}"'
        )
        assert "no longer needs attention" in body


SHOP = {
    "openapi": "3.1.0",
    "info": {"title": "Shop", "version": "1"},
    "servers": [{"url": "http://shop.invalid"}],
    "paths": {
        "/orders": {
            "post": {
                "operationId": "create_order",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": {"item": {"type": "string"}}}
                        }
                    }
                },
                "responses": {"201": {"description": "The order"}},
            }
        }
    },
}


def unknown_order(world: World, idempotency_header: str) -> ToolCall:
    """An order of an imported HTTP API whose worker went silent (its outcome unknown)."""
    upstream = register_upstream(
        name="shop",
        kind=Upstream.Kind.OPENAPI,
        url="http://shop.invalid/openapi.json",
        idempotency_header=idempotency_header,
    )
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: openapi.offer(
            SHOP, upstream=u.name, document_url=u.url, base_url="", reserved_headers=frozenset()
        ),
    )
    tool = Tool.objects.get(name="shop__create_order")
    world.agent.allowed_tools.add(tool)
    registry_services.grant_review(tool=tool, user=world.bob)
    world.tools[tool.name] = tool
    call = approved_call(world, tool.name, {"item": "espresso beans"})
    assert claim_call(call_id=call.pk) is not None
    assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    return call


MAY_REPEAT = "running it again may repeat the effect"


class TestRerun:
    def test_the_confirmation_says_a_re_run_may_repeat_the_effect_of_an_api_not_known_to_refuse_repeats(
        self, world: World
    ):
        """The confirmation said only that a downstream which does not refuse repeats gets
        the effect twice, for every tool; Countersign knows which tools those are."""
        call = unknown_order(world, idempotency_header="")
        body = client_for(world.bob).get(url(call) + "?confirm=rerun").content.decode()
        assert 'name="confirm"' in body
        assert (
            "<strong>Nothing says this tool's downstream refuses repeats of the key: if the "
            f"first attempt did happen, {MAY_REPEAT}</strong>"
        ) in body

    def test_the_confirmation_of_a_tool_whose_downstream_refuses_repeats_says_so(
        self, world: World
    ):
        for call in (unknown_order(world, "Idempotency-Key"), unknown_call(world, "send_email")):
            body = client_for(world.bob).get(url(call) + "?confirm=rerun").content.decode()
            assert 'name="confirm"' in body
            assert MAY_REPEAT not in body
            assert "known to refuse repeats of the key" in body

    def test_the_confirmation_is_shown_on_get_and_changes_nothing(self, world: World):
        call = unknown_call(world)
        page = client_for(world.bob).get(url(call) + "?confirm=rerun", HTTP_HX_REQUEST="true")
        body = page.content.decode()
        assert 'name="confirm"' in body
        assert call.execution_key in body
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_a_rerun_without_the_confirmation_is_refused(
        self, world: World, django_capture_on_commit_callbacks
    ):
        call = unknown_call(world)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = client_for(world.bob).post(url(call, "rerun"), {"note": "go"})
        assert response.status_code == 409
        assert 'name="confirm"' in response.content.decode()
        assert callbacks == []
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN

    def test_a_confirmed_rerun_goes_back_to_the_executor_with_the_same_key(
        self, world: World, django_capture_on_commit_callbacks
    ):
        call = unknown_call(world)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = client_for(world.bob).post(
                url(call, "rerun"), {"confirm": "on", "note": "Checked: nothing was sent."}
            )
        assert response.status_code == 302
        assert executions_sent(callbacks) == [call.pk]
        call.refresh_from_db()
        assert call.status == Status.APPROVED
        [event] = audited(call, "call.rerun")
        assert event.actor_label == "bob"
        assert event.data["idempotency_key"] == call.execution_key
        assert event.data["confirmed_by_person"] is True

        outcome = runner.execute(call.pk)
        assert outcome is not None and outcome.status == Status.SUCCEEDED


class TestRecheck:
    def test_asking_again_settles_a_call_whose_effect_is_found(self, world: World):
        from sandbox import effects

        call = unknown_call(world)
        effects.apply_once(tool="send_email", key=call.execution_key, effect=lambda: {"ok": 1})

        response = client_for(world.bob).post(url(call, "recheck"), HTTP_HX_REQUEST="true")

        assert "found the effect" in response.content.decode()
        call.refresh_from_db()
        assert call.status == Status.SUCCEEDED
        [event] = audited(call, "call.reconciled")
        assert event.actor_label == "bob"

    def test_asking_again_never_reruns_by_itself(self, world: World):
        call = unknown_call(world)
        response = client_for(world.bob).post(url(call, "recheck"), HTTP_HX_REQUEST="true")
        assert "no record of the effect" in response.content.decode()
        call.refresh_from_db()
        assert call.status == Status.UNKNOWN
        assert call.needs_attention is True
        # Asked again, nothing new: still audited, in the name of who asked.
        client_for(world.bob).post(url(call, "recheck"), HTTP_HX_REQUEST="true")
        asked = sorted(audited(call, "call.rechecked"), key=lambda e: e.id)
        assert [(e.actor_label, e.data["finding"]) for e in asked] == [("bob", "not_found")] * 2
        assert [e.data["then"] for e in asked] == ["escalated", "unchanged"]


def test_the_attention_page_is_never_cached(world: World) -> None:
    unknown_call(world)
    response = client_for(world.bob).get(PAGE)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]


def test_an_outcome_is_marked_only_for_the_attempts_the_person_was_shown(world: World) -> None:
    """bob looked at attempt 1 and found no effect; meanwhile reconciliation ran it again,
    that attempt had its effect, and its worker went silent (unknown again). His 'it did
    not happen', or a re-run, is about attempt 1: refused, with the call as it is now."""
    from datetime import timedelta

    from django.utils import timezone

    from approvals.execution.claim import claim_call
    from approvals.execution.finish import expire_lease
    from approvals.services.recovery import reconcile_call
    from tests.conftest import sandbox_effects

    call = unknown_call(world)
    bob = client_for(world.bob)
    page = bob.get(PAGE).content.decode()
    shown_fence = ToolCall.objects.get(pk=call.pk).fence
    assert f'name="fence" value="{shown_fence}"' in page
    assert f"confirm=rerun&amp;fence={shown_fence}" in page
    assert reconcile_call(call_id=call.pk).action == "rerun"
    claim = claim_call(call_id=call.pk)
    assert claim is not None and runner.run_handler(claim).status == Status.SUCCEEDED
    assert expire_lease(call_id=call.pk, now=timezone.now() + timedelta(hours=1))
    assert len(sandbox_effects()) == 1

    marked = bob.post(
        url(call, "resolve"),
        {"outcome": "failed", "note": "Nothing in the mail log.", "fence": shown_fence},
        HTTP_HX_REQUEST="true",
    )
    assert "ran again since it was shown to you" in marked.content.decode()
    # The re-run's confirmation, asked from the card as it was shown, keeps its fence.
    confirming = bob.get(f"{url(call)}?confirm=rerun&fence={shown_fence}").content.decode()
    assert f'name="fence" value="{shown_fence}"' in confirming
    rerun = bob.post(
        url(call, "rerun"), {"confirm": "on", "fence": shown_fence}, HTTP_HX_REQUEST="true"
    )
    assert "ran again since it was shown to you" in rerun.content.decode()
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN and not audited(call, "call.resolved")


def test_only_members_of_the_teams_a_call_needs_settle_it_or_run_it_again(
    world: World, dora: User
) -> None:
    """A re-run is another go at the effect the call's approvers allowed, and its outcome
    decides whether the agent may try again: both were open to any reviewer of the tool,
    even one the call's rule kept from approving it."""
    from django.contrib.auth.models import Group

    world.bob.groups.add(Group.objects.create(name="finance"))
    rule = {"when": "true", "then": "require", "approvals": 1, "team": "finance"}
    registry_services.update_policy(
        tool=world.tools["send_email"], changes={"rules": [rule]}, changed_by=world.alice
    )
    world.tools["send_email"].refresh_from_db()
    call = unknown_call(world)  # approved by bob, of finance
    outsider = client_for(dora)
    page = outsider.get(PAGE).content.decode()
    assert "This call&#x27;s approvals come from the finance team." in page
    assert url(call, "resolve") not in page
    resolved = outsider.post(url(call, "resolve"), {"outcome": "failed", "note": "checked"})
    rerun = outsider.post(url(call, "rerun"), {"confirm": "on", "note": "again"})
    assert (resolved.status_code, rerun.status_code) == (409, 409)
    assert "approvals come from the finance team" in resolved.content.decode()
    call.refresh_from_db()
    assert call.status == Status.UNKNOWN
    assert audited(call, "call.resolved") == audited(call, "call.rerun") == []
    member = client_for(world.bob).post(url(call, "resolve"), {"outcome": "failed", "note": "n"})
    assert member.status_code in (200, 302)
    call.refresh_from_db()
    assert call.status == Status.FAILED


def test_the_list_costs_the_same_queries_however_many_calls_it_shows(
    world: World, dora: User
) -> None:
    """Each card shows the call's verdicts and notes with who wrote them, and whether the
    person may settle it (a conflict of interest, a team the call needs): read with the
    list, not a query or more per card (the page shows up to 200). Each card still says
    its own call's reason."""
    from django.contrib.auth.models import Group

    Group.objects.create(name="finance")  # dora is not in it
    billing = Agent.objects.create(name="billing-bot", owner=world.alice)
    registry_services.issue_token(agent=billing, label="dora's", created_by=dora)
    reasons = {
        "for_dora": CONFLICTS["on_behalf_of"],
        "her_token": CONFLICTS["token_issuer"],
        "finance": "This call's approvals come from the finance team.",
    }
    made: list[str] = []

    def add(calls: int) -> None:
        for _ in range(calls):
            call = unknown_call(world)
            add_note(call_id=call.pk, author=world.bob, text="Checked the mail server.")
            kind = list(reasons)[len(made) % len(reasons)]
            # Set-up only: calls for dora, by the agent she issued a token to, and of a
            # rule that asks the finance team's approvals.
            changes = {
                "for_dora": {"on_behalf_of": "dora@example.com"},
                "her_token": {"agent": billing},
                "finance": {"policy": {**call.policy, "teams": ["finance"]}},
            }[kind]
            ToolCall.objects.filter(pk=call.pk).update(**changes)
            made.append(kind)

    def queries_for_page(client: Client) -> tuple[int, str]:
        with CaptureQueriesContext(connection) as queries:
            body = client.get(PAGE).content.decode()
        return len(queries.captured_queries), body

    dora_client = client_for(dora)
    add(3)
    queries_for_page(dora_client)  # warm-up: the first request of a session touches it
    few, _ = queries_for_page(dora_client)
    add(12)
    many, body = queries_for_page(dora_client)

    assert body.count('class="attention-item') == 15
    for kind, reason in reasons.items():
        assert body.count(f"{escape(reason)} Another reviewer must settle it.") == made.count(kind)
    assert many == few, f"3 calls: {few} queries, 15 calls: {many}"
