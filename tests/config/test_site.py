"""Site-wide behaviour: health check, sign-in pages, CSP, role-aware navigation."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.cache import caches
from django.test import Client, override_settings

from config.celery import app as celery_app
from tests.conftest import World

pytestmark = pytest.mark.django_db


def test_healthz_reports_each_dependency_in_services_mode(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "database": "ok",
        "cache": "ok",
        "broker": "ok",
        "status": "ok",
        "mode": "services",
    }


def test_healthz_answers_a_head_probe(client: Client) -> None:
    """Some load balancers probe with HEAD: answered 405, the deployment looked down."""
    assert client.head("/healthz").status_code == 200


def test_healthz_says_a_redis_that_hangs_is_down_within_seconds(client: Client) -> None:
    """A server that takes the connection and never answers (a hung Redis, a firewall that
    drops): the check held the probe for as long as the probe waited."""
    import contextlib
    import socket
    import threading
    import time

    from django.conf import settings

    def hang_up_late(server: socket.socket) -> None:
        """Take each connection and say nothing for 15 s (so a check without a timeout
        fails the test instead of hanging it), then hang up."""
        server.settimeout(20)
        taken = []
        with contextlib.suppress(OSError):
            while True:
                taken.append(server.accept()[0])
                threading.Timer(15, taken[-1].close).start()

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        threading.Thread(target=hang_up_late, args=(silent,), daemon=True).start()
        hung = dict(settings.CACHES["default"])
        hung["LOCATION"] = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with override_settings(CACHES={"default": hung}):
            caches.close_all()
            started = time.monotonic()
            response = client.get("/healthz")
            assert time.monotonic() - started < 10
        caches.close_all()
    assert response.status_code == 503
    assert response.json()["cache"].startswith("down")


@override_settings(
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        }
    }
)
def test_healthz_is_503_when_the_cache_is_down(client: Client) -> None:
    caches.close_all()
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["cache"].startswith("down: ")
    assert body["database"] == "ok"


def test_healthz_is_503_when_the_broker_is_down(client: Client) -> None:
    original = celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/healthz")
    finally:
        celery_app.conf.broker_url = original
    assert response.status_code == 503
    assert response.json()["broker"].startswith("down: ")


def test_the_login_page_carries_a_csp_nonce_on_every_script(client: Client) -> None:
    response = client.get("/login/")
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    scripts = re.findall(r"<script[^>]*>", response.content.decode())
    assert scripts, "htmx and the app script are loaded"
    assert all(f'nonce="{nonce}"' in tag for tag in scripts)


def test_signing_in_and_out(world: World) -> None:
    client = Client()
    response = client.post("/login/", {"username": "bob", "password": "pw-bob"})
    assert response.status_code == 302
    assert client.get("/approvals/").status_code == 200
    assert client.get("/logout/").status_code == 405, (
        "signing out changes state, so it is POST only"
    )
    assert client.post("/logout/").status_code == 302
    assert client.get("/approvals/").status_code == 302


def test_the_navigation_shows_each_person_only_their_sections(world: World) -> None:
    auditors = Group.objects.create(name="auditors")
    auditors.permissions.add(Permission.objects.get(codename="view_auditevent"))
    auditor = User.objects.create_user("dana", password="pw")
    auditor.groups.add(auditors)

    def nav_of(user: User) -> str:
        client = Client()
        client.force_login(user)
        page = client.get("/login/", follow=True).content.decode()
        return re.search(r'<nav aria-label="Main">(.*?)</nav>', page, re.S).group(1)

    assert "Approvals" in nav_of(world.bob) and "Audit" not in nav_of(world.bob)
    assert "Audit" in nav_of(auditor) and "Approvals" not in nav_of(auditor)
    assert "Approvals" not in nav_of(world.charlie) and "Admin" not in nav_of(world.charlie)


def test_the_home_page_sends_each_role_to_its_workspace(world: World) -> None:
    client = Client()
    client.force_login(world.bob)
    assert client.get("/").url == "/approvals/"
    assert Client().get("/").url.startswith("/login/")
