"""Idempotency-Key: one call per (agent, key), replays, 409 in flight, 422 for another body.

The contract under concurrency (IETF Idempotency-Key draft, section 2.6): of any number
of simultaneous requests with one key and one body, exactly one is processed. Every other
one answers either the stored response of that request (same status, same call id), when
it completed before the duplicate looked, or ``409 idempotency_key_in_use`` with
``Retry-After: 1``, while it is still running. No duplicate ever creates a second call.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import ToolCall
from audit.canonical import canonical_json, sha256_hex
from audit.models import AuditEvent
from gateway.models import IdempotencyRecord
from tests.conftest import ApiClient, World
from tests.gateway.conftest import GET_CUSTOMER, SEND_EMAIL, in_threads
from tests.support.probe import install_probe_tool, stock_call
from tools_registry import services as registry_services
from tools_registry.models import Agent


def _submit_many(
    world: World, body: dict, key: str, count: int, *, answered: threading.Event | None = None
) -> list[tuple[int, dict, str]]:
    """``count`` threads submit ``body`` with ``key`` at once; ``answered`` is set as soon as
    the first of them has its answer."""

    def submit(_: int) -> tuple[int, dict, str]:
        response = world.api().submit(body, key=key)
        if answered is not None:
            answered.set()
        return response.status_code, response.json(), response.headers.get("Retry-After", "")

    return in_threads(count, submit)


def _assert_one_call_and_replays(
    world: World, results: list[tuple[int, dict, str]], key: str, ok_status: int
) -> Counter:
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {ok_status, 409}, statuses
    for status, body, retry_after in results:
        if status == 409:
            assert body["error"]["code"] == "idempotency_key_in_use"
            assert body["error"]["retryable"] is True
            assert retry_after == "1"
    ids = {body["id"] for status, body, _ in results if status == ok_status}
    calls = list(ToolCall.objects.filter(agent=world.agent, request_key=key))
    assert len(calls) == 1, f"{len(calls)} calls for one key"
    assert ids <= {str(calls[0].pk)}
    return statuses


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_identical_submissions_create_one_call(live_world: World) -> None:
    seen: Counter = Counter()
    for round_ in range(3):
        key = f"concurrent-write-{round_}-{uuid.uuid4()}"
        results = _submit_many(live_world, SEND_EMAIL, key, 50)
        seen += _assert_one_call_and_replays(live_world, results, key, 202)
        # Once the first request finished, the key answers with its response.
        again = live_world.api().submit(SEND_EMAIL, key=key)
        assert again.status_code == 202
        assert again.json()["id"] == str(ToolCall.objects.get(request_key=key).pk)
    print(f"150 concurrent duplicates over 3 keys: {dict(seen)}")
    assert ToolCall.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_identical_reads_run_once(
    live_world: World, probe_tool_cleanup: None
) -> None:
    probe = install_probe_tool(live_world)
    # The request that runs the read holds it until another request has been answered, so
    # that one arrived while the key was in flight, however slowly the threads start (a
    # fixed 0.5 s was once too short on a loaded 2-core machine).
    probe.hold = threading.Event()
    key = f"concurrent-read-{uuid.uuid4()}"
    results = _submit_many(live_world, stock_call(), key, 50, answered=probe.hold)
    statuses = _assert_one_call_and_replays(live_world, results, key, 200)
    assert statuses[409] >= 1
    assert probe.calls == 1
    replay = live_world.api().submit(stock_call(), key=key)
    assert replay.status_code == 200
    assert replay.json()["result"] == {"sku": "sku-1", "in_stock": 3}
    assert probe.calls == 1


def test_the_same_key_and_body_replays_the_first_answer(world: World) -> None:
    first = world.api().submit(SEND_EMAIL, key="k-1")
    second = world.api().submit(SEND_EMAIL, key="k-1")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert first.headers["Location"] == second.headers["Location"]
    assert second.headers["Retry-After"] == "5"
    assert ToolCall.objects.filter(request_key="k-1").count() == 1


def test_a_writes_first_answer_reads_byte_for_byte_like_its_replays(world: World) -> None:
    """The first answer is sent as its key's record stores it (PostgreSQL keeps a JSON
    object's keys in an order of its own), as a read's is: a client that hashes or signs
    what it got sees one answer, however often it asks."""
    first = world.api().submit(SEND_EMAIL, key="k-bytes")
    replay = world.api().submit(SEND_EMAIL, key="k-bytes")
    assert first.status_code == replay.status_code == 202
    assert replay.content == first.content
    assert replay.headers["Idempotent-Replayed"] == "true"


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_answered_from_the_reads_settled_call_reads_like_its_replays(
    live_world: World,
) -> None:
    """A duplicate that found the key in flight while the read was finishing (its record
    read just before the read's COMMIT, its call just after) answers from the call: sent as
    the key's record then stores it, byte for byte the first answer and every replay."""
    first = live_world.api().submit(GET_CUSTOMER, key="read-settled")
    assert first.status_code == 200
    # What the duplicate read of the key: still in flight, held by the running read.
    IdempotencyRecord.objects.filter(key="read-settled").update(
        state=IdempotencyRecord.State.IN_FLIGHT,
        response_status=None,
        response_body=None,
        locked_until=timezone.now() + timedelta(minutes=1),
    )
    racing = live_world.api().submit(GET_CUSTOMER, key="read-settled")
    replay = live_world.api().submit(GET_CUSTOMER, key="read-settled")
    assert racing.status_code == replay.status_code == 200
    assert racing.headers["Idempotent-Replayed"] == "true"
    assert racing.content == replay.content == first.content


def test_a_replayed_read_does_not_run_the_tool_again(world: World) -> None:
    first = world.api().submit(GET_CUSTOMER, key="read-1")
    second = world.api().submit(GET_CUSTOMER, key="read-1")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert ToolCall.objects.filter(request_key="read-1").count() == 1


def test_a_replay_spends_no_round(world: World) -> None:
    world.agent.max_rounds_per_session = 1
    world.agent.save()
    assert world.api().submit(SEND_EMAIL, key="once").status_code == 202
    assert world.api().submit(SEND_EMAIL, key="once").status_code == 202
    refused = world.api().submit(SEND_EMAIL, key="twice")
    assert refused.json()["error"]["code"] == "max_rounds_exceeded"


def test_the_same_key_with_another_body_is_422(world: World) -> None:
    assert world.api().submit(SEND_EMAIL, key="k-2").status_code == 202
    other = {**SEND_EMAIL, "arguments": {**SEND_EMAIL["arguments"], "to": "eve@example.com"}}
    response = world.api().submit(other, key="k-2")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert ToolCall.objects.filter(request_key="k-2").count() == 1


def test_a_key_whose_request_is_in_flight_is_409(world: World) -> None:
    IdempotencyRecord.objects.create(
        agent=world.agent,
        key="busy",
        request_hash=sha256_hex(canonical_json(SEND_EMAIL)),
        locked_until=timezone.now() + timedelta(seconds=60),
    )
    response = world.api().submit(SEND_EMAIL, key="busy")
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert not ToolCall.objects.filter(request_key="busy").exists()


def test_an_abandoned_in_flight_key_is_taken_over(world: World) -> None:
    IdempotencyRecord.objects.create(
        agent=world.agent,
        key="abandoned",
        request_hash=sha256_hex(canonical_json(SEND_EMAIL)),
        locked_until=timezone.now() - timedelta(seconds=1),
    )
    response = world.api().submit(SEND_EMAIL, key="abandoned")
    assert response.status_code == 202
    assert ToolCall.objects.filter(request_key="abandoned").count() == 1


def died_before_answering(key: str) -> None:
    """As if the process died after the call's commit, before the response was stored."""
    IdempotencyRecord.objects.filter(key=key).update(
        state=IdempotencyRecord.State.IN_FLIGHT,
        response_status=None,
        response_body=None,
        locked_until=timezone.now() - timedelta(seconds=1),
    )


def test_a_request_that_died_after_creating_its_call_is_answered_with_that_call(
    world: World,
) -> None:
    created = world.api().submit(SEND_EMAIL, key="died").json()
    died_before_answering("died")
    response = world.api().submit(SEND_EMAIL, key="died")
    assert response.status_code == 202
    assert response.json()["id"] == created["id"]
    assert ToolCall.objects.filter(request_key="died").count() == 1


def test_the_answer_of_a_request_that_died_reads_byte_for_byte_like_its_replays(
    world: World,
) -> None:
    first = world.api().submit(SEND_EMAIL, key="died-bytes")
    died_before_answering("died-bytes")
    taken_over = world.api().submit(SEND_EMAIL, key="died-bytes")
    replay = world.api().submit(SEND_EMAIL, key="died-bytes")
    assert first.status_code == taken_over.status_code == replay.status_code == 202
    assert taken_over.headers["Idempotent-Replayed"] == "true"
    assert taken_over.content == replay.content == first.content


def test_a_call_approved_as_it_arrived_by_a_request_that_died_is_answered_as_at_first(
    world: World,
) -> None:
    """Accepted and not yet done: 202, as the request that died would have answered."""
    registry_services.update_policy(
        tool=world.tools["send_email"],
        changes={"rules": [{"when": "true", "then": "approve"}]},
        changed_by=world.alice,
    )
    created = world.api().submit(SEND_EMAIL, key="died-approved")
    assert created.status_code == 202 and created.json()["status"] == "approved"
    died_before_answering("died-approved")
    response = world.api().submit(SEND_EMAIL, key="died-approved")
    assert response.status_code == 202, response.json()
    assert response.json()["id"] == created.json()["id"]
    assert world.api().submit(SEND_EMAIL, key="died-approved").status_code == 202


def test_keys_are_scoped_to_the_agent(world: World) -> None:
    other = Agent.objects.create(name="billing-bot", owner=world.alice)
    other.allowed_tools.add(world.tools["send_email"])
    _, token = registry_services.issue_token(agent=other)
    mine = world.api().submit(SEND_EMAIL, key="shared-key").json()
    theirs = ApiClient(token).submit(SEND_EMAIL, key="shared-key").json()
    assert mine["id"] != theirs["id"]


def test_a_refused_request_leaves_its_key_free(world: World) -> None:
    bad = {**SEND_EMAIL, "arguments": {"to": "not an address"}}
    assert world.api().submit(bad, key="fix-me").status_code == 400
    assert world.api().submit(SEND_EMAIL, key="fix-me").status_code == 202


def test_a_missing_or_malformed_key_is_refused(world: World) -> None:
    for key in [None, "", "   ", "x" * 256, "caf\u00e9", "line\nbreak", "tab\there"]:
        response = world.api().submit(SEND_EMAIL, key=key)
        assert response.status_code == 400, key
        assert response.json()["error"]["code"] == "idempotency_key_required"
    assert not ToolCall.objects.exists()


def test_a_key_of_255_printable_characters_is_accepted(world: World) -> None:
    assert world.api().submit(SEND_EMAIL, key="k" * 255).status_code == 202


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("body", [SEND_EMAIL, GET_CUSTOMER], ids=["write", "read"])
def test_a_key_whose_record_was_swept_is_refused_and_its_call_stays_the_only_one(
    live_world: World, body: dict
) -> None:
    """Past IDEMPOTENCY_KEY_TTL the key's record is swept, but the call it created keeps
    the key: the same key again is refused (422), nothing else is written, and the
    refusal is audited; a new key makes a new call."""
    first = live_world.api().submit(body, key="k-old")
    assert first.status_code in (200, 202), first.content
    IdempotencyRecord.objects.filter(key="k-old").delete()  # what the sweep does past the TTL
    refused = live_world.api().submit(body, key="k-old")
    assert refused.status_code == 422, refused.content
    error = refused.json()["error"]
    assert error["code"] == "idempotency_key_expired"
    (made,) = ToolCall.objects.filter(request_key="k-old")
    # An agent that lost the call's id is told which call the key made, not only "new key".
    assert error["details"] == {"call_id": str(made.pk)}
    assert f"/api/v1/tool-calls/{made.pk}" in error["suggestion"]
    assert ToolCall.objects.count() == 1
    assert not IdempotencyRecord.objects.filter(key="k-old").exists(), "rolled back whole"
    (audited,) = AuditEvent.objects.filter(action="call.refused")
    assert (audited.outcome, audited.tool_name) == ("idempotency_key_expired", body["tool"])
    again = live_world.api().submit(body, key="k-new")
    assert again.status_code == first.status_code
    assert ToolCall.objects.count() == 2
