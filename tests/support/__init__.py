"""Harnesses shared by the tests of several apps (no tests here): worker processes
(``workers``), the chaos harness (``chaos``), calls in every state (``calls``), the
controllable test tool (``probe``), a spy on the long-poll (``longpoll``) and the audit
writer process (``audit_writer``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root: where ``manage.py`` is."""
