"""Agent tokens: only a hash is stored, nothing logs the secret, and a revoked token or a
disabled agent is refused on the very next request."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from gateway import longpoll
from tests.conftest import ApiClient, World, events
from tests.support.probe import install_probe_tool, stock_call
from tests.support.uncommitted import uncommitted
from tools_registry import services
from tools_registry.models import Agent, AgentToken


def _parts(plaintext: str) -> tuple[str, str]:
    """(prefix, secret) of ``cst_<prefix>_<secret>``; the secret itself may contain "_"."""
    _, _, rest = plaintext.partition("_")
    prefix, _, secret = rest.partition("_")
    return prefix, secret


def _refused(response: object) -> bool:
    return (
        response.status_code == 401  # type: ignore[attr-defined]
        and response.json()["error"]["code"] == "not_authenticated"  # type: ignore[attr-defined]
    )


def test_a_revoked_token_is_refused_on_the_next_request(world: World) -> None:
    api = world.api()
    assert api.get("/api/v1/tools").status_code == 200
    token = AgentToken.objects.get(agent=world.agent)
    services.revoke_token(token=token, revoked_by=world.alice)
    assert _refused(api.get("/api/v1/tools"))
    assert _refused(
        api.submit({"tool": "search_docs", "arguments": {"query": "refund"}, "session_id": "s"})
    )
    [event] = events("token.revoked")
    assert (event.actor_label, event.data["token_prefix"]) == ("alice", token.prefix)
    # Revoking again is a no-op, not a second event.
    services.revoke_token(token=token, revoked_by=world.alice)
    assert len(events("token.revoked")) == 1


def test_a_disabled_agent_is_refused_at_once_and_enabled_again(world: World) -> None:
    api = world.api()
    services.set_enabled(agent=world.agent, enabled=False, changed_by=world.alice)
    assert _refused(api.get("/api/v1/tools"))
    assert _refused(
        api.submit({"tool": "search_docs", "arguments": {"query": "refund"}, "session_id": "s"})
    )
    [event] = events("agent.updated")
    assert event.data == {"before": {"enabled": True}, "after": {"enabled": False}}
    services.set_enabled(agent=world.agent, enabled=True, changed_by=world.alice)
    assert api.get("/api/v1/tools").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_disabling_an_agent_keeps_an_edit_committed_while_it_waited(live_world: World) -> None:
    """Alice's edit (more rounds) holds the agent's row when bob disables it: the disable waits for it, then keeps it. It read the
    agent before that wait and saved what it read, so the edit was undone, audited as bob's
    change back to the old value."""

    def edit() -> None:
        agent = Agent.objects.get(pk=live_world.agent.pk)
        agent.max_rounds_per_session = 42
        services.save_agent(agent=agent, changed_by=live_world.alice)

    with uncommitted(edit, commits_after=0.5):
        services.set_enabled(agent=live_world.agent, enabled=False, changed_by=live_world.bob)
    agent = Agent.objects.get(pk=live_world.agent.pk)
    assert (agent.enabled, agent.max_rounds_per_session) == (False, 42)
    assert events("agent.updated", actor_label="bob")[0].data == {
        "before": {"enabled": True},
        "after": {"enabled": False},
    }


@pytest.mark.django_db(transaction=True)
def test_a_read_that_outlasts_its_tokens_revocation_hands_it_no_result(
    live_world: World, probe_tool_cleanup: None
) -> None:
    """The read ran for longer than a long-poll's recheck, and the token (a leak found) was
    revoked meanwhile: the answer was the result, where a long-poll as long is refused. It
    is refused too; the agent's other tokens still get it from the key."""
    probe = install_probe_tool(live_world)
    probe.hold = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(live_world.api().submit, stock_call(), key="k-1")
        deadline = time.monotonic() + 10
        while probe.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        services.revoke_token(token=AgentToken.objects.get(agent=live_world.agent))
        time.sleep(longpoll.RECHECK_SECONDS)
        probe.hold.set()
        response = reading.result(timeout=30)
    assert _refused(response), response.content
    _, other = services.issue_token(agent=live_world.agent)
    replay = ApiClient(other).submit(stock_call(), key="k-1")
    assert (replay.status_code, replay.json()["result"]) == (200, {"sku": "sku-1", "in_stock": 3})


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # right prefix, wrong secret
        lambda t: t.split("_", 1)[1],  # no scheme
        lambda t: "cst_" + "0" * 10 + "_" + _parts(t)[1],  # unknown prefix
        lambda t: t + "x" * 200,  # too long
        lambda t: "",
    ],
)
def test_a_wrong_token_is_refused(world: World, mangle) -> None:
    assert _refused(ApiClient(mangle(world.token)).get("/api/v1/tools"))


def test_only_a_hash_of_the_token_is_stored_anywhere_in_the_database(world: World) -> None:
    _, plaintext = services.issue_token(agent=world.agent, created_by=world.alice, label="scan")
    api = ApiClient(plaintext)
    assert api.get("/api/v1/tools").status_code == 200
    assert (
        api.submit(
            {
                "tool": "send_email",
                "arguments": {"to": "a@example.com", "subject": "Hi", "body": "Hello."},
                "session_id": "s1",
            }
        ).status_code
        == 202
    )
    prefix, secret = _parts(plaintext)
    digest = hashlib.sha256(secret.encode()).hexdigest()

    def rows_containing(needle: str) -> list[str]:
        found = []
        with connection.cursor() as cursor:
            for table in connection.introspection.table_names():
                # Every column of every row, as text.
                cursor.execute(
                    f'SELECT 1 FROM "{table}" AS t WHERE t::text LIKE %s LIMIT 1',  # noqa: S608
                    [f"%{needle}%"],
                )
                if cursor.fetchone():
                    found.append(table)
        return found

    # The scan finds what is there (the public prefix, the hash) ...
    assert "tools_registry_agenttoken" in rows_containing(prefix)
    assert rows_containing(digest) == ["tools_registry_agenttoken"]
    # ... and the secret is nowhere, in no table.
    assert rows_containing(secret) == []
    assert rows_containing(secret[:16]) == []


def test_no_log_line_carries_the_token(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    connection.force_debug_cursor = True  # log every SQL statement and its parameters too
    try:
        _, plaintext = services.issue_token(agent=world.agent, created_by=world.alice)
        assert ApiClient(plaintext).get("/api/v1/tools").status_code == 200
        assert _refused(ApiClient(plaintext + "x").get("/api/v1/tools"))
        services.authenticate_token(plaintext)
    finally:
        connection.force_debug_cursor = False
    prefix, secret = _parts(plaintext)
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "SELECT" in text, "the capture must include the SQL log"
    # The lookup by the public prefix is logged, its value left out as every string is.
    assert "\"prefix\" = '...'" in text and prefix not in text
    assert secret not in text
    assert secret[:16] not in text


def test_the_last_used_time_is_recorded_at_most_once_a_minute(world: World) -> None:
    token = AgentToken.objects.get(agent=world.agent)
    assert token.last_used_at is None
    world.api().get("/api/v1/tools")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    world.api().get("/api/v1/tools")
    token.refresh_from_db()
    assert token.last_used_at == first
    AgentToken.objects.filter(pk=token.pk).update(
        last_used_at=timezone.now() - timedelta(minutes=2)
    )
    world.api().get("/api/v1/tools")
    token.refresh_from_db()
    assert token.last_used_at > first


def test_the_token_command_prints_the_token_once_and_audits_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("create_agent_token", world.agent.name, "--label", "cli")
    out, err = capsys.readouterr()
    plaintext = out.strip().splitlines()[-1]
    assert services.authenticate_token(plaintext) == world.agent
    assert plaintext not in err
    assert events("token.created")[-1].data["label"] == "cli"
