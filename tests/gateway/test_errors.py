"""Every error code from a real request, in the one shape, with a useful suggestion; and no
body at all, however malformed or huge, produces a 500."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from approvals.models import ToolCall
from audit.models import AuditEvent
from tests.conftest import ApiClient, World
from tests.gateway.conftest import SEND_EMAIL
from tests.support.probe import install_probe_tool, stock_call
from tools_registry import services as registry_services
from tools_registry.models import Tool

# Its tests share one world (tests.conftest.module_world): each rolls back.
pytestmark = pytest.mark.usefixtures("module_world")


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error) >= {"code", "message", "suggestion", "retryable"}
    assert error["message"] and error["suggestion"]
    return error


def refusals(code: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="call.refused", outcome=code))


def post_raw(world: World, body: bytes, **headers: str) -> Any:
    return Client().post(
        "/api/v1/tool-calls",
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {world.token}",
        HTTP_IDEMPOTENCY_KEY="raw-key",
        **headers,
    )


# --- authentication --------------------------------------------------------------------


def test_no_token_is_not_authenticated(world: World) -> None:
    response = Client().post(
        "/api/v1/tool-calls", data=json.dumps(SEND_EMAIL), content_type="application/json"
    )
    error_of(response, 401, "not_authenticated")


@pytest.mark.parametrize(
    "token", ["nonsense", "cst_abc_def", "Bearer", "cst_" + "a" * 300, "cst_ab\x00c_def"]
)
def test_an_unknown_token_is_not_authenticated(world: World, token: str) -> None:
    error_of(ApiClient(token).submit(SEND_EMAIL), 401, "not_authenticated")
    error_of(
        ApiClient(token).get("/api/v1/tool-calls/" + str(uuid.uuid4())), 401, "not_authenticated"
    )
    # The document is public: a token that is no agent's lists no tool, and fails nothing.
    document = ApiClient(token).get("/api/v1/openapi.json")
    assert document.status_code == 200, document.content[:300]


def test_a_revoked_token_or_a_disabled_agent_is_not_authenticated(world: World) -> None:
    token = world.agent.tokens.get()
    registry_services.revoke_token(token=token)
    error_of(world.api().submit(SEND_EMAIL), 401, "not_authenticated")
    _, fresh = registry_services.issue_token(agent=world.agent)
    world.agent.enabled = False
    world.agent.save()
    error_of(ApiClient(fresh).get("/api/v1/tools"), 401, "not_authenticated")


# --- the tool --------------------------------------------------------------------------


def test_an_unknown_tool_is_404_and_audited(world: World) -> None:
    error = error_of(
        world.api().submit({**SEND_EMAIL, "tool": "launch_rocket"}), 404, "unknown_tool"
    )
    assert "GET /api/v1/tools" in error["suggestion"]
    assert len(refusals("unknown_tool")) == 1


def test_a_tool_outside_the_allowlist_is_403(world: World) -> None:
    world.agent.allowed_tools.remove(world.tools["send_email"])
    error_of(world.api().submit(SEND_EMAIL), 403, "tool_not_allowed")
    assert len(refusals("tool_not_allowed")) == 1


def test_a_disabled_tool_is_403(world: World) -> None:
    Tool.objects.filter(name="send_email").update(enabled=False)
    error_of(world.api().submit(SEND_EMAIL), 403, "tool_disabled")
    assert len(refusals("tool_disabled")) == 1


def test_invalid_arguments_name_each_json_path(world: World) -> None:
    body = {
        "tool": "update_customer",
        "arguments": {
            "customer_id": "nobody",
            "changes": {"plan": "platinum", "email": "x"},
            "extra": 1,
        },
        "session_id": "s",
    }
    error = error_of(world.api().submit(body), 400, "invalid_arguments")
    paths = {detail["path"] for detail in error["details"]}
    assert {"$.extra", "$.customer_id", "$.changes.plan", "$.changes.email"} <= paths
    assert not ToolCall.objects.exists()
    [event] = refusals("invalid_arguments")
    assert event.data["tool"] == "update_customer"


def test_sensitive_arguments_of_a_refused_call_are_masked_in_the_audit(world: World) -> None:
    body = {
        "tool": "update_customer",
        "arguments": {"customer_id": "bad id", "changes": {"phone": "+44 20 7946 0958"}},
        "session_id": "s",
    }
    world.api().submit(body)
    [event] = refusals("invalid_arguments")
    assert "7946" not in json.dumps(event.data)


def test_a_refused_calls_error_and_audit_never_quote_a_sensitive_value(world: World) -> None:
    # Values no secret or PII detector would catch: only the tool's sensitive fields hide them.
    secret = "zebra-lantern-42"
    refused = [
        # The error is about the sensitive value itself...
        {"customer_id": "cus_0001", "changes": {"email": secret}},
        # ... and about the object holding it.
        {"customer_id": "cus_0001", "changes": {"phone": secret, "plan": "gold"}},
    ]
    Tool.objects.filter(name="update_customer").update(
        input_schema={
            **world.tools["update_customer"].input_schema,
            "properties": {
                **world.tools["update_customer"].input_schema["properties"],
                "changes": {
                    **world.tools["update_customer"].input_schema["properties"]["changes"],
                    "maxProperties": 1,
                },
            },
        }
    )
    for arguments in refused:
        body = {"tool": "update_customer", "arguments": arguments, "session_id": "s"}
        response = world.api().submit(body)
        error = error_of(response, 400, "invalid_arguments")
        assert secret not in response.content.decode(), error
    events = refusals("invalid_arguments")
    assert len(events) == 2
    for event in events:
        assert secret not in json.dumps(event.data)
        assert {"$.changes.email", "$.changes"} & {d["path"] for d in event.data["details"]}


LONG = 200_000  # characters: under the body limit (256 KB), far over any message's worth


@pytest.mark.parametrize(
    ("arguments", "path"),
    [
        # maxLength and pattern each quoted the whole value.
        (
            {"payment_id": "x" * LONG, "amount_cents": 1, "currency": "usd", "reason": "r"},
            "$.payment_id",
        ),
        # An argument the tool does not have, named by a key as long.
        (
            {
                "payment_id": "pay_0001",
                "amount_cents": 1,
                "currency": "usd",
                "reason": "r",
                "k" * LONG: 1,
            },
            None,
        ),
    ],
    ids=["value", "key"],
)
def test_an_invalid_arguments_error_quotes_a_long_value_shortened(
    world: World, arguments: Any, path: str | None
) -> None:
    """Each message quoted the offending value whole: one 200 KB argument was written back
    twice in the answer, and in the append-only trail beside the arguments themselves."""
    body = {"tool": "issue_refund", "arguments": arguments, "session_id": "s"}
    response = world.api().submit(body)
    error = error_of(response, 400, "invalid_arguments")
    assert len(response.content) < 4_000, len(response.content)
    if path is not None:
        assert path in {d["path"] for d in error["details"]}
    for detail in error["details"]:
        assert len(detail["message"]) <= 400, detail["message"][:500]
    assert any(f"({LONG:,} characters)" in d["message"] for d in error["details"]), error
    [event] = refusals("invalid_arguments")
    assert len(json.dumps(event.data["details"])) < 4_000


def test_a_shortened_quote_never_keeps_part_of_a_secret(world: World) -> None:
    """Cut through, a key is no longer one the trail's detectors know: its first characters
    would stay in clear. The cut goes before it."""
    key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    reason = "a" * 190 + f" {key} " + "b" * 1_000  # the cut at 200 falls inside the key
    body = {
        "tool": "issue_refund",
        "arguments": {
            "payment_id": "pay_0001",
            "amount_cents": 1,
            "currency": "usd",
            "reason": reason,
        },
        "session_id": "s",
    }
    response = world.api().submit(body)
    error = error_of(response, 400, "invalid_arguments")
    [detail] = error["details"]
    assert detail["path"] == "$.reason"
    assert detail["message"].startswith("'" + "a" * 190)
    assert "(1,224 characters) is too long" in detail["message"], detail["message"]
    assert "sk_li" not in response.content.decode()
    [event] = refusals("invalid_arguments")
    assert "sk_li" not in json.dumps(event.data)


@pytest.mark.parametrize(
    ("written", "kept"),
    [("Zebulon.Canary@Example.org", "zebulon.canar"), ("4000 0566 5566 5556", "4000 0566 556")],
    ids=["address", "card"],
)
def test_a_shortened_quote_never_keeps_part_of_an_address_or_a_card(
    world: World, written: str, kept: str
) -> None:
    """The cut went before what the detectors found only where it was written as its
    fingerprint is taken (an address in lower case, a card's digits alone): an address with
    capitals, a card in groups were cut through, their start kept in clear."""
    reason = "a" * 185 + f" {written} " + "b" * 1_000  # the cut at 200 falls inside it
    body = {
        "tool": "issue_refund",
        "arguments": {
            "payment_id": "pay_0001",
            "amount_cents": 1,
            "currency": "usd",
            "reason": reason,
        },
        "session_id": "s",
    }
    response = world.api().submit(body)
    error = error_of(response, 400, "invalid_arguments")
    [detail] = error["details"]
    assert detail["message"].startswith("'" + "a" * 185)
    assert kept not in response.content.decode().lower()
    [event] = refusals("invalid_arguments")
    assert kept not in json.dumps(event.data).lower()


def test_an_invalid_arguments_error_lists_at_most_50_problems_and_counts_them_all(
    world: World,
) -> None:
    """Every problem was listed: 15,000 made-up argument names came back as 15,000 problems,
    in the answer and in the trail's refusal."""
    arguments = {
        "payment_id": "pay_0001",
        "amount_cents": 1,
        "currency": "usd",
        "reason": "r",
        **{f"k{i}": 0 for i in range(15_000)},
    }
    body = {"tool": "issue_refund", "arguments": arguments, "session_id": "s"}
    response = world.api().submit(body)
    error = error_of(response, 400, "invalid_arguments")
    assert len(error["details"]) == 50
    assert error["problems_total"] == 15_000
    assert "15,000 problems" in error["message"], error["message"]
    assert {d["message"] for d in error["details"]} == {
        f"'{d['path'][2:]}' is not an argument of this tool." for d in error["details"]
    }
    assert len(response.content) < 10_000, len(response.content)
    [event] = refusals("invalid_arguments")
    assert len(event.data["details"]) == 50
    assert event.data["problems_total"] == 15_000


def test_an_invalid_arguments_error_counts_the_wrong_items_of_a_long_list(world: World) -> None:
    """100,000 values of the wrong type in one list were 100,000 problems in the answer. Of
    the 50 listed, the list's items do not crowd out the missing argument."""
    Tool.objects.filter(name="search_docs").update(
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "ids": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["query"],
            "additionalProperties": False,
        }
    )
    body = {"tool": "search_docs", "arguments": {"ids": [1] * 100_000}, "session_id": "s"}
    response = post_raw(world, json.dumps(body, separators=(",", ":")).encode())
    error = error_of(response, 400, "invalid_arguments")
    assert error["problems_total"] == 100_001
    assert "100,001 problems" in error["message"]
    assert {d["path"] for d in error["details"]} == {"$.query"} | {f"$.ids[{i}]" for i in range(49)}
    assert len(response.content) < 10_000, len(response.content)
    [event] = refusals("invalid_arguments")
    assert len(event.data["details"]) == 50


def test_an_invalid_arguments_error_with_few_problems_lists_them_all(world: World) -> None:
    body = {"tool": "send_email", "arguments": {"to": "nobody"}, "session_id": "s"}
    error = error_of(world.api().submit(body), 400, "invalid_arguments")
    assert error["problems_total"] == len(error["details"]) > 1
    assert error["message"] == "The arguments do not match the tool's JSON Schema."


# --- idempotency -----------------------------------------------------------------------


def test_the_idempotency_errors(world: World) -> None:
    error_of(world.api().submit(SEND_EMAIL, key=None), 400, "idempotency_key_required")
    assert world.api().submit(SEND_EMAIL, key="same").status_code == 202
    changed = {**SEND_EMAIL, "reasoning": "another reason"}
    error = error_of(world.api().submit(changed, key="same"), 422, "idempotency_key_reused")
    assert error["retryable"] is False


# --- limits ----------------------------------------------------------------------------


def test_rate_limited_says_when_to_come_back(world: World) -> None:
    Tool.objects.filter(name="send_email").update(rate_limit_per_agent="2/minute")
    assert world.api().submit(SEND_EMAIL).status_code == 202
    assert world.api().submit(SEND_EMAIL).status_code == 202
    response = world.api().submit(SEND_EMAIL)
    error = error_of(response, 429, "rate_limited")
    assert error["retryable"] is True
    assert error["details"] == {"scope": "agent", "limit": "2/minute"}
    assert 1 <= int(response["Retry-After"]) <= 60
    assert len(refusals("rate_limited")) == 1


def test_max_rounds_exceeded_tells_the_agent_to_stop(world: World) -> None:
    world.agent.max_rounds_per_session = 2
    world.agent.save()
    for _ in range(2):
        assert world.api().submit(SEND_EMAIL).status_code == 202
    error = error_of(world.api().submit(SEND_EMAIL), 429, "max_rounds_exceeded")
    assert error["retryable"] is False
    assert "new session" in error["suggestion"]
    assert world.api().submit({**SEND_EMAIL, "session_id": "run-2"}).status_code == 202
    assert len(refusals("max_rounds_exceeded")) == 1


def test_circuit_open_says_when_to_come_back(world: World, probe_tool_cleanup: None) -> None:
    probe = install_probe_tool(world, breaker_threshold=2, breaker_cooldown_seconds=30)
    probe.mode = "fail"
    for _ in range(2):
        error_of(world.api().submit(stock_call()), 502, "tool_failed")
    response = world.api().submit(stock_call())
    error = error_of(response, 503, "circuit_open")
    assert error["retryable"] is True
    assert 29 <= int(response["Retry-After"]) <= 30
    assert probe.calls == 2
    assert len(refusals("circuit_open")) == 1


def test_a_read_that_times_out_is_504(world: World, probe_tool_cleanup: None) -> None:
    probe = install_probe_tool(world, max_attempts=2)
    probe.mode = "timeout"
    response = world.api().submit(stock_call())
    error = error_of(response, 504, "timeout")
    assert error["retryable"] is True
    assert response.json()["call"]["status"] == "failed"
    assert probe.calls == 2, "a read is retried before the timeout is reported"


def test_a_read_that_fails_is_502_after_its_retries(world: World, probe_tool_cleanup: None) -> None:
    probe = install_probe_tool(world, max_attempts=3)
    probe.mode = "fail"
    started = time.monotonic()
    error_of(world.api().submit(stock_call()), 502, "tool_failed")
    assert probe.calls == 3
    assert time.monotonic() - started >= 0.5, "the retries back off"


# --- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/tools", "/api/v1/tool-calls/0b8f7c51-8f3e-4a52-9a38-5c0f8c1d2e3f"]
)
def test_more_query_parameters_than_django_reads_are_400_not_500(
    world: World, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Django refuses to parse a query string of over DATA_UPLOAD_MAX_NUMBER_FIELDS (1000)
    fields (TooManyFieldsSent): the request is the agent's to fix, not a failure of
    Countersign to retry and log as one."""
    response = world.api().get(f"{path}?{'&'.join(f'p{i}=1' for i in range(1001))}")
    error = error_of(response, 400, "invalid_request")
    assert error["retryable"] is False
    assert "agent API request failed" not in caplog.text


@override_settings(API_MAX_BODY_BYTES=4096, DATA_UPLOAD_MAX_MEMORY_SIZE=4096)
def test_a_body_over_the_limit_is_413(world: World) -> None:
    big = {**SEND_EMAIL, "reasoning": "x" * 5000}
    error_of(world.api().submit(big), 413, "body_too_large")


def test_the_default_limit_refuses_a_megabyte(world: World) -> None:
    body = json.dumps({**SEND_EMAIL, "reasoning": "y" * 1_000_000}).encode()
    error_of(post_raw(world, body), 413, "body_too_large")


MALFORMED = [
    b"",
    b"{",
    b"not json",
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"\xff\xfe\x00garbage",
    b'{"tool": NaN}',
    b'{"tool": Infinity}',
    b'{"tool": 1e999}',
    b'{"n": ' + b"9" * 5000 + b"}",
    b'{"tool": "a\\u0000b"}',
    b'{"tool": "\\ud800"}',
    b'{"\\u0000": 1}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 40 + b"1" + b"}" * 40,
]


def test_malformed_bodies_are_400(world: World) -> None:
    for raw in MALFORMED:
        error_of(post_raw(world, raw), 400, "invalid_request")


WRONG_TYPES = [
    ({**SEND_EMAIL, "tool": 7}, "$.tool"),
    ({**SEND_EMAIL, "arguments": ["to", "x"]}, "$.arguments"),
    ({**SEND_EMAIL, "session_id": None}, "$.session_id"),
    ({k: v for k, v in SEND_EMAIL.items() if k != "session_id"}, "$.session_id"),
    ({**SEND_EMAIL, "token_cost": {"input_tokens": -1}}, "$.token_cost.input_tokens"),
    ({**SEND_EMAIL, "token_cost": "cheap"}, "$.token_cost"),
    ({**SEND_EMAIL, "token_cost": {"input_tokens": "5"}}, "$.token_cost.input_tokens"),
    ({**SEND_EMAIL, "token_cost": {"output_tokens": True}}, "$.token_cost.output_tokens"),
    ({**SEND_EMAIL, "token_cost": {"usd": "1.5"}}, "$.token_cost.usd"),
    ({**SEND_EMAIL, "token_cost": {"usd": True}}, "$.token_cost.usd"),
    ({**SEND_EMAIL, "callback_url": "ftp://example.com/x"}, "$.callback_url"),
    ({**SEND_EMAIL, "callback_url": "https://e.com/" + "a" * 2100}, "$.callback_url"),
    ({**SEND_EMAIL, "unexpected": True}, "$.unexpected"),
    ({**SEND_EMAIL, "session_id": "s" * 129}, "$.session_id"),
]


def test_wrong_types_are_400_with_their_path(world: World) -> None:
    for body, path in WRONG_TYPES:
        error = error_of(world.api().submit(body), 400, "invalid_request")
        assert path in {detail["path"] for detail in error["details"]}, (path, error)
    assert not ToolCall.objects.exists()


def test_token_counts_written_as_whole_floats_are_the_integers_the_document_allows(
    world: World,
) -> None:
    """The document says ``"type": "integer"``, which JSON Schema (and so every client
    generated from it, and schemathesis) holds 2.0 and 1e3 to be: they are accepted, and
    kept as the integers they are. A fraction is still refused."""
    cost = {"input_tokens": 1e3, "output_tokens": 2.0, "usd": 0.5}
    response = world.api().submit({**SEND_EMAIL, "token_cost": cost})
    assert response.status_code == 202, response.content
    stored = ToolCall.objects.get().token_cost
    assert stored["input_tokens"] == 1000 and isinstance(stored["input_tokens"], int)
    assert stored["output_tokens"] == 2 and isinstance(stored["output_tokens"], int)
    for wrong in (1.5, 1e10, -1.0):
        error = error_of(
            world.api().submit({**SEND_EMAIL, "token_cost": {"input_tokens": wrong}}),
            400,
            "invalid_request",
        )
        assert "$.token_cost.input_tokens" in {d["path"] for d in error["details"]}


def test_arguments_nested_too_deep_are_400(world: World) -> None:
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"d": deep}
    body = {**SEND_EMAIL, "arguments": deep}
    error_of(world.api().submit(body), 400, "invalid_request")


@pytest.mark.parametrize(
    ("body", "name"),
    [
        # A tool the reviewer would see, and one a proxy reading the first value would see.
        ('{"tool": "get_customer", "tool": "send_email", %s}', "tool"),
        # Inside the arguments: the reviewer would approve one recipient, the raw body says two.
        ('{"tool": "send_email", %s, "arguments": '
         '{"to": "a@example.com", "subject": "s", "body": "b", "to": "b@example.com"}}', "to"),
        # Deeper, in a value nobody looks at twice.
        ('{"tool": "send_email", %s, "reasoning": "r", "token_cost": {"usd": 1, "usd": 2}}', "usd"),
    ],
)  # fmt: skip
def test_a_body_naming_a_key_twice_is_400_and_makes_no_call(
    world: World, body: str, name: str
) -> None:
    rest = (
        '"session_id": "run-1", "arguments": {"to": "a@example.com", "subject": "s", "body": "b"}'
    )
    if '"arguments"' in body:
        rest = '"session_id": "run-1"'
    api = world.api()
    response = api.client.post(
        "/api/v1/tool-calls",
        data=body % rest,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api.token}",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )
    error = error_of(response, 400, "invalid_request")
    assert f'"{name}" more than once' in error["message"]
    assert error["retryable"] is False
    assert not ToolCall.objects.exists()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)
tool_names = st.sampled_from(["send_email", "get_customer", "search_docs", "nope", ""])
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "tool": tool_names | json_values,
            "arguments": st.dictionaries(st.text(max_size=10), json_values, max_size=4)
            | json_values,
            "session_id": st.text(max_size=10) | json_values,
            "on_behalf_of": st.text(max_size=10) | json_values,
            "reasoning": st.text(max_size=20) | json_values,
            "token_cost": st.fixed_dictionaries(
                {}, optional={"input_tokens": json_values, "usd": json_values}
            )
            | json_values,
            "callback_url": st.sampled_from(["https://example.com/hook", "nope", ""]) | json_values,
        },
    )
    | json_values
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, key=st.text(max_size=20) | st.none())
def test_no_body_produces_a_500(world: World, body: Any, key: str | None) -> None:
    try:
        raw = json.dumps(body).encode()
    except (TypeError, ValueError):
        return
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    response = Client().post(
        "/api/v1/tool-calls",
        data=raw,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {world.token}",
        **headers,
    )
    assert response.status_code < 500 or response.json()["error"]["code"] in {
        "tool_failed",
        "timeout",
    }, response.content[:300]
    assert "error" in response.json() or response.status_code in (200, 202)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=300))
def test_no_bytes_produce_a_500(world: World, raw: bytes) -> None:
    assert post_raw(world, raw).status_code < 500


def test_an_unexpected_failure_still_answers_in_the_error_shape(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("gateway.api.intake.submit", broken)
    error = error_of(world.api().submit(SEND_EMAIL), 500, "internal_error")
    assert error["retryable"] is True
    assert "a bug" not in json.dumps(error)
