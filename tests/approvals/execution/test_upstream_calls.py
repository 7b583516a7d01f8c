"""Imported tools run through the same executor as code tools: approved calls reach a real
upstream exactly once, carrying their idempotency key; reads keep the read policy; what the
upstream answers (JSON, text, too big, a redirect, a refusal) becomes the call's outcome;
and through every fault (a worker killed mid-request, a 5xx after the effect, a timeout
after the effect) a key-honouring HTTP upstream ends with one effect per call, while an MCP
server that does not honour keys is never re-run by itself: a person decides."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from approvals import sweeps
from approvals.models import Status, ToolCall
from approvals.services.decisions import decide
from tests.conftest import World
from tests.support.upstreams import UPSTREAM_TOKEN, control, effects
from tests.support.upstreams.raw_http import RawHttpServer, bare_post, drip_headers
from tests.support.upstreams.raw_http import reply as raw_reply
from tests.support.web import WebProcess
from tests.support.workers import Worker, purge_queue, running_worker, wait_for
from tools_registry import services as registry_services
from tools_registry.models import Tool
from tools_registry.registry import ToolFailed
from tools_registry.upstreams import http as upstream_http
from tools_registry.upstreams import mcp as upstream_mcp

pytestmark = pytest.mark.django_db(transaction=True)

ORDER = {"item": "espresso beans", "quantity": 2}


def imported(world: World, name: str, kind: str, url: str, *more: str) -> None:
    """Register the upstream, enable its tools, let the agent call them and bob review them."""
    call_command(
        "add_upstream", name, f"--{kind}", url, "--enable", "--allow", world.agent.name,
        *more, stdout=StringIO(), stderr=StringIO(),
    )  # fmt: skip
    for tool in Tool.objects.filter(upstream__name=name):
        registry_services.grant_review(tool=tool, user=world.bob)


@pytest.fixture
def orders(live_world: World, http_upstream: WebProcess) -> World:
    imported(
        live_world, "orders", "openapi", f"{http_upstream.url}/openapi.json",
        "--header", f"Authorization: Bearer {UPSTREAM_TOKEN}",
        "--idempotency-header", "Idempotency-Key",  # it refuses a second effect for a key
    )  # fmt: skip
    return live_world


@pytest.fixture
def notes(live_world: World, mcp_upstream: WebProcess) -> World:
    imported(live_world, "notes", "mcp", f"{mcp_upstream.url}/mcp")
    return live_world


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    purge_queue()
    with running_worker(tmp_path=tmp_path) as running:
        yield running


def submit(world: World, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    response = world.api().submit({"tool": tool, "arguments": arguments, "session_id": "up"})
    assert response.status_code in (200, 202, 422, 502, 504), response.content
    answer: dict[str, Any] = response.json()
    if response.status_code == 422:
        # A read the upstream refused (ToolFailed): it would answer the same again.
        assert answer["error"]["code"] == "tool_failed", answer
        assert answer["error"]["retryable"] is False
    return answer


def approved(world: World, tool: str, arguments: dict[str, Any]) -> ToolCall:
    call = ToolCall.objects.get(pk=submit(world, tool, arguments)["id"])
    decide(call_id=call.pk, reviewer=world.bob, verdict="approve")
    return call


def settle(
    call: ToolCall, *, timeout: float = 30, statuses: tuple[str, ...] = ("succeeded",)
) -> ToolCall:
    wait_for(
        lambda: ToolCall.objects.get(pk=call.pk).status in statuses,
        timeout=timeout,
        message=f"call {call.pk} to reach {statuses}",
    )
    return ToolCall.objects.get(pk=call.pk)


def test_an_approved_http_call_reaches_the_upstream_once_with_its_key(
    orders: World, http_upstream: WebProcess, worker: Worker
) -> None:
    call = settle(approved(orders, "orders__create_order", ORDER))
    assert call.result is not None and call.result["item"] == "espresso beans"
    assert effects(http_upstream)["effects"] == {call.execution_key: 1}


def test_an_approved_mcp_call_reaches_the_server_once_with_its_key_in_meta(
    notes: World, mcp_upstream: WebProcess, worker: Worker
) -> None:
    call = settle(approved(notes, "notes__write_note", {"text": "Call Ada back."}))
    assert call.result == {"written": "Call Ada back.", "count": 1}
    assert effects(mcp_upstream)["notes"] == [{"text": "Call Ada back.", "key": call.execution_key}]


def test_reads_run_at_once_and_answers_of_every_kind_are_stored(
    orders: World, notes: World, http_upstream: WebProcess
) -> None:
    listed = submit(notes, "notes__list_notes", {})
    assert listed["status"] == "succeeded" and listed["result"] == {"notes": []}
    text = submit(orders, "orders__read_note", {})
    assert text["result"] == {"text": "Plain words, not JSON."}
    big = submit(orders, "orders__read_big", {})["result"]
    assert big["truncated"] is True and len(big["text"]) == big["limit_bytes"] < 2_000_000
    moved = submit(orders, "orders__read_moved", {})
    assert moved["error"]["code"] == "tool_failed" and "evil.example" in moved["error"]["message"]
    assert moved["error"]["details"] == {"tool_code": "upstream_redirect"}
    missing = submit(orders, "orders__get_order", {"order_id": "ord_nope"})
    assert "No order ord_nope" in missing["error"]["message"]
    assert missing["error"]["details"] == {"tool_code": "upstream_404"}


@pytest.mark.parametrize("location", ["http://[::1", "http://a]b/"])  # httpx's, urlsplit's
def test_a_redirect_whose_location_is_no_url_fails_the_call_as_any_redirect(
    orders: World, http_upstream: WebProcess, location: str
) -> None:
    """A 3xx says the request was not carried out, whatever its Location holds: no retries,
    and a write's outcome is not left unknown (re-sent, then a person's)."""
    control(http_upstream, moved_to=location)
    moved = submit(orders, "orders__read_moved", {})
    assert moved["error"]["details"] == {"tool_code": "upstream_redirect"}
    assert effects(http_upstream)["paths"].count("/api/moved") == 1, "not tried again"


def test_arguments_never_move_a_request_off_its_path(
    orders: World, http_upstream: WebProcess
) -> None:
    """A path parameter is encoded into its one segment; '.' and '..' are refused."""
    answer = submit(orders, "orders__get_order", {"order_id": "x?admin=1#frag"})
    assert "No order x?admin=1#frag" in answer["error"]["message"], answer
    submit(orders, "orders__get_order", {"order_id": "../../_effects"})
    calls = [p for p in effects(http_upstream)["paths"] if p.startswith("/api/")]
    assert calls == ["/api/orders/x%3Fadmin%3D1%23frag", "/api/orders/..%2F..%2F_effects"]
    refused = submit(orders, "orders__get_order", {"order_id": ".."})
    assert "cannot be '..'" in refused["error"]["message"]
    after = [p for p in effects(http_upstream)["paths"] if p.startswith("/api/")]
    assert after == calls, "a refused value sends nothing"


def test_an_upstream_refusal_fails_the_call_and_nothing_is_retried(
    orders: World, http_upstream: WebProcess, worker: Worker
) -> None:
    call = settle(
        approved(orders, "orders__create_order", {"item": "chairs", "quantity": 60}),
        statuses=("failed",),
    )
    assert call.error is not None and call.error["code"] == "upstream_422"
    assert "No more than 50" in call.error["message"]
    assert effects(http_upstream)["requests"] == {call.execution_key: 1}


def reconcile_until(call: ToolCall, statuses: tuple[str, ...], *, timeout: float = 40) -> ToolCall:
    """Run the repairs beat would run (lease expiry, reconciliation) until the call gets there."""
    deadline = time.monotonic() + timeout
    while True:
        current = ToolCall.objects.get(pk=call.pk)
        if current.status in statuses and (current.status != "unknown" or current.needs_attention):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"call stayed {current.status}: {current.error}")
        later = timezone.now() + timedelta(hours=1) if current.status == Status.EXECUTING else None
        sweeps.expire_leases(now=later)
        sweeps.reconcile_unknown()
        sweeps.resend_stalled_approved(now=timezone.now() + timedelta(hours=1))
        time.sleep(0.3)


def test_a_5xx_after_the_effect_is_settled_by_sending_the_same_key_again(
    orders: World, http_upstream: WebProcess, worker: Worker
) -> None:
    control(http_upstream, fault="error_after_effect")
    call = settle(approved(orders, "orders__create_order", ORDER), statuses=("unknown",))
    control(http_upstream, fault="none")
    call = reconcile_until(call, ("succeeded",))
    seen = effects(http_upstream)
    assert seen["effects"] == {call.execution_key: 1}
    assert seen["requests"] == {call.execution_key: 2}, (
        "the re-run was answered by the first effect"
    )


def test_a_timeout_after_the_effect_is_settled_the_same_way(
    orders: World, http_upstream: WebProcess, worker: Worker
) -> None:
    Tool.objects.filter(name="orders__create_order").update(timeout_seconds=1)
    control(http_upstream, fault="sleep_after_effect", seconds=3)
    call = settle(approved(orders, "orders__create_order", ORDER), statuses=("unknown",))
    assert call.error is not None and call.error["code"] == "timeout"
    call = reconcile_until(call, ("succeeded",))
    assert effects(http_upstream)["effects"] == {call.execution_key: 1}


def test_a_worker_killed_during_the_request_is_settled_with_one_effect(
    orders: World, http_upstream: WebProcess, tmp_path: Path
) -> None:
    control(http_upstream, fault="sleep_after_effect", seconds=4)
    purge_queue()
    with running_worker(tmp_path=tmp_path, concurrency=1) as victim:
        call = approved(orders, "orders__create_order", ORDER)
        wait_for(lambda: effects(http_upstream)["effects"], message="the upstream's effect")
        victim.signal_group(signal.SIGKILL)
    control(http_upstream, fault="none")
    with running_worker(tmp_path=tmp_path) as _:
        call = reconcile_until(call, ("succeeded",))
    assert effects(http_upstream)["effects"] == {call.execution_key: 1}


def test_an_mcp_server_that_ignores_keys_is_never_rerun_by_itself(
    notes: World, mcp_upstream: WebProcess, worker: Worker
) -> None:
    Tool.objects.filter(name="notes__write_note").update(timeout_seconds=1)
    control(mcp_upstream, seconds_after_effect=3)
    call = settle(approved(notes, "notes__write_note", {"text": "once"}), statuses=("unknown",))
    call = reconcile_until(call, ("unknown",))
    assert call.needs_attention is True
    for _ in range(3):
        sweeps.reconcile_unknown(now=timezone.now() + timedelta(hours=1))
    time.sleep(4)
    assert ToolCall.objects.get(pk=call.pk).status == Status.UNKNOWN
    assert [n["key"] for n in effects(mcp_upstream)["notes"]] == [call.execution_key]


OPERATION = {
    "method": "POST",
    "path": "/things",
    "parameters": [
        {"name": "X-Api-Key", "in": "header"},
        {"name": "Authorization", "in": "header"},
    ],
    "body": None,
}


def test_the_upstreams_own_headers_win_over_header_arguments_and_never_come_back() -> None:
    """An agent's header argument named like one of the upstream's headers (in any case)
    is dropped: the admin's credential or tenant is what is sent. And a server that quotes
    the credential back in its error does not put it in the agent's answer."""
    received: list[dict[str, str]] = []

    def quote_the_credential(handler: Any, body: bytes) -> None:
        received.append({k.lower(): v for k, v in handler.headers.items()})
        quoted = handler.headers.get("authorization", "")
        raw_reply(handler, 401, {"error": {"message": f"Invalid credentials: {quoted}"}})

    echo = RawHttpServer(quote_the_credential)
    try:
        with pytest.raises(ToolFailed) as refused:
            upstream_http.call(
                operation=OPERATION,
                base_url=echo.url,
                upstream_headers=[
                    ("x-api-key", "ADMIN-KEY-0001"),
                    ("Authorization", "Bearer CANARY-123"),
                ],
                idempotency_header="Idempotency-Key",
                key="countersign-k",
                arguments={"X-Api-Key": "agent-chosen", "authorization": "Bearer agent"},
                timeout=5,
            )
    finally:
        echo.close()
    (sent,) = received
    assert sent["x-api-key"] == "ADMIN-KEY-0001" and sent["authorization"] == "Bearer CANARY-123"
    assert refused.value.code == "upstream_401"
    assert "CANARY-123" not in refused.value.message and "[credential]" in refused.value.message


def _drip_body(handler: Any, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", "40")
    handler.end_headers()
    try:
        for _ in range(40):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.3)
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize("drip", [_drip_body, drip_headers], ids=["body", "headers"])
def test_an_upstream_that_drips_its_answer_is_cut_off_at_the_tools_timeout(drip: Any) -> None:
    """A byte every 0.3 s, of the body or of the headers, keeps each read within the
    timeout; the whole answer may not take longer than the tool's timeout (a read holds a
    web thread meanwhile)."""
    server = RawHttpServer(drip)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            bare_post(server.url, path="/things", timeout=1)
    finally:
        server.close()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("drip", [None, drip_headers], ids=["answers", "drips"])
def test_an_upstream_is_called_through_the_environments_proxy_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, drip: Any
) -> None:
    """Deployments send upstream traffic out through an egress proxy (HTTP_PROXY): the
    request goes to it, and the tool's timeout still bounds the whole request."""
    asked: list[str] = []

    def proxy(handler: Any, body: bytes) -> None:
        asked.append(handler.path)  # the absolute URL a proxy is asked for
        (drip or (lambda h, b: raw_reply(h, 200, {"via": "proxy"})))(handler, body)

    server = RawHttpServer(proxy)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    started = time.monotonic()
    try:
        call = partial(bare_post, "http://upstream.invalid", path="/things", timeout=1)
        if drip is None:
            assert call() == {"via": "proxy"}
        else:
            with pytest.raises(TimeoutError):
                call()
    finally:
        server.close()
    assert asked == ["http://upstream.invalid/things"]
    assert time.monotonic() - started < 3


def test_a_proxy_the_environment_names_and_httpx_cannot_use_fails_the_call_unsent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing could be sent: the call failed, it did not end unknown (nor crash)."""
    monkeypatch.setenv("HTTP_PROXY", "ftp://proxy.invalid:21")
    with pytest.raises(ToolFailed) as failed:
        bare_post("http://upstream.invalid", path="/things", timeout=1)
    assert failed.value.code == "upstream_unreachable" and "proxy" in failed.value.message


def test_an_mcp_servers_big_answer_is_stored_truncated_and_a_huge_one_is_not_read(
    mcp_upstream: WebProcess, settings: Any
) -> None:
    """As an HTTP upstream's: an answer past UPSTREAM_MAX_RESPONSE_BYTES is stored cut and
    marked. One past UPSTREAM_MAX_DOCUMENT_BYTES is not read at all (a worker's memory): the
    call's outcome is unknown, never "refused, not run"."""
    settings.UPSTREAM_MAX_RESPONSE_BYTES = 1000
    settings.UPSTREAM_MAX_DOCUMENT_BYTES = 50_000

    def repeat(times: int) -> dict[str, Any]:
        return upstream_mcp.call(
            url=f"{mcp_upstream.url}/mcp",
            headers=[],
            tool="repeat_text",
            arguments={"text": "abcd", "times": times},
            key="countersign-big",
            timeout=10,
        )

    assert repeat(10) == {"text": "abcd" * 10}
    cut = repeat(1000)
    assert cut["truncated"] is True and cut["limit_bytes"] == 1000
    assert cut["text"].startswith('{"text": "abcdabcd') and len(cut["text"]) == 1000
    with pytest.raises(Exception) as unread:
        repeat(100_000)
    assert not isinstance(unread.value, ToolFailed)
    assert "larger than 50000 bytes" in str(unread.value)


@pytest.fixture
def sessions(live_world: World, mcp_upstream: WebProcess) -> World:
    """The MCP server that keeps sessions (and loses them on request)."""
    imported(live_world, "sessions", "mcp", f"{mcp_upstream.url}/sessions/mcp")
    return live_world


def test_an_mcp_call_whose_session_the_server_lost_is_sent_again_in_a_new_one(
    sessions: World, mcp_upstream: WebProcess, worker: Worker
) -> None:
    """The server ended the session (a restart) between initialize and tools/call: it
    answers 404, and the protocol asks the client to initialize again. The call was not
    read, so it is sent once more, in a new session, and runs once: it failed as
    upstream_404, a write no one had run reported failed."""
    control(mcp_upstream, lose_sessions=1)
    call = approved(sessions, "sessions__write_note", {"text": "Call Ada back."})
    call = settle(call, statuses=("succeeded", "failed", "unknown"))
    assert call.status == Status.SUCCEEDED, call.error
    assert call.result == {"written": "Call Ada back.", "count": 1}
    seen = effects(mcp_upstream)
    assert seen["sessions_to_lose"] == 0, "the first session was lost"
    assert seen["notes"] == [{"text": "Call Ada back.", "key": call.execution_key}]
    assert seen["requests"] == {call.execution_key: 1}


def test_an_mcp_call_whose_new_session_is_lost_too_fails_unrun(
    sessions: World, mcp_upstream: WebProcess, worker: Worker
) -> None:
    control(mcp_upstream, lose_sessions=2)
    call = approved(sessions, "sessions__write_note", {"text": "Call Ada back."})
    call = settle(call, statuses=("failed", "unknown"))
    assert call.status == Status.FAILED
    assert call.error is not None and call.error["code"] == "upstream_404", call.error
    assert effects(mcp_upstream)["sessions_to_lose"] == 0, "sent twice, in two sessions"
    assert effects(mcp_upstream)["notes"] == []
