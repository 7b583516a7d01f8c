"""Fixtures of the clients' tests: the Python client importable from its source tree
(clients/python), and a clean slate in Redis for every test."""

from __future__ import annotations

import sys

import pytest

from tests.support import ROOT

CLIENT_DIR = ROOT / "clients" / "python"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))


@pytest.fixture(autouse=True)
def _clean_shared_state(clean_shared_state: None) -> None:
    """Every test here starts and ends with no rate-limit window or breaker in Redis."""
