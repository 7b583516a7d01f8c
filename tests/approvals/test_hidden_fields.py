"""The values of a tool's secret and sensitive fields are masked wherever they show up, not
only in the arguments: the facts a queue row shows, the risk signals stored at intake, the
phrase a reviewer types, the current state of the record, and so the trail and its export."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm

from approvals import hidden
from approvals.execution import runner
from approvals.services.decisions import confirmation_phrase, decide
from audit.masking import masked
from audit.models import AuditEvent
from tests.approvals.conftest import make_call, shown_state
from tests.conftest import World
from tools_registry import services
from tools_registry.models import Tool
from tools_registry.permissions import REVEAL_PERMISSION

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

CUSTOMER = "cus_0003"  # delete_customer's argument in tests.approvals.conftest


def hide(world: World, tool_name: str, kind: str, field: str) -> Tool:
    tool = world.tools[tool_name]
    services.update_policy(
        tool=tool, changes={kind: [*getattr(tool, kind), field]}, changed_by=world.alice
    )
    world.tools[tool_name] = Tool.objects.get(pk=tool.pk)
    return world.tools[tool_name]


def pages(world: World, call_id: object) -> str:
    client = Client()
    client.force_login(world.bob)
    detail = client.get(f"/approvals/{call_id}/")
    queue = client.get("/approvals/")
    assert detail.status_code == queue.status_code == 200
    return detail.content.decode() + queue.content.decode()


@pytest.mark.parametrize("kind", ["secret_fields", "sensitive_fields"])
def test_a_hidden_target_shows_nowhere_to_reviewers(world: World, kind: str) -> None:
    hide(world, "delete_customer", kind, "customer_id")
    call = make_call(world, "delete_customer")
    assert call.arguments["customer_id"] == CUSTOMER
    assert [s["code"] for s in call.signals if s["code"] == "new_target"], call.signals

    html = pages(world, call.pk)
    assert CUSTOMER not in html, re.findall(rf".{{0,60}}{CUSTOMER}.{{0,30}}", html)
    # What is typed to approve is then the tool's name.
    assert confirmation_phrase(call) == "delete_customer"
    assert 'data-confirm-for="delete_customer"' in html


@pytest.mark.parametrize("kind", ["secret_fields", "sensitive_fields"])
def test_a_hidden_target_keeps_out_of_the_trail_and_its_export(world: World, kind: str) -> None:
    hide(world, "delete_customer", kind, "customer_id")
    call = make_call(world, "delete_customer")
    decide(
        call_id=call.pk,
        reviewer=world.bob,
        verdict="approve",
        confirmation=confirmation_phrase(call),
        authenticated_at=timezone.now(),
        shown_arguments_hash=call.arguments_hash,
    )
    stored = AuditEvent.objects.filter(call_id=call.pk).values_list("data", flat=True)
    assert stored and all(CUSTOMER not in str(data) for data in stored), list(stored)
    decision = AuditEvent.objects.get(call_id=call.pk, action="call.decision")
    assert decision.data["typed_confirmation"] == "delete_customer"
    assert decision.data["shown_state"]["title"].startswith("Customer [masked:field:")

    world.charlie.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    auditor = Client()
    auditor.force_login(world.charlie)
    export = auditor.get(f"/audit/export.jsonl?call={call.pk}")
    assert export.status_code == 200
    assert CUSTOMER not in b"".join(export.streaming_content).decode()


def test_a_sensitive_recipient_shows_in_part_and_its_signal_masked(world: World) -> None:
    hide(world, "send_email", "sensitive_fields", "to")
    call = make_call(world, "send_email")
    address = call.arguments["to"]
    html = pages(world, call.pk)
    assert address not in html
    domain = address.split("@")[1]
    assert domain in html, "an address's domain is what reviewers may see of it"
    signals = {s["code"]: s["detail"] for s in call.signals}
    assert address not in str(signals) and "new_recipient" in signals


def test_an_unhidden_target_is_still_shown_and_typed(world: World) -> None:
    call = make_call(world, "delete_customer")
    assert CUSTOMER in pages(world, call.pk)
    assert confirmation_phrase(call) == CUSTOMER


def test_a_session_id_the_detectors_mask_is_not_in_the_queue_page(world: World) -> None:
    """The queue links a session's id to filter by it; one holding personal data (masked
    where it is shown) is not linked, so it is not in the page's source either."""
    masked_session = make_call(world, session_id="ada@example.com-session")
    plain = make_call(world, session_id="run-7")
    html = pages(world, masked_session.pk)
    assert "ada@example.com" not in html and "ada%40example.com" not in html
    link = f'href="?agent={plain.agent.name}&amp;session=run-7"'
    assert link in html and plain.session_id == "run-7"


@pytest.mark.parametrize("kind", ["secret_fields", "sensitive_fields"])
def test_a_hidden_value_the_downstream_echoes_is_masked_in_the_result(
    world: World, kind: str
) -> None:
    """update_customer answers with the whole record: the new name, hidden at
    changes.name, comes back at customer.name. Masked there too, on the page and in the
    trail (the call's own stored result keeps it, for the agent)."""
    hide(world, "update_customer", kind, "changes.name")
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": name}},
    )
    decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash,
    )  # fmt: skip
    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.status == "succeeded" and call.result["customer"]["name"] == name
    assert name not in pages(world, call.pk)
    trail = [e for e in AuditEvent.objects.filter(call_id=call.pk) if name in str(e.data)]
    assert trail == [], [e.action for e in trail]


@pytest.mark.parametrize("kind", ["secret_fields", "sensitive_fields"])
def test_a_hidden_value_the_reasoning_quotes_is_masked_on_the_page_and_in_the_trail(
    world: World, kind: str
) -> None:
    """The agent's reasoning may quote what it put in a hidden field: masked there too, on
    the call's page, in the trail (proposed, run) and so on the auditor's pages."""
    hide(world, "update_customer", kind, "changes.name")
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": name}},
        reasoning=f"The customer asked to be called {name} from now on.",
    )
    html = pages(world, call.pk)
    assert name not in html and "asked to be called [masked:field:" in html
    decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash,
    )  # fmt: skip
    runner.execute(call.pk)
    trail = AuditEvent.objects.filter(call_id=call.pk)
    reasoned = {e.action: e.data["reasoning"] for e in trail if "reasoning" in e.data}
    assert set(reasoned) == {"call.submitted", "call.execution_started"}, reasoned
    assert all(
        r.startswith("The customer asked to be called [masked:field:") for r in reasoned.values()
    )
    assert [e.action for e in trail if name in str(e.data)] == []

    world.charlie.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    auditor = Client()
    auditor.force_login(world.charlie)
    for url in (
        f"/audit/calls/{call.pk}/",
        f"/audit/session/?agent={world.agent.name}&session=run-1",
    ):
        page = auditor.get(url)
        assert page.status_code == 200 and name not in page.content.decode(), url
    # The agent wrote it: its own call keeps it.
    call.refresh_from_db()
    assert name in call.reasoning


def test_a_hidden_value_the_reasoning_quotes_stays_masked_after_a_correction_replaced_it(
    world: World,
) -> None:
    """Once a correction replaced the hidden value, the call's arguments no longer hold it:
    the reasoning that quotes it is kept masked for good."""
    hide(world, "update_customer", "sensitive_fields", "changes.name")
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": name}},
        reasoning=f"The customer asked to be called {name} from now on.",
    )
    decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash,
        edited_arguments={"customer_id": "cus_0001", "changes": {"name": "Zeb Quixote"}},
    )  # fmt: skip
    html = pages(world, call.pk)
    assert name not in html and "asked to be called [masked:field:" in html
    runner.execute(call.pk)
    started = AuditEvent.objects.get(call_id=call.pk, action="call.execution_started")
    assert name not in started.data["reasoning"]


def test_what_is_masked_in_a_text_and_what_is_not() -> None:
    note = "Move them to the pro plan, see https://intra.example/t/991"
    secrets = [note, "cus_0003"]
    assert hidden.text("Customer cus_0003 (Alan)", secrets) == (
        f"Customer {masked('field', 'cus_0003')} (Alan)"
    )
    # A link quoted from the hidden note is a piece of it; a plan named "pro" is not.
    assert hidden.text("https://intra.example/t/991", secrets) == masked(
        "field", "https://intra.example/t/991"
    )
    assert hidden.value({"plan": "pro", "id": "cus_0003"}, secrets) == {
        "plan": "pro",
        "id": masked("field", "cus_0003"),
    }


@pytest.mark.parametrize("kind", ["secret_fields", "sensitive_fields"])
def test_a_hidden_value_a_failure_echoes_stays_masked_when_the_agent_retries(
    world: World, kind: str
) -> None:
    """The downstream's error quotes the hidden customer id ("No customer cus_0099."):
    masked in the result's event, and again in the retry's, which records that error."""
    hide(world, "update_customer", kind, "customer_id")
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0099", "changes": {"plan": "pro"}},
    )
    decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash,
    )  # fmt: skip
    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.status == "failed" and "cus_0099" in str(call.error)
    response = world.api().client.post(
        f"/api/v1/tool-calls/{call.pk}/retry", HTTP_AUTHORIZATION=f"Bearer {world.token}"
    )
    assert response.status_code == 202
    retry = AuditEvent.objects.get(call_id=call.pk, action="call.retry_requested")
    assert "[masked:field:" in str(retry.data["previous_error"])
    trail = [
        e.action for e in AuditEvent.objects.filter(call_id=call.pk) if "cus_0099" in str(e.data)
    ]
    assert trail == []


@pytest.mark.parametrize("kind", ["secret_fields", "sensitive_fields"])
def test_what_a_hidden_object_holds_is_masked_wherever_it_is_quoted(
    world: World, kind: str
) -> None:
    """A hidden field may hold an object (``changes``, every change to the record): masked
    whole in the arguments, and what is inside it is masked where it is quoted too: the
    reasoning, the state the call would change, the downstream's answer, the trail."""
    hide(world, "update_customer", kind, "changes")
    # Shorter than the pieces of a list looked for whole (``hidden.SHORTEST_PIECE``).
    short = "Ada Zed"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": short}},
        reasoning=f"The customer asked to be called {short} from now on.",
    )
    html = pages(world, call.pk)
    assert short not in html, re.findall(rf".{{0,60}}{short}.{{0,30}}", html)
    assert "asked to be called [masked:field:" in html
    decide(
        call_id=call.pk, reviewer=world.bob, verdict="approve",
        shown_arguments_hash=call.arguments_hash,
    )  # fmt: skip
    runner.execute(call.pk)
    call.refresh_from_db()
    assert call.status == "succeeded" and call.result is not None
    assert call.result["customer"]["name"] == short
    assert short not in pages(world, call.pk)
    trail = [e.action for e in AuditEvent.objects.filter(call_id=call.pk) if short in str(e.data)]
    assert trail == []


def test_the_values_inside_a_hidden_object_or_list_are_hidden_values() -> None:
    tool = Tool(name="t", sensitive_fields=["changes", "cc"])
    arguments = {
        "changes": {"name": "Ada Zed", "plan": {"tier": "pro"}, "seats": 12, "vip": True},
        "cc": ["Zebulon Quixote", "", None],
        "subject": "left as it is",
    }
    found = hidden.values(tool, arguments)
    for inside in ("Ada Zed", "pro", "12", "Zebulon Quixote"):
        assert inside in found, found
    # The keys are the schema's names, not secrets; true and null are no one's secret.
    assert not {"name", "plan", "tier", "seats", "true", "None", "left as it is"} & set(found)


def test_a_hidden_value_a_reviewer_quotes_is_masked_for_the_others_and_in_the_trail(
    world: World, dave: User
) -> None:
    """A reviewer who may reveal a hidden field saw its value, and may quote it in a
    comment or a note. Other reviewers (who may not reveal it) and the trail see it masked
    there, as in the agent's reasoning."""
    hide(world, "update_customer", "sensitive_fields", "changes.name")
    assign_perm(REVEAL_PERMISSION, dave, world.tools["update_customer"])
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": name}},
    )
    revealer = Client()
    revealer.force_login(dave)
    page = revealer.post(f"/approvals/{call.pk}/reveal/", {"reason": "Against ticket 4411."})
    assert name in page.content.decode()
    noted = revealer.post(f"/approvals/{call.pk}/notes/", {"text": f"4411 asks for {name}."})
    assert noted.status_code == 200
    shown = re.search(r'name="arguments_hash" value="(\w+)"', page.content.decode())
    assert shown is not None
    rejected = revealer.post(
        f"/approvals/{call.pk}/decide/",
        {"verdict": "reject", "comment": f"Not {name}.", "arguments_hash": shown.group(1)},
    )
    assert rejected.status_code == 302

    html = pages(world, call.pk)
    assert name not in html, re.findall(rf".{{0,60}}{name}.{{0,30}}", html)
    assert "4411 asks for [masked:field:" in html and "Not [masked:field:" in html
    trail = [e.action for e in AuditEvent.objects.filter(call_id=call.pk) if name in str(e.data)]
    assert trail == []


def test_a_hidden_value_a_reveal_reason_quotes_is_masked_in_the_trail_and_its_export(
    world: World, dave: User
) -> None:
    """Every look is its own request with its own reason: one who saw the value before may
    quote it in the reason for the next look, as in a comment or a note."""
    from tests.audit.conftest import make_auditor

    hide(world, "update_customer", "sensitive_fields", "changes.name")
    assign_perm(REVEAL_PERMISSION, dave, world.tools["update_customer"])
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": name}},
    )
    revealer = Client()
    revealer.force_login(dave)
    first = revealer.post(f"/approvals/{call.pk}/reveal/", {"reason": "Against ticket 4411."})
    assert name in first.content.decode()
    again = revealer.post(f"/approvals/{call.pk}/reveal/", {"reason": f"Is {name} on 4411?"})
    assert again.status_code == 200

    reasons = [
        e.data["reason"]
        for e in AuditEvent.objects.filter(
            call_id=call.pk, action="call.arguments_revealed"
        ).order_by("id")
    ]
    assert reasons[0] == "Against ticket 4411."
    assert reasons[1].startswith("Is [masked:field:") and name not in reasons[1]
    auditor = Client()
    auditor.force_login(make_auditor())
    for fmt in ("csv", "jsonl"):
        export = auditor.get(f"/audit/export.{fmt}")
        assert name not in b"".join(export.streaming_content).decode()


def test_the_trail_holds_no_bare_hash_of_what_it_masks(world: World) -> None:
    """A call's arguments hash, and the hash of the state its reviewer was shown, are
    SHA-256 over canonical JSON whose every other part the trail shows: kept bare, whoever
    reads the trail or its export could try guesses of a masked value against them (is the
    recipient ada@example.com?). The trail keeps keyed digests, equal where the hashes are."""
    hide(world, "send_email", "sensitive_fields", "to")
    call = make_call(
        world, "send_email", arguments={"to": "ada@example.com", "subject": "Hi", "body": "B"}
    )
    before = call.arguments_hash
    decide(
        call_id=call.pk,
        reviewer=world.bob,
        verdict="approve",
        edited_arguments={"to": "ada@example.com", "subject": "Hi", "body": "Better"},
    )
    runner.execute(call.pk)
    call.refresh_from_db()
    decision = call.decisions.get()
    bare = {before, call.arguments_hash, decision.arguments_hash}
    bare |= {decision.shown_state_hash} - {""}
    trail = " ".join(str(e.data) for e in AuditEvent.objects.filter(call_id=call.pk))
    assert "ada@example.com" not in trail
    assert not [h for h in bare if h in trail]
    submitted = AuditEvent.objects.get(call_id=call.pk, action="call.submitted")
    decided = AuditEvent.objects.get(call_id=call.pk, action="call.decision")
    edited = AuditEvent.objects.get(call_id=call.pk, action="call.arguments_edited")
    assert submitted.data["arguments_hash"] == edited.data["before_hash"]
    assert decided.data["arguments_hash"] == edited.data["arguments_hash"]
    assert decided.data["arguments_hash"] != submitted.data["arguments_hash"]


def test_a_hidden_value_a_reviewer_quoted_stays_masked_after_a_correction_replaced_it(
    world: World, dave: User
) -> None:
    """A reviewer who revealed a hidden value may quote it (a note, the comment of the
    approval that corrects it) and then correct it. The call's arguments then no longer hold
    it, so nothing would know to mask it: the notes and comments that quote it are kept
    masked for good, on the page of a reviewer who may not reveal it and in the trail."""
    hide(world, "update_customer", "sensitive_fields", "changes.name")
    assign_perm(REVEAL_PERMISSION, dave, world.tools["update_customer"])
    name = "Zebulon Quixote-Canary"
    call = make_call(
        world,
        "update_customer",
        arguments={"customer_id": "cus_0001", "changes": {"name": name}},
    )
    revealer = Client()
    revealer.force_login(dave)
    page = revealer.post(f"/approvals/{call.pk}/reveal/", {"reason": "Against ticket 4411."})
    assert name in page.content.decode()
    noted = revealer.post(f"/approvals/{call.pk}/notes/", {"text": f"4411 spells it {name}."})
    assert noted.status_code == 200
    shown = re.search(r'name="arguments_hash" value="(\w+)"', page.content.decode())
    assert shown is not None
    corrected = revealer.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "comment": f"{name} is misspelt.",
            "arguments_hash": shown.group(1),
            "state_hash": shown_state(revealer, call),
            "edited_arguments": '{"customer_id": "cus_0001", "changes": {"name": "Zeb Quixote"}}',
        },
    )
    assert corrected.status_code == 302, corrected.content.decode()[-2000:]
    call.refresh_from_db()
    assert call.arguments["changes"]["name"] == "Zeb Quixote"

    html = pages(world, call.pk)
    assert name not in html, re.findall(rf".{{0,60}}{name}.{{0,30}}", html)
    assert "4411 spells it [masked:field:" in html and "[masked:field:" in html
    trail = [e.action for e in AuditEvent.objects.filter(call_id=call.pk) if name in str(e.data)]
    assert trail == []
