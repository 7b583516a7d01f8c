"""Countersign's Python client: idempotent, resumable tool calls through the approval gateway."""

from countersign_client.client import TERMINAL, Countersign, outcome
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
from countersign_client.state import MemoryState, TaskState
from countersign_client.webhooks import SIGNATURE_HEADER, verify_webhook

__all__ = [
    "SIGNATURE_HEADER",
    "TERMINAL",
    "ApiError",
    "CallCancelled",
    "CallEnded",
    "CallExpired",
    "CallFailed",
    "CallRejected",
    "Countersign",
    "CountersignError",
    "MemoryState",
    "TaskState",
    "TransportError",
    "WaitTimeout",
    "outcome",
    "verify_webhook",
]
