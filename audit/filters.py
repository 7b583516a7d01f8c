"""The auditor's filters: read from the URL, applied to the trail, written back to links.

Every filter is an exact match on an indexed column (``models.AuditEvent.Meta.indexes``;
``after_seq`` a range of the unique ``seq``), so any combination stays fast on millions of
rows; the page itself is keyset-paginated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from uuid import UUID

from django.db.models import Q, QuerySet
from django.http import QueryDict
from django.utils import timezone
from django.utils.http import urlencode

from audit.masking import mask_text
from audit.models import AuditEvent

# Kinds of events an auditor can ask for, or hide, in one go. "access" is what a demo seed
# or a migration writes by the dozen (grants, teams, permissions) and drowns the calls in.
KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "calls": ("Tool calls", frozenset()),  # every action starting "call."
    "access": (
        "Grants, teams and permissions",
        frozenset(
            {
                "grant.added",
                "grant.removed",
                "auth.groups_changed",
                "auth.permissions_changed",
                "auth.team_created",
                "auth.team_changed",
                # A team or an account deleted takes its grants of tools with it.
                "auth.team_deleted",
                "auth.user_deleted",
                "user.access_changed",
            }
        ),
    ),
    "sign_in": (
        "Sign-ins",
        frozenset(
            {
                "auth.login",
                "auth.logout",
                "auth.login_failed",
                "auth.locked_out",
                "auth.two_factor_enrolled",
                "auth.two_factor_verified",
                "auth.two_factor_failed",
                "auth.two_factor_removed",
                "auth.password_set",
                "auth.lockout_lifted",
                "auth.sso_user_created",
                "auth.sso_refused",
                "auth.sso_linked",
                "reviewer.reauthenticated",
                "reviewer.reauthentication_failed",
            }
        ),
    ),
}


def _kind_q(kind: str) -> Q:
    if kind == "calls":
        return Q(action__startswith="call.")
    return Q(action__in=sorted(KINDS[kind][1]))


TEXT_FILTERS = {
    "actor": "actor_label",
    "agent": "agent_name",
    "tool": "tool_name",
    "action": "action",
    "outcome": "outcome",
}


@dataclass(frozen=True)
class EventFilter:
    start: str = ""  # ISO date or date-time, UTC
    end: str = ""
    actor: str = ""
    agent: str = ""
    tool: str = ""
    session: str = ""
    call: str = ""
    action: str = ""
    outcome: str = ""
    kind: str = ""  # one of KINDS: only events of that kind
    hide_access: str = ""  # "1": leave out grants, teams and permissions (seeding noise)
    # Only events sealed after this seq: the cursor of a reader that follows the trail (see
    # apply); it is a filter, kept in links and exports, not the page's cursor.
    after_seq: str = ""
    before: int | None = None  # keyset cursor: show events with id < before

    @classmethod
    def from_query(cls, query: QueryDict) -> EventFilter:
        values = {
            f.name: query.get(f.name, "").strip()[:200] for f in fields(cls) if f.name != "before"
        }
        # A session id is taken as the agent sent it (spaces are part of it), and as long as
        # it is stored: masked, a 128-character id holding addresses grows past 200.
        values["session"] = query.get("session", "")[:SESSION_FILTER_LENGTH]
        return cls(**values, before=whole_number(query.get("before", "")))

    def errors(self) -> list[str]:
        problems = []
        if any("\x00" in value for value in self.active.values()):
            # PostgreSQL text cannot hold NUL: refuse it here rather than fail mid-query.
            problems.append("filters may not contain NUL characters")
        for name in ("start", "end"):
            if getattr(self, name) and _instant(getattr(self, name)) is None:
                problems.append(
                    f"{name}: use an ISO date-time in UTC such as 2026-11-21 or 2026-11-21T09:30"
                )
        start, end = _instant(self.start), _instant(self.end)
        if start is not None and end is not None and start >= end:
            # Matching nothing would read as "no events then": the two were swapped, or one
            # date was given for both, which the until (excluded) leaves nothing of.
            problems.append(
                "start: must be before end (the end is excluded: for one day, end on the next)"
            )
        if self.call and _uuid(self.call) is None:
            problems.append("call: not a call id")
        if self.kind and self.kind not in KINDS:
            problems.append(f"kind: one of {', '.join(KINDS)}")
        if self.after_seq and whole_number(self.after_seq) is None:
            problems.append("after_seq: a seq (the # column), a whole number")
        return problems

    @property
    def active(self) -> dict[str, str]:
        """The filters in force (not the page cursor), as they appear in the URL."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "before" and getattr(self, f.name)
        }

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """The filtered trail; an invalid value matches nothing rather than everything."""
        for name, column in TEXT_FILTERS.items():
            if value := getattr(self, name):
                events = events.filter(**{column: value})
        if self.session:
            # Stored session ids went through the detectors; so does the auditor's input.
            events = events.filter(session_id=mask_text(self.session))
        if self.call:
            call_id = _uuid(self.call)
            events = events.filter(call_id=call_id) if call_id else events.none()
        if self.kind:
            events = events.filter(_kind_q(self.kind)) if self.kind in KINDS else events.none()
        if self.hide_access:
            events = events.exclude(_kind_q("access"))
        if self.after_seq:
            # Sealed events only, by seq, never by id: a transaction that inserted an event
            # (a lower id) and commits after a reader read past that id would be skipped by
            # "id > the last one read" for good. The sealer gives seqs in the order events
            # became visible, a pass's all at once, after the previous pass committed: every
            # event a reader sees sealed later has a seq above any it has read.
            after = whole_number(self.after_seq)
            events = events.filter(seq__gt=after) if after is not None else events.none()
        for name, lookup in (("start", "occurred_at__gte"), ("end", "occurred_at__lt")):
            # The end excluded, a bare date too (midnight): daily exports from one date to
            # the next never repeat an event (and miss none once every transaction open at
            # midnight has committed: an event is dated before it commits; see after_seq).
            if value := getattr(self, name):
                moment = _instant(value)
                events = events.filter(**{lookup: moment}) if moment else events.none()
        return events

    def page(self, size: int) -> tuple[list[AuditEvent], int | None]:
        """One page, newest first, and the cursor of the next (older) page."""
        events = self.apply(AuditEvent.objects.all()).order_by("-id")
        if self.before is not None:
            events = events.filter(id__lt=self.before)
        rows = list(events[: size + 1])
        return rows[:size], rows[size - 1].pk if len(rows) > size else None

    def query_string(self, **changes: object) -> str:
        """This view's URL query, with ``changes`` (``before=None`` drops the cursor)."""
        target = replace(self, **changes)  # type: ignore[arg-type]
        params = dict(target.active)
        if target.before is not None:
            params["before"] = str(target.before)
        return urlencode(params)


def whole_number(value: str, *, digits: int = 18) -> int | None:
    """A non-negative integer that fits a bigint, from ASCII digits only, or None.

    ``str.isdigit`` alone admits "²" and other Unicode digits that ``int()`` refuses.
    """
    if value.isascii() and value.isdigit() and len(value) <= digits:
        return int(value)
    return None


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


SESSION_FILTER_LENGTH = 2000

# PostgreSQL takes UTC offsets up to 15:59 either way; Python takes up to 23:59.
LARGEST_OFFSET = timedelta(hours=15, minutes=59)


def _instant(value: str) -> datetime | None:
    """An ISO 8601 instant, or None (a naive one is UTC) for what is none, and for an offset
    the database cannot take (+23:59 parses, and would answer 500 there)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        # A date alone with a trailing Z, its midnight in UTC: the form's pattern takes it
        # (a Z after a time is read above), and Python's parser refuses it.
        if not value.endswith("Z"):
            return None
        try:
            moment = datetime.combine(date.fromisoformat(value[:-1]), time(), tzinfo=UTC)
        except ValueError:
            return None
    if timezone.is_naive(moment):
        return timezone.make_aware(moment, UTC)
    offset = moment.utcoffset()
    if offset is None or abs(offset) > LARGEST_OFFSET:
        return None
    # Whole minutes only: "+05:30:30.5" parses, and PostgreSQL refuses a fraction of a second.
    return moment if offset.total_seconds() % 60 == 0 else None
