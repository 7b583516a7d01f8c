"""Re-authentications sent side by side: five wrong passwords sign the session out however
many are sent at once. Real threads against PostgreSQL (the test client in each), so not in
``test_reauth``, whose tests share one world and roll back."""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

from django.contrib.auth import authenticate
from django.db import connection
from django.test import Client

from accounts.attempts import MAX_FAILURES
from audit.models import AuditEvent
from tests.conftest import World

SENT = 8


def test_wrong_passwords_sent_side_by_side_still_sign_the_session_out(
    live_world: World,
) -> None:
    """The count of wrong passwords was kept in the session: eight sent at once each read it
    as none and wrote one, so all eight were checked, and the session, one failure down,
    stayed signed in to send eight more. A stolen session guessed without end (up to the
    account's lockout, which then locked its owner out as well)."""
    signing_in = Client()
    assert signing_in.post("/login/", {"username": "bob", "password": "pw-bob"}).status_code == 302
    key = signing_in.cookies["sessionid"].value

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1)  # every attempt has read its session before any is answered
        return authenticate(*args, **kwargs)

    def guess(n: int) -> None:
        client = Client()
        client.cookies["sessionid"] = key
        client.post("/approvals/reauthenticate/", {"password": f"guess-{n}"})
        connection.close()

    with mock.patch("approvals.views.reauth.authenticate", side_effect=slow):
        guesses = [threading.Thread(target=guess, args=(n,)) for n in range(SENT)]
        for thread in guesses:
            thread.start()
        for thread in guesses:
            thread.join(30)

    checked = AuditEvent.objects.filter(action="reviewer.reauthentication_failed").count()
    assert checked == MAX_FAILURES
    holder = Client()
    holder.cookies["sessionid"] = key
    response = holder.get("/approvals/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
