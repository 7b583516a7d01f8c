"""Fixtures of the clients' tests. (The client is importable from its source tree,
clients/python: tests/conftest.py puts it on the path; every test starts with a clean slate
in Redis, tests/conftest.py's ``clean_shared_state``.)"""

from __future__ import annotations

from tests.conftest import CLIENT_DIR

__all__ = ["CLIENT_DIR"]
