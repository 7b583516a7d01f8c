"""URLs of the benchmark's site: Countersign's, plus the bare view it is compared with.

The bare view parses the JSON body and inserts it as one row: the least a Django endpoint
that records a request can do.
"""

from __future__ import annotations

import json

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


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


urlpatterns = [path("bench/bare-insert", bare_insert), path("", include("config.urls"))]
