"""Everything agent-supplied on a reviewer's page goes through one masking (approvals.display):
the reasoning, the session id, on_behalf_of, comments and notes, results and errors; with the
display forms a reviewer needs (an address's domain, a card's last four) and hidden or
direction-changing characters written out."""

from __future__ import annotations

from typing import Any

from approvals.models import Note, ToolCall
from approvals.services.decisions import decide
from tests.approvals.conftest import login, make_call
from tests.conftest import World

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
