"""Everything from an agent or a tool stays inert text; the pages keep a strict CSP."""

from __future__ import annotations

from html.parser import HTMLParser

from approvals.models import Status, ToolCall
from tests.approvals.conftest import make_call
from tests.conftest import World

PAYLOADS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    '<div hx-post="/approvals/" hx-trigger="load">x</div>',
    '" hx-get="/logout/" hx-trigger="load" x="',
    "{{ csrf_token }}{% debug %}",
]
EVIL = " ".join(PAYLOADS)


class Elements(HTMLParser):
    """Every element the browser would build from the page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def assert_inert(body: str) -> None:
    """No element, attribute or htmx instruction came from the payloads: only our own."""
    parser = Elements()
    parser.feed(body)
    for tag, attrs in parser.elements:
        assert tag not in {"img", "iframe", "object", "embed"}, (tag, attrs)
        if tag == "script":
            assert "src" in attrs, attrs
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, attrs)
            if name == "hx-trigger":
                assert value == "change, submit" or value.startswith("every "), attrs
            if name in {"hx-get", "hx-post"}:
                assert value.startswith("/approvals/") and "load" not in value, attrs
            if name == "x":
                raise AssertionError(f"an attribute from the payload: {attrs}")
    # And the payload is there, as text.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_arguments_reasoning_session_and_result_stay_text_on_the_call_page(
    world: World, bob_client
) -> None:
    call = make_call(
        world,
        "send_email",
        arguments={"to": "ada@example.com", "subject": EVIL, "body": EVIL},
        reasoning=EVIL,
        session_id='<b hx-get="/x">s</b>',
        on_behalf_of='<i onclick="x()">',
    )
    earlier = make_call(world, "update_customer", session_id='<b hx-get="/x">s</b>')
    ToolCall.objects.filter(pk=earlier.pk).update(status=Status.FAILED, error={"message": EVIL})
    ToolCall.objects.filter(pk=call.pk).update(status=Status.SUCCEEDED, result={"echo": EVIL})
    body = bob_client.get(f"/approvals/{call.pk}/").content.decode()
    assert_inert(body)
    assert '<b hx-get="/x">' not in body and "&lt;b hx-get=&quot;/x&quot;&gt;" in body
    assert '<i onclick="x()">' not in body
    assert "{% debug %}" in body, "template syntax from an agent is shown, not evaluated"


def test_the_preview_and_the_pending_page_stay_text(world: World, bob_client) -> None:
    call = make_call(
        world, "send_email", arguments={"to": "ada@example.com", "subject": EVIL, "body": "b"}
    )
    body = bob_client.get(f"/approvals/{call.pk}/").content.decode()
    preview = body[body.index('class="preview-text"') :]
    assert preview.index("&lt;script&gt;") < preview.index("</span>")
    assert_inert(body)


def test_the_queue_shows_agent_controlled_fields_as_text(world: World, bob_client) -> None:
    make_call(world, session_id="<script>alert(1)</script>")
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        body = bob_client.get("/approvals/", **headers).content.decode()
        assert "<script>alert(1)" not in body
        assert "&lt;script&gt;alert(1)" in body


def test_the_pages_send_a_strict_csp_with_a_nonce_and_no_inline_code(
    world: World, bob_client
) -> None:
    call = make_call(world)
    for url in ("/approvals/", f"/approvals/{call.pk}/", "/approvals/reauthenticate/"):
        response = bob_client.get(url)
        policy = response["Content-Security-Policy"]
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "script-src 'self' 'nonce-" in policy
        body = response.content.decode()
        nonce = policy.split("'nonce-")[1].split("'")[0]
        # Every script tag is external and carries the nonce; no inline handlers or styles.
        for tag in body.split("<script")[1:]:
            tag = tag.split(">")[0]
            assert "src=" in tag and f'nonce="{nonce}"' in tag, tag
        assert " style=" not in body
        assert " onclick=" not in body and " hx-on" not in body
