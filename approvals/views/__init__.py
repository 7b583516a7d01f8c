"""The reviewer UI: one module per page."""

from __future__ import annotations

from approvals.views.detail import (
    add_note,
    decide,
    detail,
    live,
    reveal,
)
from approvals.views.queue import next_call, queue
from approvals.views.reauth import reauthenticate
from approvals.views.standing import revoke_standing, standing_approvals

__all__ = [
    "add_note",
    "decide",
    "detail",
    "live",
    "next_call",
    "queue",
    "reauthenticate",
    "reveal",
    "revoke_standing",
    "standing_approvals",
]
