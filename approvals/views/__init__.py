"""The reviewer UI: one module per page."""

from __future__ import annotations

from approvals.views.detail import decide, detail, reveal
from approvals.views.queue import next_call, queue
from approvals.views.reauth import reauthenticate

__all__ = ["decide", "detail", "next_call", "queue", "reauthenticate", "reveal"]
