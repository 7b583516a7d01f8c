"""URLs of the benchmark's site: Countersign's, plus the bare views it is compared with.

The bare insert parses the JSON body and inserts it as one row: the least a Django endpoint
that records a request can do. The bare read parses the body and calls the tool's handler
in-process, as the executor would, with nothing around it.
"""

from __future__ import annotations

import json
import uuid

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tools_registry import registry


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


urlpatterns = [
    path("bench/bare-insert", bare_insert),
    path("bench/bare-read", bare_read),
    path("", include("config.urls")),
]
