"""Every status change of a tool call. Nothing else assigns ``ToolCall.status``.

Each function locks (or conditionally updates) the call, checks the transition table,
changes it, writes its audit event in the same transaction, and sends work to the
executor only after commit. One module per concern; this package re-exports them.
"""

from __future__ import annotations

from approvals.services.attention import (
    AttentionRefused,
    ConflictOfInterest,
    NoLongerNeedsAttention,
    NoteRequired,
    OutcomeNotAllowed,
    RerunConfirmationRequired,
    needs_a_person,
    recheck_call,
    rerun_call,
    resolve_call,
)
from approvals.services.calls import (
    RetryRefused,
    abandoned_after,
    cancel_call,
    create_call,
    expire_call,
    expire_locked,
    fail_abandoned_read,
    retry_call,
)
from approvals.services.common import arguments_hash, move
from approvals.services.decisions import (
    AlreadyVoted,
    ArgumentsChanged,
    CannotRun,
    CommentRequired,
    ConfirmationRequired,
    DecisionRefused,
    DecisionResult,
    NotPending,
    ReauthenticationRequired,
    SeparationOfDuties,
    decide,
)
from approvals.services.execution import (
    Claim,
    Outcome,
    claim_call,
    expire_lease,
    finish_call,
    refuse_call,
)
from approvals.services.recovery import Reconciliation, reconcile_call
from approvals.services.reveals import RevealedArguments, RevealRefused, reveal_arguments

__all__ = [
    "AlreadyVoted",
    "ArgumentsChanged",
    "AttentionRefused",
    "CannotRun",
    "Claim",
    "CommentRequired",
    "ConfirmationRequired",
    "ConflictOfInterest",
    "DecisionRefused",
    "DecisionResult",
    "NoLongerNeedsAttention",
    "NotPending",
    "NoteRequired",
    "Outcome",
    "OutcomeNotAllowed",
    "ReauthenticationRequired",
    "Reconciliation",
    "RerunConfirmationRequired",
    "RetryRefused",
    "RevealRefused",
    "RevealedArguments",
    "SeparationOfDuties",
    "abandoned_after",
    "arguments_hash",
    "cancel_call",
    "claim_call",
    "create_call",
    "decide",
    "expire_call",
    "expire_lease",
    "expire_locked",
    "fail_abandoned_read",
    "finish_call",
    "move",
    "needs_a_person",
    "recheck_call",
    "reconcile_call",
    "refuse_call",
    "rerun_call",
    "resolve_call",
    "retry_call",
    "reveal_arguments",
]
