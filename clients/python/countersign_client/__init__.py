"""Countersign's Python client: idempotent, resumable tool calls through the approval gateway.

``Countersign`` (sync) and ``AsyncCountersign`` (async) have the same surface. Framework
adapters: ``countersign_client.integrations.langchain`` and ``.openai_agents``; a mock-model
harness for testing agent loops without an LLM: ``countersign_client.testing``.
"""

from countersign_client.aio import AsyncCountersign
from countersign_client.client import TERMINAL, Countersign, Result, outcome
from countersign_client.errors import (
    ApiError,
    CallCancelled,
    CallEnded,
    CallExpired,
    CallFailed,
    CallRejected,
    CountersignError,
    TransportError,
    WaitTimeout,
)
from countersign_client.state import DirectoryState, MemoryState, StateStore
from countersign_client.webhooks import SIGNATURE_HEADER, verify_webhook

__all__ = [
    "SIGNATURE_HEADER",
    "TERMINAL",
    "ApiError",
    "AsyncCountersign",
    "CallCancelled",
    "CallEnded",
    "CallExpired",
    "CallFailed",
    "CallRejected",
    "Countersign",
    "CountersignError",
    "DirectoryState",
    "MemoryState",
    "Result",
    "StateStore",
    "TransportError",
    "WaitTimeout",
    "outcome",
    "verify_webhook",
]
