"""Everything agent-supplied on a reviewer's page goes through one masking (approvals.display):
the reasoning, the session id, on_behalf_of, comments and notes, results and errors; with the
display forms a reviewer needs (an address's domain, a card's last four) and hidden or
direction-changing characters written out."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import mcp_types as types
import pytest

from approvals import before_after
from approvals.guards import arguments_hash
from approvals.models import Note, ToolCall
from approvals.services.decisions import decide
from tests.approvals.conftest import (
    ARGUMENTS,
    login,
    make_call,
    shown_state,
    with_free_form_names,
)
from tests.conftest import World
from tools_registry import services as registry_services
from tools_registry.models import Tool, Upstream
from tools_registry.services.upstreams import register_upstream, sync_upstream
from tools_registry.upstreams import mcp as upstream_mcp

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSJ9."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
SECRETS = {
    "stripe": "sk_live_51HkX2eK9zQwErTy",
    "card": "4111 1111 1111 1111",
    "password": "hunter2secret",
    "jwt": JWT,
}
REASONING = (
    f"Key {SECRETS['stripe']}, card {SECRETS['card']}, mail grace.hopper@example.org, "
    f"password: {SECRETS['password']}, token {SECRETS['jwt']}. Refund \u202eusd 0001\u202c now."
)


def test_the_reasoning_session_and_people_are_masked_for_reviewers(world: World, dave: Any) -> None:
    call = make_call(
        world,
        "send_email",
        reasoning=REASONING,
        session_id="sess-grace.hopper@example.org",
        on_behalf_of="grace.hopper@example.org",
    )
    decide(call_id=call.pk, reviewer=dave, verdict="reject", comment=f"Leaked {SECRETS['stripe']}")
    Note.objects.create(call=call, author=dave, text=f"card {SECRETS['card']} again")
    page = login(world.bob).get(f"/approvals/{call.pk}/").content.decode()
    for name, secret in SECRETS.items():
        assert secret not in page, name
    assert "grace.hopper@example.org" not in page
    assert "g***@example.org" in page  # enough to decide on: the domain
    assert "•••• 1111" in page  # the card's last four
    assert "[masked:secret:" in page  # secrets show nothing
    # The right-to-left override is written out, not obeyed.
    assert "\u202e" not in page and "&lt;U+202E&gt;" in page

    # The same call once it needs a person: the attention page masks it the same way.
    ToolCall.objects.filter(pk=call.pk).update(status="unknown")
    attention = login(world.bob).get("/approvals/attention/").content.decode()
    assert f'id="attention-{call.pk}"' in attention
    assert "grace.hopper@example.org" not in attention and "g***@example.org" in attention


def test_results_and_errors_are_masked_too(world: World) -> None:
    call = make_call(world)
    ToolCall.objects.filter(pk=call.pk).update(
        status="failed",
        error={"code": "tool_failed", "message": f"Gateway said {SECRETS['stripe']} is revoked"},
    )
    body = login(world.bob).get(f"/approvals/{call.pk}/").content.decode()
    assert SECRETS["stripe"] not in body and "[masked:secret:" in body


def test_the_queue_shows_facts_masked_for_display(world: World) -> None:
    make_call(
        world,
        "send_email",
        arguments={"to": "grace.hopper@example.org", "subject": "Hi", "body": "Hello."},
        session_id="sess-grace.hopper@example.org",
    )
    make_call(
        world,
        "issue_refund",
        arguments={
            "payment_id": "pay_0001",
            "amount_cents": 99000,
            "currency": "usd",
            "reason": "x",
        },
    )
    body = login(world.bob).get("/approvals/").content.decode()
    assert "grace.hopper@example.org" not in body
    assert "g***@example.org" in body
    assert "990.00 USD" in body


def _editor_json(page: str) -> dict[str, Any]:
    found = re.search(r'name="edited_arguments"[^>]*>(.*?)</textarea>', page, re.S)
    assert found
    return json.loads(html.unescape(found.group(1)))


def test_keys_that_read_alike_once_masked_are_all_shown(world: World) -> None:
    """Two addresses of one domain both read "a***@example.com": masked as keys of one map,
    the second took the first one's place and the reviewer saw one entry where the call has
    two. An agent could hide an entry on purpose: a key with a zero-width space is written
    out as "a<U+200B>b", the very key it may also send."""
    with_free_form_names(world)
    names = {
        "ada@example.com": "Ada Lovelace",
        "amy@example.com": "Amy Noether",
        "a\u200bb": "Hidden entry",
        "a<U+200B>b": "Visible entry",
    }
    call = make_call(world, arguments={**ARGUMENTS["send_email"], "names": names})
    page = login(world.bob).get(f"/approvals/{call.pk}/").content.decode()
    shown = _editor_json(page)["names"]
    assert len(shown) == 4
    assert sorted(shown.values()) == sorted(names.values())
    for name in names.values():
        assert name in page
    assert "ada@example.com" not in page and "amy@example.com" not in page


def test_a_correction_keeps_every_entry_of_a_map_whose_keys_read_alike(world: World) -> None:
    with_free_form_names(world)
    names = {"ada@example.com": "Ada", "amy@example.com": "Amy", "a\u200bb": "Hidden"}
    call = make_call(world, arguments={**ARGUMENTS["send_email"], "names": names})
    bob = login(world.bob)
    corrected = _editor_json(bob.get(f"/approvals/{call.pk}/").content.decode())
    corrected["subject"] = "Corrected"
    # The second entry, as shown to the reviewer in the call's order: Amy's.
    second = list(corrected["names"])[1]
    assert corrected["names"][second] == "Amy"
    corrected["names"][second] = "Amy Noether"
    response = bob.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "edited_arguments": json.dumps(corrected),
        },
    )
    assert response.status_code == 302
    call.refresh_from_db()
    assert call.arguments == {
        **ARGUMENTS["send_email"],
        "subject": "Corrected",
        "names": {**names, "amy@example.com": "Amy Noether"},
    }


def test_the_confirmation_phrase_never_carries_a_hidden_character(world: World) -> None:
    """What a reviewer types to approve a destructive call is the call's target, shown as
    the phrase to type: a direction-changing character in it was printed as it is (the id
    read "cus_0003" while it was another), where everything else writes it out."""
    tool = world.tools["delete_customer"]
    schema = json.loads(json.dumps(tool.input_schema))
    schema["properties"]["customer_id"] = {"type": "string", "maxLength": 64}
    tool.input_schema = schema
    tool.save()
    call = make_call(
        world,
        "delete_customer",
        arguments={"customer_id": "cus_\u202e3000", "reason": "Asked to be forgotten."},
    )
    bob = login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    assert 'class="confirm-phrase"' in page
    assert "\u202e" not in page
    assert '<code class="confirm-phrase">delete_customer</code>' in page
    assert "cus_&lt;U+202E&gt;3000" in page
    approved = bob.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "approve",
            "arguments_hash": call.arguments_hash,
            "state_hash": shown_state(bob, call),
            "confirmation": "delete_customer",
        },
        HTTP_HX_REQUEST="true",
    )
    assert "1 of 2 approvals" in approved.content.decode()


def test_the_page_carries_no_hash_to_try_guesses_of_a_masked_value_against(world: World) -> None:
    """A verdict binds to the arguments and the state the page showed, by their hashes. The
    bare SHA-256 of either, on the page, let whoever reads it try guesses of a value masked
    there offline: the canonical JSON of the arguments is known but for the masked part,
    and an address's local part (or a card's middle digits) is found in a moment. The page
    carries keyed digests instead, and a verdict on them still binds."""
    call = make_call(world, "update_customer")  # changes.email ada.l@example.com, masked
    bob = login(world.bob)
    page = bob.get(f"/approvals/{call.pk}/").content.decode()
    assert "ada.l@example.com" not in page and "a***@example.com" in page

    def guess(local: str) -> str:
        changes = {**ARGUMENTS["update_customer"]["changes"], "email": f"{local}@example.com"}
        return arguments_hash(
            tool_name="update_customer",
            tool_version=call.tool_version,
            arguments={**ARGUMENTS["update_customer"], "changes": changes},
        )

    assert guess("ada.l") == call.arguments_hash
    names = ("abe", "ada", "ada.l", "al", "amy", "ann")
    assert [n for n in names if guess(n)[:12] in page] == []
    state = before_after.current_state(call)
    assert state.hash and state.hash[:12] not in page

    # The page's form, as the browser sends it, still approves what it showed.
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
    approved = bob.post(f"/approvals/{call.pk}/decide/", {**fields, "verdict": "approve"})
    assert approved.status_code == 302
    assert ToolCall.objects.get(pk=call.pk).status in ("approved", "succeeded")


def test_an_imported_tools_description_shows_its_hidden_characters_written_out(
    world: World,
) -> None:
    """An upstream writes an imported tool's description, shown on each of its calls' pages:
    a right-to-left override in it reordered what reviewers read, where everything else an
    upstream or an agent wrote has it written out."""
    listed = [
        types.Tool(
            name="refund",
            description="Refunds \u202eUSD 0001\u202c, never more.\u200b",
            input_schema={"type": "object", "properties": {"order": {"type": "string"}}},
        )
    ]
    upstream = register_upstream(name="pay", kind=Upstream.Kind.MCP, url="http://pay.invalid/mcp")
    sync_upstream(
        upstream=upstream,
        enable_new=True,
        reader=lambda u: upstream_mcp.offer_from(u.name, listed),
    )
    tool = Tool.objects.get(name="pay__refund")
    world.agent.allowed_tools.add(tool)
    registry_services.grant_review(tool=tool, user=world.bob)
    world.tools["pay__refund"] = tool
    call = make_call(world, "pay__refund", arguments={"order": "o-1"})
    page = login(world.bob).get(f"/approvals/{call.pk}/").content.decode()
    assert "\u202e" not in page and "\u200b" not in page
    assert "Refunds &lt;U+202E&gt;USD 0001&lt;U+202C&gt;, never more.&lt;U+200B&gt;" in page
