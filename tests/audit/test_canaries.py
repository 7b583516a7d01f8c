"""Secrets and personal data placed in a call's arguments, reasoning and result never reach
the audit table, the logs (ours and a real Celery worker's, at DEBUG with SQL logging) or
Redis (broker and cache)."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import Status, ToolCall
from audit import chain
from config.celery import app
from tests.approvals.conftest import shown_state
from tests.conftest import World
from tests.support.web import running_web
from tests.support.workers import purge_queue, running_worker, wait_for
from tools_registry.services import rotate_webhook_secret

CANARY_EMAIL = "zebulon.canary@example.org"
CANARY_PHONE = "+44 20 7946 0123"
CANARY_KEY = "sk_live_CanaryKey9Z8Y7X6W5V4U"
CANARY_BEARER = "canaryBearerToken123456789"
CANARY_CARD = "4000 0566 5566 5556"  # Luhn-valid test card

# Every form a canary could take once written down somewhere.
CANARIES = [
    CANARY_EMAIL,
    CANARY_EMAIL.split("@")[0],
    CANARY_PHONE,
    CANARY_PHONE.replace(" ", ""),
    "2079460123",
    CANARY_KEY,
    "CanaryKey9Z8Y7X6W5V4U",
    CANARY_BEARER,
    CANARY_CARD,
    CANARY_CARD.replace(" ", ""),
]


def leaks(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary.lower() in text.lower()]


def redis_text() -> str:
    """Every key and value of our Redis database, with base64 message bodies decoded."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    chunks: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [b"%s=%s" % item for item in client.hgetall(key).items()]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        chunks.append(key.decode(errors="replace"))
        for value in values:
            chunks.append(value.decode(errors="replace"))
            chunks.extend(_decoded_bodies(value))
    return "\n".join(chunks)


def _decoded_bodies(value: bytes) -> Iterator[str]:
    """Kombu stores a message as JSON whose body is base64: look inside."""
    for candidate in re.findall(rb'"body": ?"([A-Za-z0-9+/=]{8,})"', value):
        try:
            yield base64.b64decode(candidate).decode(errors="replace")
        except ValueError:
            continue


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs() -> Iterator[Capture]:
    root, capture = logging.getLogger(), Capture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def test_the_redis_scan_finds_a_canary_inside_a_queued_message() -> None:
    """The check below can fail: a canary in a Celery message is found, base64 and all."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-canary-probe"
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        app.send_task("canary.probe", args=[CANARY_KEY], queue=queue)
        assert CANARY_KEY in leaks(redis_text())
    finally:
        client.delete(queue)


def test_a_log_line_quoting_a_canary_is_masked(captured_logs: Capture) -> None:
    logging.getLogger("some.integration").warning(
        "calling the API with %s for %s", f"Bearer {CANARY_BEARER}", CANARY_EMAIL
    )
    try:
        raise ValueError(f"card {CANARY_CARD} declined")
    except ValueError:
        logging.getLogger("some.integration").exception("refund failed")
    text = "\n".join(captured_logs.lines)
    assert "calling the API with Bearer [masked:secret:" in text
    assert "ValueError: card [masked:card:" in text
    assert leaks(text) == []


def test_a_log_call_whose_arguments_do_not_fit_its_message_is_masked_too(
    captured_logs: Capture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Such a record was left as it was: logging's error report printed its arguments to
    stderr, and its traceback was not masked either."""
    try:
        raise ValueError(f"card {CANARY_CARD} declined")
    except ValueError:
        logging.getLogger("some.integration").exception("refund for %s %s", CANARY_EMAIL)
    text = "\n".join(captured_logs.lines) + capsys.readouterr().err
    assert "refund for %s %s (arguments: ('[masked:email:" in text
    assert "ValueError: card [masked:card:" in text
    assert leaks(text) == []


def test_what_pydantic_quotes_of_a_refused_value_never_reaches_a_log(
    captured_logs: Capture,
) -> None:
    """The MCP SDK logs, with its traceback, an answer its types refused; pydantic's message
    quotes that answer cut to its first and last characters. An upstream that quoted its
    credential back left the credential's end in the worker's log, no longer shaped like a
    secret for the detectors to find."""
    import pydantic

    credential_tail = "NOPQRSTUVWXYZ0123456789"
    answer = {"error": "bad key " + "x" * 200 + credential_tail}
    try:
        pydantic.TypeAdapter(int).validate_python(answer)
    except pydantic.ValidationError:
        logging.getLogger("mcp.client.streamable_http").exception("Error parsing JSON response")
    text = "\n".join(captured_logs.lines)
    assert "ValidationError" in text and "input_type=dict" in text
    assert credential_tail[-12:] not in text


def test_the_sql_log_leaves_out_the_values_no_detector_could_tell_from_data(
    world: World, captured_logs: Capture
) -> None:
    """DEBUG=1 with DB_LOG_LEVEL=DEBUG logs every statement. A value there is a bare string,
    in VALUES (...) and in the args after the statement: a webhook secret, an authenticator's
    TOTP key, a session key (a signed-in session to whoever reads the log) were logged whole."""
    session = Client()
    session.force_login(world.bob)
    sql_log = logging.getLogger("django.db.backends")
    level = sql_log.level
    sql_log.setLevel(logging.DEBUG)  # DB_LOG_LEVEL=DEBUG
    connection.force_debug_cursor = True  # DEBUG=1
    try:
        assert session.get("/approvals/").status_code == 200
        # The replaced secret goes into a JSON list (previous_webhook_secrets).
        replaced = world.agent.webhook_secret
        secret = rotate_webhook_secret(agent=world.agent, rotated_by=None).secret
        device = TOTPDevice.objects.create(user=world.bob, name="phone")
    finally:
        connection.force_debug_cursor = False
        sql_log.setLevel(level)
    text = "\n".join(captured_logs.lines)
    assert 'UPDATE "tools_registry_agent" SET "webhook_secret"' in text, "SQL was logged"
    assert 'INSERT INTO "otp_totp_totpdevice"' in text and '"django_session"' in text
    values = [secret, secret.removeprefix("whsec_"), device.key, session.cookies["sessionid"].value]
    values += [replaced, replaced.removeprefix("whsec_")]
    assert [value for value in values if value in text] == []


@pytest.mark.worker
def test_canaries_never_reach_the_trail_the_logs_or_redis(
    live_world: World, tmp_path, captured_logs: Capture
) -> None:
    purge_queue()
    api = live_world.api()
    # DEBUG=1 makes Django log every SQL statement with its parameters in the worker.
    with running_worker(
        tmp_path=tmp_path, env={"DEBUG": "1", "LOG_LEVEL": "DEBUG", "DB_LOG_LEVEL": "DEBUG"}
    ) as worker:
        response = api.submit(
            {
                "tool": "update_customer",
                "arguments": {
                    "customer_id": "cus_0001",
                    "changes": {"email": CANARY_EMAIL, "phone": CANARY_PHONE},
                },
                "session_id": "canary-run",
                "reasoning": (
                    f"The customer sent their new address {CANARY_EMAIL} and phone "
                    f"{CANARY_PHONE}; they pasted {CANARY_KEY}, Authorization: Bearer "
                    f"{CANARY_BEARER} and card {CANARY_CARD} into the ticket."
                ),
                "token_cost": {"input_tokens": 1200, "output_tokens": 300, "usd": 0.02},
            }
        )
        assert response.status_code == 202, response.content
        call = ToolCall.objects.get(pk=response.json()["id"])
        reviewer = Client()
        reviewer.force_login(live_world.bob)
        reviewer.post(
            f"/approvals/{call.pk}/decide/",
            {
                "verdict": "approve",
                "comment": "ok",
                "arguments_hash": call.arguments_hash,
                "state_hash": shown_state(reviewer, call),
            },
        )
        wait_for(
            lambda: ToolCall.objects.get(pk=call.pk).status == Status.SUCCEEDED,
            message="the update to run on the worker",
        )
        # The result now holds the canaries too: read them back (a read runs inline).
        read = api.submit(
            {
                "tool": "get_customer",
                "arguments": {"customer_id": "cus_0001"},
                "session_id": "canary-run",
            }
        )
        assert read.json()["result"]["email"] == CANARY_EMAIL  # the agent does get its data
        worker_log = worker.log
    chain.seal_pending()

    assert "UPDATE" in worker_log and "sandbox_customer" in worker_log, "SQL was logged"
    assert leaks(worker_log) == [], worker_log[-3000:]
    assert leaks("\n".join(captured_logs.lines)) == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM audit_auditevent AS t")
        trail = "\n".join(row[0] for row in cursor.fetchall())
    assert "call.execution_finished" in trail and "[masked:email:" in trail
    assert leaks(trail) == []
    assert leaks(redis_text()) == []


# The forms issue 15 found unmasked, each with what would show if it leaked (the part the old
# detectors left in clear, or the value in any encoding).
JWT_PAYLOAD = "eyJzdWIiOiJjYW5hcnktdXNlciIsInJvbGUiOiJhZG1pbiJ9"
CANARY_JWT = f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{JWT_PAYLOAD}.c2lnbmF0dXJlLWNhbmFyeQ"
FORMS = {
    "card 4111.1111.1111.1111": ["4111.1111"],
    "card 4111/1111/1111/1111": ["4111/1111"],
    'Password = "canary horse battery"': ["canary horse", "horse battery"],
    '{"api_key": "canary staple wombat"}': ["canary staple", "staple wombat"],
    "GET /search?to=zebulon.canary%40example.org&q=4111%201111%201111%201111 HTTP/1.1": [
        "zebulon.canary",
        "4111%201111",
    ],
    "q=4111+1111+1111+1111": ["4111+1111"],
    f"Authorization: {CANARY_JWT}": [JWT_PAYLOAD],
}
FORM_LEAKS = [needle for needles in FORMS.values() for needle in needles]


def form_leaks(text: str) -> list[str]:
    return [needle for needle in FORM_LEAKS if needle.lower() in text.lower()]


def test_the_forms_issue_15_found_are_masked_in_the_trail_and_its_exports(
    world: World, auditor_client: Client
) -> None:
    """Through the agent API into PostgreSQL, then out through both export formats."""
    text = "\n".join(FORMS)
    assert form_leaks(text) == FORM_LEAKS  # the check below can fail
    response = world.api().submit(
        {
            "tool": "send_email",
            "arguments": {"to": "ops@example.com", "subject": "Forms", "body": text},
            "session_id": "issue-15",
            "reasoning": f"The ticket said: {text}",
        }
    )
    assert response.status_code == 202, response.content
    chain.seal_pending()

    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM audit_auditevent AS t")
        trail = "\n".join(row[0] for row in cursor.fetchall())
    assert "call.submitted" in trail
    for kind in ("card", "secret", "email"):
        assert f"[masked:{kind}:" in trail
    assert form_leaks(trail) == []
    for fmt in ("csv", "jsonl"):
        exported = auditor_client.get(f"/audit/export.{fmt}")
        assert exported.status_code == 200
        body = b"".join(exported.streaming_content).decode()
        assert "call.submitted" in body and "[masked:card:" in body
        assert form_leaks(body) == [], fmt


# Forms a later review found unmasked, each with what showed of it: a card grouped by
# no-break spaces, an Authorization header of another scheme than Bearer, an IBAN, a Google
# OAuth access token.
REVIEW_FORMS = {
    "card 4000\u00a00566\u00a05566\u00a05556": ["0566\u00a05566"],
    "Authorization: ApiKey canary-opaque-credential": ["canary-opaque-credential"],
    "IBAN DE89 3704 0044 0532 0130 00": ["3704 0044 0532"],
    "refresh with ya29.a0CanaryAccessTokenAbCdEfGhIj": ["CanaryAccessToken"],
}
REVIEW_LEAKS = [needle for needles in REVIEW_FORMS.values() for needle in needles]


def review_leaks(text: str) -> list[str]:
    # Exports and pages may write the no-break space escaped (JSON) or as an entity (HTML).
    text = text.replace("\\u00a0", "\u00a0").replace("&nbsp;", "\u00a0").replace("&#160;", "\u00a0")
    return [needle for needle in REVIEW_LEAKS if needle.lower() in text.lower()]


def test_the_forms_a_later_review_found_are_masked_in_the_trail_exports_and_pages(
    world: World, auditor_client: Client
) -> None:
    """In an agent's arguments and reasoning (through the agent API) and a reviewer's comment
    (through the reviewer's page), then out through both exports and the auditor's pages."""
    text = "\n".join(REVIEW_FORMS)
    assert review_leaks(text) == REVIEW_LEAKS  # the check below can fail
    response = world.api().submit(
        {
            "tool": "send_email",
            "arguments": {"to": "ops@example.com", "subject": "Forms", "body": text},
            "session_id": "review-forms",
            "reasoning": f"The ticket said: {text}",
        }
    )
    assert response.status_code == 202, response.content
    call = ToolCall.objects.get(pk=response.json()["id"])
    reviewer = Client()
    reviewer.force_login(world.bob)
    decided = reviewer.post(
        f"/approvals/{call.pk}/decide/",
        {
            "verdict": "reject",
            "comment": f"Not with these in it: {text}",
            "arguments_hash": call.arguments_hash,
            "state_hash": shown_state(reviewer, call),
        },
    )
    assert decided.status_code in (200, 302), decided.content[:500]
    assert ToolCall.objects.get(pk=call.pk).status == Status.REJECTED
    chain.seal_pending()

    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM audit_auditevent AS t")
        trail = "\n".join(row[0] for row in cursor.fetchall())
    assert "call.submitted" in trail and "call.decision" in trail
    for kind in ("card", "secret", "iban"):
        assert f"[masked:{kind}:" in trail
    assert review_leaks(trail) == []
    for fmt in ("csv", "jsonl"):
        exported = auditor_client.get(f"/audit/export.{fmt}")
        assert exported.status_code == 200
        body = b"".join(exported.streaming_content).decode()
        assert "call.decision" in body and "[masked:iban:" in body
        assert review_leaks(body) == [], fmt
    for page in ("/audit/", f"/audit/calls/{call.pk}/"):
        shown = auditor_client.get(page)
        assert shown.status_code == 200
        assert review_leaks(shown.content.decode()) == [], page
    assert review_leaks(reviewer.get(f"/approvals/{call.pk}/").content.decode()) == []


def test_url_encoded_values_in_a_server_log_line_are_masked() -> None:
    """A request line as Django's development server logs it (its logger does not
    propagate, so the capture listens to it directly), query string and all."""
    server_log, capture = logging.getLogger("django.server"), Capture()
    server_log.addHandler(capture)
    try:
        request_line = (
            "GET /search?to=zebulon.canary%40example.org&q=4111%201111%201111%201111 HTTP/1.1"
        )
        server_log.warning('"%s" %s %s', request_line, 404, 512)
    finally:
        server_log.removeHandler(capture)
    [line] = capture.lines
    assert line.startswith('django.server "GET /search?to=[masked:email:')
    assert "&q=[masked:card:" in line and line.endswith(' HTTP/1.1" 404 512')
    assert form_leaks(line) == []


@pytest.mark.django_db
def test_a_web_process_logs_requests_with_url_encoded_values_masked(tmp_path: Path) -> None:
    """uvicorn's access log and Django's "Not Found" warning, in a real web process."""
    query = "to=zebulon.canary%40example.org&q=4111%201111%201111%201111"
    with running_web(tmp_path=tmp_path) as web:
        assert httpx.get(f"{web.url}/healthz?{query}").status_code == 200
        assert httpx.get(f"{web.url}/no-such-page/zebulon.canary%40example.org").status_code == 404
        log = web.log
    assert "GET /healthz?to=[masked:email:" in log and "&q=[masked:card:" in log
    assert "Not Found: /no-such-page/[masked:email:" in log
    assert form_leaks(log) == [], log[-3000:]


def test_a_log_line_quoting_a_webhook_secret_or_a_session_cookie_is_masked(
    captured_logs: Capture,
) -> None:
    """Made through the configured record factory, before any handler sees the line."""
    secret = "whsec_" + "c2lnbmluZy1zZWNyZXQtZm9yLXRlc3Rz"
    logging.getLogger("some.integration").warning(
        "delivering with %s; request cookies sessionid=%s csrftoken=%s",
        secret,
        "k3y0fth3s3ss10nq8r9s0t1u2v3w4x5y",
        "Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56",
    )
    text = "\n".join(captured_logs.lines)
    assert "delivering with [masked:secret:" in text
    assert "sessionid=[masked:secret:" in text and "csrftoken=[masked:secret:" in text
    for value in (secret[6:], "k3y0fth3s3ss10n", "Ab12Cd34Ef56Gh78"):
        assert value not in text
