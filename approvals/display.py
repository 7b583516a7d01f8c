"""What a reviewer is shown of a call: the one place that decides it.

Everything an agent supplied (arguments, reasoning, session id, ``on_behalf_of``, results,
errors) and everything reviewers wrote (comments, notes) goes through here before a
template sees it; templates never print a raw agent-supplied value.

Reviewers see what a decision needs and no more: an e-mail address keeps its domain
(``a***@example.com``), a phone its last two digits, a card its last four; secrets, and
fields a tool or an admin marks secret, show nothing. Seeing a value whole is a reveal:
granted per tool, given a reason, audited (``services.reveals``). Characters a reader
cannot see, or that reorder text (U+202E), are written out wherever they appear.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from approvals import guards, hidden
from approvals.models import Decision, Note, StandingApproval, Status, ToolCall, Verdict
from audit.display import escape_hidden, partial
from audit.masking import mask_fields, mask_text, mask_value, masked, path_parts, unique_key
from tools_registry import facts as tool_facts
from tools_registry import registry, sources
from tools_registry.permissions import can_reveal
from tools_registry.risk_signals import CATALOGUE, Found

logger = logging.getLogger(__name__)

# Strings longer than this (an e-mail's body) are shown as text blocks, not inside JSON.
LONG_TEXT = 120


def text(value: str) -> str:
    """Free text an agent or a reviewer wrote, as any reviewer may see it."""
    return escape_hidden(mask_text(value or "", render=partial))


def value(data: Any) -> Any:
    """A JSON value (a result, an error, a state) as any reviewer may see it.

    ``mask_value`` with the display forms, written out (``_escaped``). No entry of an object
    is lost: two keys that read alike once masked ("ada@..." and "amy@..." are both
    "a***@example.com") or once written out ("a\u200bb" and "a<U+200B>b") are told apart
    by ``audit.masking.unique_key``, in each of those two steps.
    """
    return _escaped(mask_value(data, render=partial))


def condition(
    standing: StandingApproval, person: Any = None, *, revealable: Container[int] | None = None
) -> str:
    """A standing approval's condition as ``person`` may read it (``None``: anyone).

    The trail masks it whole: written by an author who may reveal the tool's hidden fields,
    it may quote what they hold (``args.subject == "..."``). Its author, and whoever may
    reveal the tool's arguments, read it as reviewers read any text; anyone else sees it
    masked whole when the tool has hidden fields (no check of the text can tell which it
    reads: ``args[["subject"][0]]`` names none).

    ``revealable``: the ids of the tools ``person`` may reveal, when a page of many standing
    approvals read them once (``permissions.revealable_tool_ids``).
    """
    if not standing.condition:
        return ""
    tool = standing.tool
    may_read = person is not None and (
        standing.granted_by_id == person.pk
        or (tool.pk in revealable if revealable is not None else can_reveal(person, tool))
    )
    if tool.hidden_fields and not may_read:
        return masked("field", standing.condition)
    return text(standing.condition)


# How the call's end user was established (``ToolCall.end_user_source``): a name an agent
# made up must not look like a user the identity provider vouched for. A call stored
# before the source was recorded, with a name, counts as named.
END_USER_SOURCES = {
    "verified": ("verified", "verified: the user's token from the identity provider"),
    "asserted": ("asserted", "asserted by the agent, trusted to state its users' roles"),
    "named": ("unverified", "named by the agent; nothing verifies it"),
}


def pretty(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True)


def arguments(call: ToolCall) -> Any:
    """The call's arguments with the display forms: secret fields hidden, sensitive ones in
    part, everything else through the detectors' partial forms."""
    tool = call.tool
    shown = mask_fields(call.arguments, tool.secret_fields)
    for path in tool.sensitive_fields:
        shown = _partly(shown, path_parts(path))
    return value(shown)


# What a masked value's display form looks like (``audit.display.partial`` and the keyed-hash
# marker ``audit.masking.masked``), also once a reviewer has edited around it or into it: an
# address's "a***@example.com" with its first character changed or deleted and without the
# full stop or bracket of the sentence after it (the domain stops where an address's domain
# may: a dot must be followed by another label); a phone's "•••58" and a card's "•••• 1111",
# their bullets with or without digits; a marker ("[masked:field:3f9a1c2b]", a secret's, a
# hidden field's), whole or cut. Ordinary text is not taken for one: "*" alone, "**bold**" or
# "5 * 3" have no "***@", and three bullets in a row or "[masked:" are nothing people type.
_MASK_FORM = re.compile(
    r"[\w.%+-]?\*{3,}@(?:[\w-]+(?:\.[\w-]+)*)?|•{3,}(?: ?\d+)?|\[masked:[\w:]*\]?"
)


def restore_masked(edited: Any, call: ToolCall) -> tuple[Any, list[str]]:
    """A reviewer's correction, made on the arguments as shown to them, with each value they
    left in its masked form (``a***@example.com``) given back its real value; and the
    masked forms still left in a value they changed (a text edited around an address), of
    which nobody can tell what they stood for: such a correction must be refused."""
    shown = arguments(call)
    restored = _restored(edited, shown, call.arguments)
    # Any masked-looking form left, not only the exact ones shown: an edit may have changed
    # what stands around or in one. One the agent itself wrote is its text, not a mask.
    written = _mask_forms(call.arguments)
    return restored, sorted(_mask_forms(restored) - written)


def _mask_forms(data: Any) -> set[str]:
    """The masked-looking forms in every string of ``data``, keys included."""
    if isinstance(data, str):
        return set(_MASK_FORM.findall(data))
    if isinstance(data, dict):
        return {f for k, v in data.items() for f in _mask_forms(str(k)) | _mask_forms(v)}
    if isinstance(data, list):
        return {f for v in data for f in _mask_forms(v)}
    return set()


def _restored(edited: Any, shown: Any, original: Any) -> Any:
    if isinstance(edited, dict) and edited == shown:
        # Left as shown, keys included: a map keyed by addresses shows its keys masked too.
        return original
    if isinstance(edited, dict) and isinstance(shown, dict) and isinstance(original, dict):
        # A key is shown as any text is (masked, written out, told apart from a lookalike):
        # one left as shown stands for the key it was shown for. The shown object has the
        # original's keys, each in its place (``value``).
        stands_for: dict[Any, Any] = (
            dict(zip(shown, original, strict=True)) if len(shown) == len(original) else {}
        )
        restored: dict[Any, Any] = {}
        for k, v in edited.items():
            real = stands_for.get(k, k)
            if real in original:
                restored[real] = _restored(v, shown.get(k), original[real])
            else:
                restored[k] = v
        return restored
    if isinstance(edited, list) and isinstance(shown, list) and isinstance(original, list):
        return _restored_list(edited, shown, original)
    if edited == shown and shown != original:
        return original
    return edited


# Rows looking alike once masked that one edited row is compared with, at most.
LOOKALIKES_COMPARED = 50


def _restored_list(edited: list[Any], shown: list[Any], original: list[Any]) -> list[Any]:
    """A list's items given back their real values only where it is certain which original
    item each stands for. Two items may look alike once masked ("ada@..." and "amy@..." are
    both "a***@example.com"): restoring by position after one was removed would put one
    person's value under another's name. An item left out of this keeps its masked form,
    and the correction is refused (``restore_masked``)."""
    if edited == shown:
        return original
    count = min(len(shown), len(original))
    # Looked up, not compared pairwise: an agent's list may hold tens of thousands of items.
    shown_at: dict[str, list[int]] = {}
    stands_for: dict[str, set[str]] = {}  # a masked form -> the original items showing it
    showing: dict[str, list[int]] = {}  # a masked form -> the positions showing it
    forms = []
    for i in range(count):
        shown_at.setdefault(_key(shown[i]), []).append(i)
        forms.append(_mask_forms(shown[i]))
        for form in forms[i]:
            stands_for.setdefault(form, set()).add(_key(original[i]))
            showing.setdefault(form, []).append(i)
    changed = (
        [k for k in range(len(shown)) if edited[k] != shown[k]]
        if len(edited) == len(shown)
        else None
    )

    def told_apart(i: int, item: Any) -> bool:
        # Nothing removed or added, and the item kept a plain field of its own row (a name,
        # an amount) that no row looking alike has: it is that row, edited where it stood.
        if changed is None or not isinstance(item, dict) or not isinstance(shown[i], dict):
            return False
        if any(len(showing[form]) > LOOKALIKES_COMPARED for form in forms[i]):
            return False  # too many to compare: refused, as any doubt is
        alike = {j for form in forms[i] for j in showing[form]} - {i}
        others = [shown[j] for j in alike if isinstance(shown[j], dict)]
        plain = {
            key: value
            for key, value in shown[i].items()
            if isinstance(value, str | int | float) and not _mask_forms(value)
        }
        kept_its_own = any(
            key in item and item[key] == value and all(o.get(key) != value for o in others)
            for key, value in plain.items()
        )
        # And nothing of another's: a row holding another row's name moved, or was swapped.
        took_anothers = any(
            key in item and item[key] == o.get(key) != value
            for key, value in plain.items()
            for o in others
        )
        return kept_its_own and not took_anothers

    def certain_by_position(i: int, item: Any) -> bool:
        # Changed where it stood, every other item as shown at its place; or no other item
        # shows a masked form of this one's while standing for something else; or told
        # apart from those that do.
        return (
            changed == [i]
            or all(len(stands_for[form]) == 1 for form in forms[i])
            or told_apart(i, item)
        )

    items = []
    for i, item in enumerate(edited):
        same = shown_at.get(_key(item), [])
        if len(same) == 1:
            # Left as shown, wherever it now stands: the one item shown so.
            items.append(_restored(item, shown[same[0]], original[same[0]]))
        elif i < count and certain_by_position(i, item):
            items.append(_restored(item, shown[i], original[i]))
        else:
            items.append(item)
    return items


def _key(item: Any) -> str:
    return json.dumps(item, sort_keys=True, ensure_ascii=False)


def _partly(data: Any, parts: list[str]) -> Any:
    """A sensitive field: its partial form when the whole value is an e-mail, a phone or a
    card; hidden otherwise (a free-text field marked sensitive may hold anything)."""
    if not parts:
        if data in (None, "") or not isinstance(data, str):
            return data if data in (None, "") else masked("field", json.dumps(data))
        whole = _one_finding(data)
        return partial(*whole) if whole else masked("field", data)
    if isinstance(data, list):
        return [_partly(item, parts) for item in data]
    if isinstance(data, dict) and parts[0] in data:
        return {**data, parts[0]: _partly(data[parts[0]], parts[1:])}
    return data


def _one_finding(data: str) -> tuple[str, str] | None:
    """(kind, value) when the detectors find exactly one thing in ``data`` and nothing is
    left around it: the whole field is an e-mail address, a phone number, a card."""
    found: list[tuple[str, str]] = []

    def collect(kind: str, hit: str) -> str:
        found.append((kind, hit))
        return ""

    rest = mask_text(data, render=collect)
    return found[0] if len(found) == 1 and not rest.strip() else None


def _escaped(data: Any) -> Any:
    if isinstance(data, str):
        return escape_hidden(data)
    if isinstance(data, dict):
        shown: dict[str, Any] = {}
        for k, v in data.items():
            shown[unique_key(escape_hidden(str(k)), shown)] = _escaped(v)
        return shown
    if isinstance(data, list):
        return [_escaped(v) for v in data]
    return data


def summary(call: ToolCall, shown_arguments: Any) -> str:
    """The tool's one line on what approving does, written from the arguments as shown."""
    try:
        spec = sources.implementation(call.tool)
    except registry.UnknownTool:
        return ""
    if spec.preview_fn is None:
        return ""
    try:
        return escape_hidden(str(spec.preview_fn(shown_arguments)))
    except Exception:
        # Arguments come from an agent; a preview that chokes on them must not hide the call.
        logger.exception("preview of %s failed for call %s", call.tool.name, call.pk)
        return ""


@dataclass(frozen=True)
class SignalView:
    code: str
    badge: str
    sentence: str


def signals(call: ToolCall) -> list[SignalView]:
    shown = []
    for raw in call.signals or []:
        if raw.get("code") not in CATALOGUE:
            continue
        found = Found(raw["code"], text(str(raw.get("detail", ""))))
        shown.append(SignalView(found.code, found.signal.badge, found.sentence))
    return shown


@dataclass(frozen=True)
class Facts:
    """The queue row's facts: how much, to whom, on what."""

    money: str = ""
    recipients: tuple[str, ...] = ()
    target: str = ""


def facts(call: ToolCall) -> Facts:
    """The facts, as reviewers may see the fields they come from: nothing of a secret field,
    a sensitive one in part (an address's domain ...), the rest through the detectors."""
    where = sources.facts_of(call.tool)
    read = tool_facts.read(where, call.arguments)
    secret, sensitive = list(call.tool.secret_fields), list(call.tool.sensitive_fields)

    def shown(path: str, found: str) -> str:
        if hidden.covers(secret, path):
            return ""
        if hidden.covers(sensitive, path):
            return escape_hidden(str(_partly(found, [])))
        return text(found)

    amount_hidden = any(
        hidden.covers(secret + sensitive, path) for path in (where.amount, where.currency)
    )
    recipients = tuple(shown(where.recipient, r) for r in read.recipients[:3])
    return Facts(
        money=str(read.money) if read.money and not amount_hidden else "",
        recipients=tuple(r for r in recipients if r),
        target=shown(where.target, read.target),
    )


@dataclass(frozen=True)
class Vote:
    decision: Decision
    comment: str
    counts: bool  # given to the arguments as they are now
    # An approval of a waiting call whose reviewer could not give it now (their grant taken
    # away, their account deactivated, out of the rule's team): it no longer counts.
    lapsed: bool = False


@dataclass(frozen=True)
class Remark:
    note: Note
    text: str


@dataclass
class CallView:
    """Everything the call's page and its queue row show, masked for reviewers."""

    call: ToolCall
    arguments: Any
    summary: str
    facts: Facts
    signals: list[SignalView]
    reasoning: str
    session_id: str
    on_behalf_of: str
    end_user_roles: list[str] = field(default_factory=list)
    end_user_source: str = ""
    votes: list[Vote] = field(default_factory=list)
    notes: list[Remark] = field(default_factory=list)
    result: Any = None
    error: Any = None
    revealed: bool = False

    @property
    def tool_description(self) -> str:
        """The tool's description as a machine reads it: an upstream writes an imported
        tool's, and a direction-changing character in it reordered what reviewers read."""
        return escape_hidden(self.call.tool.description)

    @property
    def end_user_tag(self) -> str:
        """One word for how the end user was established: verified, asserted, unverified."""
        return END_USER_SOURCES.get(self.end_user_source, END_USER_SOURCES["named"])[0]

    @property
    def end_user_basis(self) -> str:
        """How the end user was established, in a sentence."""
        return END_USER_SOURCES.get(self.end_user_source, END_USER_SOURCES["named"])[1]

    @property
    def approvals(self) -> int:
        """The approvals that count towards the quorum: given to the arguments as they are
        now, by reviewers who could still give them (``approvals.guards``)."""
        return sum(
            1
            for vote in self.votes
            if vote.counts and not vote.lapsed and vote.decision.verdict == Verdict.APPROVE
        )

    @property
    def arguments_json(self) -> str:
        """The arguments as JSON, long texts left out: they are shown as text below."""
        return pretty(_without_long_texts(self.arguments))

    @property
    def has_masked(self) -> bool:
        return self.arguments != _escaped(self.call.arguments)

    @property
    def long_texts(self) -> list[tuple[str, str]]:
        """(path, text) of the long strings among the arguments (an e-mail's body), shown
        as text with its line breaks rather than as one JSON string."""
        found = []
        for path, item in _strings(self.arguments):
            if _is_long(item):
                found.append((path, item))
        return found


def _is_long(text: str) -> bool:
    return len(text) > LONG_TEXT or "\n" in text


def _without_long_texts(data: Any) -> Any:
    if isinstance(data, str):
        return "(text, shown below)" if _is_long(data) else data
    if isinstance(data, dict):
        return {k: _without_long_texts(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_without_long_texts(v) for v in data]
    return data


def _strings(data: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(data, str):
        return [(path, data)]
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in _strings(v, f"{path}.{k}" if path else k)]
    if isinstance(data, list):
        return [s for i, v in enumerate(data) for s in _strings(v, f"{path}[{i}]")]
    return []


def roles(call: ToolCall) -> list[str]:
    """The end user's roles the call was made in, as the agent or the user's token gave them."""
    return [text(str(role)) for role in call.end_user_roles or []]


def row(call: ToolCall) -> CallView:
    """A queue row: what the call does, to whom, how risky."""
    shown = arguments(call)
    return CallView(
        call=call,
        arguments=shown,
        summary=summary(call, shown),
        facts=facts(call),
        signals=signals(call),
        reasoning="",
        session_id=text(call.session_id),
        on_behalf_of=text(call.on_behalf_of),
        end_user_roles=roles(call),
        end_user_source=call.end_user_source,
    )


def page(call: ToolCall, *, revealed: Any = None) -> CallView:
    """The call's page. ``revealed``: the arguments whole, after an audited reveal."""
    shown = _escaped(revealed) if revealed is not None else arguments(call)
    pending = call.status == Status.PENDING
    # What the downstream answered, with the values of the call's hidden fields masked at
    # their own paths and wherever it echoed them; the agent's reasoning may quote them too,
    # and so may a reviewer who revealed them, in a comment or a note.
    sensitive, kept = call.tool.hidden_fields, hidden.values(call.tool, call.arguments)
    decisions = list(call.decisions.all())
    counting = guards.counting_approvals(decisions, call.arguments_hash)
    # Whose approvals still stand, asked of them all at once: asked of each reviewer in turn,
    # the page (and each of its live updates) cost a few queries more per approval.
    able = guards.still_approving(call, [d.reviewer for d in counting]) if pending else set()
    lapsed = {d.pk for d in counting if d.reviewer.pk not in able}
    votes = [
        Vote(
            d,
            text(hidden.text(d.comment, kept)),
            counts=d.arguments_hash == call.arguments_hash,
            lapsed=pending and d.pk in lapsed,
        )
        for d in decisions
    ]
    notes = [Remark(n, text(hidden.text(n.text, kept))) for n in call.notes.all()]

    def answered(data: Any) -> Any:
        return value(hidden.value(mask_fields(data, sensitive), kept)) if data else None

    return CallView(
        call=call,
        arguments=shown,
        summary=summary(call, shown),
        facts=facts(call),
        signals=signals(call),
        reasoning=text(hidden.text(call.reasoning, kept)),
        session_id=text(call.session_id),
        on_behalf_of=text(call.on_behalf_of),
        end_user_roles=roles(call),
        end_user_source=call.end_user_source,
        votes=votes,
        notes=notes,
        result=answered(call.result),
        error=answered(call.error),
        revealed=revealed is not None,
    )
