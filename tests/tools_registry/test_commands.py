"""create_agent_token, the management command people run by hand to give an agent a token.
(seed_demo's: ``tests/sandbox/test_commands.py``.)"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from tools_registry.services import authenticate_token

pytestmark = pytest.mark.django_db


def test_create_agent_token_prints_the_token_alone_on_its_last_line(world) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_agent_token", "support-bot", stdout=out, stderr=err)
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("cst_") and " " not in token
    assert authenticate_token(token) == world.agent
    secret = token.split("_", 2)[2]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM tools_registry_agenttoken WHERE secret_hash LIKE %s OR prefix LIKE %s",
            [f"%{secret}%", f"%{secret}%"],
        )
        assert cursor.fetchone()[0] == 0, "only a hash of the secret is stored"


def test_create_agent_token_refuses_an_unknown_agent(world) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No agent named"):
        call_command("create_agent_token", "nobody", stdout=StringIO())


def test_create_agent_token_refuses_a_label_too_long_to_keep(world) -> None:
    from django.core.management.base import CommandError

    from tools_registry.models import AgentToken

    with pytest.raises(CommandError, match="at most 100 characters"):
        call_command("create_agent_token", "support-bot", "--label", "x" * 101, stdout=StringIO())
    assert not AgentToken.objects.filter(label__startswith="xxx").exists()
