"""URLs of the benchmark's site: Countersign's, plus the bare views it is compared with.

The bare insert parses the JSON body and inserts it as one row: the least a Django endpoint
that records a request can do. The bare read parses the body and calls the tool's handler
in-process, as the executor would, with nothing around it.

The bare durable write does the durable work of a write's submission, and nothing else:
the token's row read by its prefix and its secret's hash compared, then in one transaction
the Idempotency-Key's record, the session's round, the call's row, its audit event (with
the call's arguments, unmasked) and the stored answer, each a plain statement, every row in
Countersign's own tables (their indexes and triggers). No schema check, policy, screening,
masking, rate limit, breaker, or answer built from the call: what it costs beside a
submission is what Countersign's checks cost, not what keeping the write costs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from functools import cache
from typing import Any

from django.db import connection, models, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from psycopg.types.json import Jsonb

from approvals.models import ToolCall
from audit.models import AuditEvent
from gateway.models import AgentSession, IdempotencyRecord
from tools_registry import registry
from tools_registry.models import AgentToken, Tool


@csrf_exempt
@require_POST
def bare_insert(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_bare_row (created_at, body) VALUES (now(), %s) RETURNING id",
            [json.dumps(body)],
        )
        (row_id,) = cursor.fetchone()
    return JsonResponse({"id": row_id}, status=201)


@csrf_exempt
@require_POST
def bare_read(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    call_id = uuid.uuid4()
    context = registry.ToolContext(
        call_id=call_id, idempotency_key=f"bench-{call_id}", timeout=10.0
    )
    result = registry.get(body["tool"])(context, body["arguments"])
    return JsonResponse({"result": result}, status=200)


@cache
def _insert_sql(model: type[models.Model]) -> tuple[str, tuple[models.Field[Any, Any], ...]]:
    """``INSERT`` of every column the model has but its serial key, and those fields."""
    fields = tuple(f for f in model._meta.concrete_fields if not isinstance(f, models.AutoField))
    columns = ", ".join(f.column for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    # Names from the model's own metadata; the values are parameters.
    sql = f"INSERT INTO {model._meta.db_table} ({columns}) VALUES ({marks})"  # noqa: S608
    return sql, fields


def _insert(cursor: Any, model: type[models.Model], given: dict[str, Any]) -> None:
    """One row: the values given by attribute name, every other field's default."""
    sql, fields = _insert_sql(model)
    now = timezone.now()
    values = []
    for f in fields:
        if f.attname in given:
            value = given[f.attname]
        elif getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            value = now
        else:
            value = f.get_default()
        if isinstance(f, models.JSONField) and value is not None:
            value = Jsonb(value)
        values.append(value)
    cursor.execute(sql, values)


@csrf_exempt
@require_POST
def bare_durable(request: HttpRequest) -> HttpResponse:
    raw = request.headers.get("Authorization", "").partition(" ")[2]
    _scheme, _, rest = raw.partition("_")
    prefix, _, secret = rest.partition("_")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT agent_id, secret_hash FROM {AgentToken._meta.db_table} "  # noqa: S608
            "WHERE prefix = %s AND revoked_at IS NULL",
            [prefix],
        )
        token = cursor.fetchone()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    if token is None or not hmac.compare_digest(token[1], digest):
        return JsonResponse({"error": "not_authenticated"}, status=401)
    body = json.loads(request.body)
    agent_id, key = token[0], request.headers["Idempotency-Key"]
    tool_id = _tool_id(body["tool"])
    call_id = uuid.uuid4()
    answer = {"id": str(call_id), "status": "pending", "tool": body["tool"]}
    with transaction.atomic(), connection.cursor() as cursor:
        _insert(
            cursor,
            IdempotencyRecord,
            {
                "agent_id": agent_id,
                "key": key,
                "request_hash": hashlib.sha256(request.body).hexdigest(),
                "locked_until": timezone.now(),
            },
        )
        cursor.execute(
            f"INSERT INTO {AgentSession._meta.db_table} (agent_id, session_id, rounds, "  # noqa: S608
            "started_at, last_call_at) VALUES (%s, %s, 1, now(), now()) "
            "ON CONFLICT (agent_id, session_id) DO UPDATE SET rounds = "
            f"{AgentSession._meta.db_table}.rounds + 1, last_call_at = now()",
            [agent_id, body["session_id"]],
        )
        _insert(
            cursor,
            ToolCall,
            {
                "id": call_id,
                "agent_id": agent_id,
                "tool_id": tool_id,
                "session_id": body["session_id"],
                "request_key": key,
                "arguments": body["arguments"],
                "reasoning": body.get("reasoning", ""),
                "status": "pending",
                "risk": "write",
                "arguments_hash": hashlib.sha256(
                    json.dumps(body["arguments"], sort_keys=True).encode()
                ).hexdigest(),
            },
        )
        _insert(
            cursor,
            AuditEvent,
            {
                "action": "call.submitted",
                "actor_type": "agent",
                "actor_id": str(agent_id),
                "tool_name": body["tool"],
                "session_id": body["session_id"],
                "call_id": call_id,
                "data": {"arguments": body["arguments"], "reasoning": body.get("reasoning")},
            },
        )
        cursor.execute(
            f"UPDATE {IdempotencyRecord._meta.db_table} SET state = 'complete', "  # noqa: S608
            "response_status = 202, response_body = %s, call_id = %s, completed_at = now() "
            "WHERE agent_id = %s AND key = %s",
            [Jsonb(answer), call_id, agent_id, key],
        )
    return JsonResponse(answer, status=202)


@cache
def _tool_id(name: str) -> int:
    """The tool's id, read once: the bare view checks nothing of the tool."""
    return Tool.objects.values_list("pk", flat=True).get(name=name)


urlpatterns = [
    path("bench/bare-insert", bare_insert),
    path("bench/bare-read", bare_read),
    path("bench/bare-durable", bare_durable),
    path("", include("config.urls")),
]
