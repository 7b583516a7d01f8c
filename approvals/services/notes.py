"""Reviewers' notes on a call: a comment that is not a verdict. A reviewer whose page went
stale while someone else decided keeps what they typed by adding it here."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from approvals import events
from approvals.guards import Refused
from approvals.models import Note, ToolCall
from approvals.transitions import lock_call
from tools_registry.permissions import require_reviewer

MAX_LENGTH = 2000


class NoteRefused(Refused):
    code = "note_refused"


@transaction.atomic
def add_note(*, call_id: UUID, author: Any, text: str) -> Note:
    # The call's row lock, as a correction takes it: a correction masks the quotes of the
    # values it replaces in the notes it reads, and a note committed after that read kept a
    # replaced hidden value in clear, with nothing left to mask it by.
    call = lock_call(call_id)
    if call is None:
        raise ToolCall.DoesNotExist(call_id)
    require_reviewer(author, call.tool)
    text = text.strip()
    if not text:
        raise NoteRefused("Write the note first.")
    if len(text) > MAX_LENGTH:
        raise NoteRefused(f"A note is at most {MAX_LENGTH} characters.")
    note = Note.objects.create(call=call, author=author, text=text, created_at=timezone.now())
    events.note_added(call, author=author, text=text)
    return note
