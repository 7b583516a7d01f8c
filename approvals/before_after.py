"""The world a call would change, as it is now: what the reviewer sees beside the proposal.

A tool may declare a read-only ``current_state`` (``tools_registry.registry.State``): the
customer record before an update, the charge before a refund, the record and what hangs
off it before a delete. The reviewer's verdict binds to the hash of what they were shown,
as it binds to the arguments' hash: if the record changed while they read, the verdict is
refused and the page shows the new state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from approvals import hidden
from approvals.models import ToolCall
from audit.canonical import canonical_json, sha256_hex
from tools_registry import registry, sources

logger = logging.getLogger(__name__)

UNREADABLE = {"error": "The current state could not be read; decide on the arguments alone."}


@dataclass(frozen=True)
class Shown:
    state: dict[str, Any] | None  # None: the tool shows no current state
    hash: str  # "" when there is none


NOTHING = Shown(state=None, hash="")


def current_state(call: ToolCall, arguments: Any = None) -> Shown:
    """Read what ``call`` (or ``arguments`` in its place) would change, without changing it."""
    try:
        spec = sources.implementation(call.tool)
    except registry.UnknownTool:
        return NOTHING
    if spec.current_state_fn is None:
        return NOTHING
    try:
        state = spec.current_state_fn(call.arguments if arguments is None else arguments).as_dict()
    except Exception:
        # The arguments come from an agent and the downstream may be down: the reviewer
        # still decides, on the arguments alone, and is told so.
        logger.exception("current state of %s call %s could not be read", call.tool.name, call.pk)
        state = dict(UNREADABLE)
    # The verdict binds to the state as read; reviewers and the trail see it with the values
    # of the call's secret and sensitive fields masked (a title naming the record, say).
    secrets = hidden.values(call.tool, call.arguments if arguments is None else arguments)
    return Shown(state=hidden.value(state, secrets), hash=sha256_hex(canonical_json(state)))
