"""Fixtures of the clients' tests: a clean slate in Redis for every test. (The client is
importable from its source tree, clients/python: tests/conftest.py puts it on the path.)"""

from __future__ import annotations

import pytest

from tests.conftest import CLIENT_DIR

__all__ = ["CLIENT_DIR"]


@pytest.fixture(autouse=True)
def _clean_shared_state(clean_shared_state: None) -> None:
    """Every test here starts and ends with no rate-limit window or breaker in Redis."""
