"""Fixtures of the registry's tests: an admin, throwaway tools in code, an admin form's data
(audit look-ups: ``tests.conftest.events``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.support.migrations import at_the_latest
from tools_registry import registry
from tools_registry.policy import Risk
from tools_registry.registry import ToolContext

GOOD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_id": {
            "type": "string",
            "description": "The customer to credit.",
            "maxLength": 28,
        },
        "amount_cents": {
            "type": "integer",
            "description": "How much to credit, in cents.",
            "minimum": 1,
        },
    },
    "required": ["customer_id", "amount_cents"],
    "additionalProperties": False,
}
GOOD_DESCRIPTION = (
    "Credit a customer's account balance. Side effect: the balance grows at once; "
    "a credit cannot be undone."
)


@pytest.fixture
def tool_admin(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw-root")


@pytest.fixture
def admin_client(tool_admin: User) -> Client:
    client = Client()
    client.force_login(tool_admin)
    return client


def _handler(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"credited": arguments["amount_cents"]}


@contextmanager
def tool_in_code(
    *,
    name: str | None = None,
    description: str = GOOD_DESCRIPTION,
    input_schema: dict[str, Any] | None = None,
    risk: str = Risk.WRITE,
    **options: Any,
) -> Iterator[registry.RegisteredTool]:
    """Declare a tool in the registry for the duration of a test, then remove it."""
    name = name or f"credit_{uuid.uuid4().hex[:8]}"
    spec = registry.tool(
        name=name,
        description=description,
        input_schema=input_schema or GOOD_SCHEMA,
        risk=risk,
        **options,
    )(_handler)
    try:
        yield spec
    finally:
        registry.unregister(name)


@contextmanager
def code_removed(name: str) -> Iterator[None]:
    """Simulate a tool whose code was deleted, and put it back afterwards."""
    spec = registry.unregister(name)
    assert spec is not None
    try:
        yield
    finally:
        registry.restore(spec)


def admin_form_data(response: Any) -> dict[str, Any]:
    """The POST data an admin change form would send back unchanged (fields + inlines)."""
    data: dict[str, Any] = {}

    def collect(form: Any) -> None:
        for name in form.fields:
            value = form[name].value()  # already as the widget renders it
            if value is not None:
                data[form.add_prefix(name)] = value

    collect(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        collect(inline.formset.management_form)
        for sub in inline.formset.forms:
            collect(sub)
    return data


@pytest.fixture
def latest() -> Iterator[list[tuple[str, str]]]:
    """Every app's newest migration, where a migration's test leaves the database."""
    yield from at_the_latest()
