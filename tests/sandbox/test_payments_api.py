"""The simulated systems are a demo, never an open door: off in production, and their
payments API wants its key and refuses a second refund under one Idempotency-Key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import Client

from tests.support import ROOT

pytestmark = pytest.mark.django_db

REFUND = {"payment_id": "pay_0001", "amount_cents": 100, "currency": "usd", "reason": "late"}


def post_refund(client: Client, body: dict, *, key: str, api_key: str | None) -> object:
    headers = {"HTTP_IDEMPOTENCY_KEY": key}
    if api_key is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client.post(
        "/sandbox/payments/v1/refunds", json.dumps(body), content_type="application/json", **headers
    )


def test_the_payments_api_refuses_callers_without_its_key(world, client: Client) -> None:
    assert post_refund(client, REFUND, key="k-1", api_key=None).status_code == 401
    assert post_refund(client, REFUND, key="k-1", api_key="guess").status_code == 401
    assert client.get("/sandbox/payments/v1/refunds/by-key/k-1").status_code == 401


def test_a_second_refund_under_the_same_key_is_refused_not_answered_with_the_first(
    world, client: Client
) -> None:
    key = settings.SANDBOX_PAYMENTS_KEY
    first = post_refund(client, REFUND, key="countersign-x", api_key=key)
    assert first.status_code == 200
    replay = post_refund(client, REFUND, key="countersign-x", api_key=key)
    assert (replay.status_code, replay.json()) == (200, first.json())
    other = post_refund(client, {**REFUND, "amount_cents": 3000}, key="countersign-x", api_key=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_production_runs_without_the_sandbox_or_its_demo_tools(tmp_path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in {"SANDBOX_ENABLED", "COUNTERSIGN_VAR_DIR"}
    }
    env.update(COUNTERSIGN_VAR_DIR=str(tmp_path), SECRET_KEY="production-like")
    script = (
        "from django.conf import settings; from django.urls import resolve, Resolver404\n"
        "from tools_registry import registry\n"
        "try:\n    resolve('/sandbox/payments/v1/refunds'); mounted = True\n"
        "except Resolver404:\n    mounted = False\n"
        "print(settings.SANDBOX_ENABLED, 'sandbox' in settings.INSTALLED_APPS, mounted,"
        " [t.name for t in registry.registered()])\n"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == "False False False []"
