"""Every action recorded anywhere in the code is in the catalogue (and so in docs/audit.md)."""

from __future__ import annotations

import re

from audit.catalogue import ACTIONS
from tests.support import ROOT

PRODUCT_PACKAGES = (
    "core",
    "audit",
    "tools_registry",
    "accounts",
    "approvals",
    "gateway",
    "sandbox",
    "config",
)

PATTERNS = [
    re.compile(r'\baction="([a-z_]+\.[a-z_.]+)"'),
    re.compile(r'\bcall_event\(\s*\w+,\s*"([a-z_]+\.[a-z_.]+)"'),
]


def recorded_actions() -> set[str]:
    found: set[str] = set()
    for app in PRODUCT_PACKAGES:
        for path in (ROOT / app).rglob("*.py"):
            text = path.read_text()
            for pattern in PATTERNS:
                found.update(pattern.findall(text))
    return found


def test_every_recorded_action_is_catalogued() -> None:
    actions = recorded_actions()
    assert {"call.submitted", "auth.login", "token.created"} <= actions, "the scan finds them"
    missing = sorted(actions - set(ACTIONS))
    assert missing == [], f"add these to audit/catalogue.py (and docs/audit.md): {missing}"


def test_the_audit_docs_list_the_catalogue() -> None:
    page = (ROOT / "docs" / "audit.md").read_text()
    missing = [action for action in ACTIONS if f"`{action}`" not in page]
    assert missing == [], f"the event catalogue in docs/audit.md lacks {missing}"
