"""An HTTP upstream is re-run by itself only once an admin named the idempotency header its
API honours. The header was named for every new upstream by default (``Idempotency-Key``),
so every API counted as refusing repeats, and a write that timed out after its effect was
sent again, one effect more each time, to APIs that ignore the header. Upstreams registered
before keep the header they have: the migration changes no behaviour silently."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from tests.support.migrations import migrate
from tools_registry.models import Upstream

BEFORE_THE_DEFAULT_CHANGED = [("tools_registry", "0017_tool_escalation_team_protected")]
NOWHERE = "http://127.0.0.1:9/openapi.json"  # nothing listens: registered, not imported


@pytest.mark.django_db
def test_add_upstream_names_no_idempotency_header_unless_told() -> None:
    with pytest.raises(CommandError, match="could not be imported"):
        call_command("add_upstream", "plain", "--openapi", NOWHERE, stdout=StringIO())
    with pytest.raises(CommandError, match="could not be imported"):
        call_command(
            "add_upstream", "keyed", "--openapi", NOWHERE,
            "--idempotency-header", "Idempotency-Key", stdout=StringIO(),
        )  # fmt: skip
    headers = dict(Upstream.objects.values_list("name", "idempotency_header"))
    assert headers == {"plain": "", "keyed": "Idempotency-Key"}


def test_add_upstreams_help_says_what_the_header_means_and_what_happens_without_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        call_command("add_upstream", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "honours as an idempotency key" in text
    assert "Without it, no key is sent and such a write waits for a person." in text


@pytest.mark.django_db
def test_the_admins_add_form_starts_with_no_header_and_says_what_one_means(
    admin_client: Client,
) -> None:
    page = admin_client.get("/admin/tools_registry/upstream/add/").content.decode()
    (field,) = re.findall(r'<input[^>]*name="idempotency_header"[^>]*>', page)
    assert 'value="' not in field or 'value=""' in field, field
    assert "waits for a person on the Needs attention page" in page


@pytest.mark.django_db(transaction=True)
def test_upstreams_registered_before_keep_the_header_they_have(
    latest: list[tuple[str, str]],
) -> None:
    """One that took the old default still sends it and is still re-run by itself: an
    admin who knows its API ignores the header empties it (audited), nothing does it
    behind their back."""
    old = migrate(BEFORE_THE_DEFAULT_CHANGED).get_model("tools_registry", "Upstream")
    old.objects.create(name="took-default", kind="openapi", url="https://a.example/o.json")
    old.objects.create(
        name="said-none", kind="openapi", url="https://b.example/o.json", idempotency_header=""
    )

    migrate(latest)

    headers = dict(Upstream.objects.values_list("name", "idempotency_header"))
    assert headers == {"took-default": "Idempotency-Key", "said-none": ""}
