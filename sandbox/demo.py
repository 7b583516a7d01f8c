"""The demo (``make run``, ``manage.py seed_demo``): people, teams, an agent with a token,
grants, and the sandbox systems' data. Idempotent: every run leaves the same demo."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from mcp import Client

from sandbox import payments as payment_api
from sandbox.demo_calls import RULES
from sandbox.models import Customer, HelpArticle, Payment
from sandbox.tickets import tickets
from tools_registry import services
from tools_registry.models import Agent, Tool, Upstream
from tools_registry.services.upstreams import Reader, register_upstream, sync_upstream
from tools_registry.upstreams import mcp as upstream_mcp
from tools_registry.upstreams import openapi
from tools_registry.upstreams.offers import Offer

ARTICLES = [
    (
        "reset-password",
        "Reset your password",
        "Open Settings, choose Security, then Reset password. A link arrives by e-mail within minutes.",
    ),
    (
        "refund-policy",
        "Refund policy",
        "Annual plans can be refunded within 30 days of payment. Monthly plans are refunded pro rata on request.",
    ),
    (
        "change-plan",
        "Change your plan",
        "Upgrade or downgrade from Billing. Upgrades apply at once; downgrades at the end of the period.",
    ),
    (
        "delete-account",
        "Delete your account",
        "Account deletion erases the customer record permanently. Export your data first.",
    ),
    (
        "invoices",
        "Download invoices",
        "Invoices are listed under Billing, Invoices, as PDF, for every payment.",
    ),
]

CUSTOMERS = [
    ("cus_0001", "Ada Lovelace", "ada@example.com", "+44 20 7946 0001", "pro"),
    ("cus_0002", "Grace Hopper", "grace@example.com", "+1 202 555 0142", "enterprise"),
    ("cus_0003", "Alan Turing", "alan@example.com", "+44 20 7946 0003", "free"),
    ("cus_0004", "Katherine Johnson", "katherine@example.com", "+1 757 555 0199", "pro"),
]

PAYMENTS = [
    ("pay_0001", 12000, "usd"),
    ("pay_0002", 4900, "eur"),
    ("pay_0003", 99000, "usd"),
    ("pay_0004", 2500, "gbp"),
]


def seed_sandbox() -> None:
    for slug, title, body in ARTICLES:
        HelpArticle.objects.update_or_create(slug=slug, defaults={"title": title, "body": body})
    for customer_id, name, email, phone, plan in CUSTOMERS:
        Customer.objects.get_or_create(
            customer_id=customer_id,
            defaults={"name": name, "email": email, "phone": phone, "plan": plan},
        )
    for payment_id, amount, currency in PAYMENTS:
        Payment.objects.get_or_create(
            payment_id=payment_id, defaults={"amount_cents": amount, "currency": currency}
        )


DEMO_TOOLS = [
    "search_docs",
    "get_customer",
    "send_email",
    "update_customer",
    "issue_refund",
    "delete_customer",
]

# The function-calling security checklist's example: each end user's role gets a scoped set
# of tools. The demo agent is trusted to assert these roles (docs/end-users.md); a call
# that names no role gets the whole allowlist, as before roles existed.
DEMO_END_USERS: dict[str, Any] = {
    "user_roles_from": Agent.UserRoles.ASSERTED,
    "assertable_roles": ["viewer", "support", "admin"],
    "role_scopes": {
        "viewer": {"risks": ["read"]},
        "support": {"risks": ["read", "write"]},
        "admin": {"risks": ["read", "write", "destructive"]},
    },
}

GROUP_PERMISSIONS = {
    "tool-admins": [
        "tools_registry.stop_agent",
        "tools_registry.add_identityprovider",
        "tools_registry.change_identityprovider",
        "tools_registry.view_identityprovider",
        "tools_registry.view_tool",
        "tools_registry.change_tool",
        "tools_registry.add_agent",
        "tools_registry.change_agent",
        "tools_registry.view_agent",
        "tools_registry.add_agenttoken",
        "tools_registry.change_agenttoken",
        "tools_registry.view_agenttoken",
        "auth.view_user",
        "auth.view_group",
    ],
    "auditors": [
        "audit.view_auditevent",
        "approvals.view_toolcall",
        "approvals.view_decision",
        "tools_registry.view_tool",
        "tools_registry.view_agent",
    ],
    "reviewers": [],
}


@dataclass
class DemoLogins:
    password: str
    password_generated: bool
    agent_token: str
    password_file: Path  # where a generated password is kept


PASSWORD_FILE = "demo_password"  # noqa: S105 - a file name under var/


def _secret_file(name: str) -> Path:
    return Path(settings.VAR_DIR) / name


def _remembered(name: str, make: Callable[[], str]) -> tuple[str, bool]:
    """A demo secret kept under var/ (mode 0600) so every `make run` can print it again."""
    path = _secret_file(name)
    if path.exists():
        return path.read_text().strip(), False
    value = make()
    path.write_text(value)
    path.chmod(0o600)
    return value, True


def _demo_upstreams() -> list[tuple[dict[str, Any], Reader]]:
    """The demo's two upstreams, on this deployment's own sandbox: the payments API (its
    OpenAPI document) and the ticketing system (an MCP server). ``make run`` seeds before it
    serves, so their offers are read in-process rather than over HTTP."""
    base = settings.PUBLIC_URL
    payments = {
        "name": "payments",
        "kind": Upstream.Kind.OPENAPI,
        "url": f"{base}/sandbox/payments/v1/openapi.json",
        "headers": [("Authorization", f"Bearer {settings.SANDBOX_PAYMENTS_KEY}")],
        "idempotency_header": "Idempotency-Key",  # the payments API refuses repeats of a key
    }
    tickets_upstream = {
        "name": "tickets",
        "kind": Upstream.Kind.MCP,
        "url": f"{base}/sandbox/tickets/mcp",
        "rerunnable": True,  # create_ticket honours the key in _meta
    }

    def read_payments(upstream: Upstream) -> Offer:
        return openapi.offer(
            payment_api.OPENAPI,
            upstream=upstream.name,
            document_url=upstream.url,
            base_url="",
            reserved_headers=frozenset(["Idempotency-Key", "Authorization"]),
        )

    def read_tickets(upstream: Upstream) -> Offer:
        async def listed() -> list[Any]:
            async with Client(tickets) as client:  # the SDK's in-memory transport
                return list((await client.list_tools()).tools)

        return upstream_mcp.offer_from(upstream.name, anyio.run(listed))

    return [(payments, read_payments), (tickets_upstream, read_tickets)]


def _seed_upstreams() -> list[Tool]:
    """Register (or point at this deployment again) the demo's upstreams and import their
    tools, enabled; the tools they offer."""
    imported: list[Tool] = []
    for spec, reader in _demo_upstreams():
        upstream = Upstream.objects.filter(name=spec["name"]).first()
        if upstream is None:
            upstream = register_upstream(**spec)
        elif upstream.url != spec["url"]:
            Upstream.objects.filter(pk=upstream.pk).update(url=spec["url"])
            upstream.url = spec["url"]
        report = sync_upstream(upstream=upstream, enable_new=True, reader=reader)
        names = [*report.imported, *report.changed, *report.unchanged]
        imported += list(Tool.objects.filter(name__in=names))
    return imported


@transaction.atomic
def seed_demo() -> DemoLogins:
    services.sync_tools()
    groups = {}
    for name, perms in GROUP_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=name)
        for dotted in perms:
            app_label, codename = dotted.split(".")
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        groups[name] = group

    env_password = os.environ.get("DEMO_PASSWORD", "")
    if env_password:
        password, generated = env_password, False
    else:
        password, generated = _remembered(PASSWORD_FILE, lambda: secrets.token_urlsafe(12))

    people: dict[str, dict[str, Any]] = {
        "admin": {"groups": ["tool-admins"], "is_staff": True, "is_superuser": True},
        "reviewer": {"groups": ["reviewers"]},
        "reviewer2": {"groups": ["reviewers"]},
        "auditor": {"groups": ["auditors"]},
    }
    users = {}
    # The four logins share one password, so one hash of it (and, when `make run` seeds
    # again, one check of each distinct stored hash): each is a deliberately slow PBKDF2,
    # a third of a second of CPU, and four made every start a second slower. A stored
    # hash -> whether it is of the password.
    checked: dict[str, bool] = {}
    shared = ""
    for username, spec in people.items():
        user, created = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@countersign.example"}
        )
        user.is_staff = spec.get("is_staff", False)
        user.is_superuser = spec.get("is_superuser", False)
        # Only a changed password is set again: a new hash signs every session out.
        stored = user.password
        if stored not in checked:
            checked[stored] = not created and user.check_password(password)
        if not checked[stored]:
            shared = shared or make_password(password)
            user.password = shared
        user.save()
        user.groups.add(*(groups[g] for g in spec["groups"]))
        users[username] = user

    tools = list(Tool.objects.filter(name__in=DEMO_TOOLS)) + _seed_upstreams()
    agent = Agent.objects.filter(name="demo-agent").first() or Agent(
        name="demo-agent",
        owner=users["admin"],
        description="The support assistant of the demo.",
    )
    allowed = set(agent.allowed_tools.all()) if agent.pk else set()
    scoped = bool(agent.role_scopes)
    if not scoped:
        # A new demo, or one seeded before roles existed; an admin's own scopes are kept.
        for field, value in DEMO_END_USERS.items():
            setattr(agent, field, value)
    if agent.pk is None or not set(tools) <= allowed or not scoped:
        # Through the service, so the demo's allowlist is in the audit trail like any other.
        services.save_agent(agent=agent, allowed_tools=allowed | set(tools), changed_by=None)
    for tool in tools:
        # Idempotent: only a grant that did not exist yet is made (and audited).
        services.grant_review(tool=tool, group=groups["reviewers"], granted_by=users["admin"])
        # `reviewer` may also unmask sensitive arguments (with a reason); `reviewer2` may not,
        # so the demo shows both sides of the reveal permission.
        services.grant(
            tool=tool,
            permission="reveal_tool_arguments",
            user=users["reviewer"],
            granted_by=users["admin"],
        )

    token_path = _secret_file("demo_agent_token")
    if token_path.exists() and services.authenticate_token(token_path.read_text().strip()) == agent:
        token = token_path.read_text().strip()
    else:
        _, token = services.issue_token(agent=agent, created_by=users["admin"], label="demo")
        token_path.write_text(token)
        token_path.chmod(0o600)
    _seed_rules(users["admin"])
    seed_sandbox()
    return DemoLogins(
        password=password,
        password_generated=generated,
        agent_token=token,
        password_file=_secret_file(PASSWORD_FILE),
    )


def _seed_rules(admin: User) -> None:
    """The demo's policy rules, once: a tool an admin has given rules of their own keeps them."""
    for name, rules in RULES.items():
        tool = Tool.objects.get(name=name)
        if not tool.rules and tool.policy_version == 1:
            services.update_policy(tool=tool, changes={"rules": rules}, changed_by=admin)


def demo_agent_token() -> str:
    """The demo agent's token as ``seed_demo`` left it (var/demo_agent_token), or ""."""
    path = _secret_file("demo_agent_token")
    return path.read_text().strip() if path.exists() else ""
