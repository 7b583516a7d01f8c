"""Risk signals: what a careful reviewer looks for in a call before approving it.

Each signal is a badge in the queue, a sentence on the call's page, a line in the audit
trail (with ``call.submitted``) and a name policy rules can test (``"external_link" in
signals``). This module holds the catalogue and the detectors that read only the call
itself (its arguments, the agent's reasoning, the clock); the ones that need the agent's
history (a recipient never used before, an amount above the usual range) live beside the
calls, in ``approvals.signals``, and report through the same ``Found``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from audit.display import HIDDEN


@dataclass(frozen=True)
class Signal:
    code: str
    badge: str  # a word or two, in the queue row
    sentence: str  # for the call's page; ``{detail}`` is what the detector found


CATALOGUE: dict[str, Signal] = {
    signal.code: signal
    for signal in (
        Signal(
            "external_link",
            "External link",
            "Outgoing text links to a domain outside the organisation: {detail}.",
        ),
        Signal(
            "prompt_injection",
            "Injection-like text",
            "Text reads like an instruction to a model ({detail}), as prompt injection does.",
        ),
        Signal(
            "hidden_characters",
            "Hidden characters",
            "Invisible or direction-changing characters in {detail}; they are shown escaped.",
        ),
        Signal(
            "bulk_recipient",
            "Bulk recipient",
            "Goes to a distribution list or to several recipients: {detail}.",
        ),
        Signal("new_recipient", "New recipient", "The agent has never written to {detail} before."),
        Signal("new_target", "New target", "The agent has never acted on {detail} before."),
        Signal(
            "unusual_amount",
            "Unusual amount",
            "The amount is above this tool's usual range: {detail}.",
        ),
        Signal("outside_hours", "Outside hours", "Submitted outside working hours: {detail}."),
    )
}
CODES = frozenset(CATALOGUE)


@dataclass(frozen=True)
class Found:
    """One signal raised on one call, with what raised it."""

    code: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}

    @property
    def signal(self) -> Signal:
        return CATALOGUE[self.code]

    @property
    def sentence(self) -> str:
        return self.signal.sentence.format(detail=self.detail or "see the arguments")


# --- Text ---------------------------------------------------------------------------------

# A browser reads a backslash in an http(s) link as a slash (https:\\evil.io and
# https://evil.io\@example.com go to evil.io); Python's ``urlsplit`` does not. Past the
# scheme it skips any run of either (https:///evil.io goes to evil.io).
_URL = re.compile(r"(?i)\b(?:https?:[/\\]{2}|www\.)[^\s<>\"'()]+")
_SCHEME_AND_SLASHES = re.compile(r"(?i)^(?:https?:)?/*")
# In an HTML attribute (href="..."), a browser takes every tab and line break out of a URL
# before reading it ("https://example.com<LF>.evil.io" goes to evil.io), and reads a link
# with no scheme (//evil.io) or no slashes (http:evil.io) as going to evil.io too.
_LINK_START = r"""(?:https?:|[/\\]{2}(?=[^\s<>"'()/\\]+\.)|www\.)"""
_ATTRIBUTE_URL = re.compile(rf"""(?i)=\s*["']\s*({_LINK_START}[^\s<>"'()]+)""")
_TABS_AND_BREAKS = str.maketrans("", "", "\t\n\r")
# Unquoted (href=https://...), the value ends at the first space or line break as written,
# but one written as an entity (&#10;) is part of it and taken out like the others.
_UNQUOTED_ATTRIBUTE = re.compile(r"=[\t\n\f\r ]*([^\t\n\f\r >]+)")
_ATTRIBUTE_LINK = re.compile(f"(?i){_LINK_START}")
# Phrases that address a model rather than a person: the tell-tale of text an attacker
# planted for an agent to carry (OWASP LLM01). Matched case-insensitively, any spacing.
_INJECTION = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\bignore\s+(?:all\s+|any\s+)?(?:the\s+)?(?:previous|prior|above|earlier|preceding)\s+"
        r"(?:instructions|directions|rules|prompts?)",
        # Each optional word takes the spaces after it: a "\s+ ... \s*" pair around an
        # optional part splits a run of spaces every way (quadratic: a 20 KB reasoning of
        # spaces took 17 s to scan, at intake).
        r"\bdisregard\s+(?:(?:all|any)\s+)?(?:(?:the|your)\s+)?"
        r"(?:(?:previous|prior|above|earlier)\s+)?(?:instructions|rules|guidelines|prompts?)",
        r"\bforget\s+(?:all\s+|everything\s+)?(?:your|the|previous)\s+(?:instructions|rules)",
        r"\byou\s+are\s+now\b",
        r"\bnew\s+(?:system\s+)?instructions\s*:",
        r"\bsystem\s+prompt\b",
        r"\bdo\s+not\s+(?:tell|inform|alert)\s+(?:the\s+)?(?:user|reviewer|human|anyone)",
        r"\bact\s+as\s+(?:an?\s+)?(?:admin|administrator|developer|root|system)\b",
        r"\boverride\s+(?:the\s+)?(?:safety|security|policy|guardrails?)\b",
        r"</?\s*(?:system|assistant|instructions?)\s*>",
    )
]
# Variation selectors are invisible too, but an emoji carries one (U+2764 U+FE0F): not
# flagged, yet taken out before looking for an instruction to a model, which they split.
_VARIATION_SELECTORS = re.compile("[\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_DISTRIBUTION_LOCAL_PARTS = re.compile(
    r"(?i)^(?:all|all[-_.].*|.*[-_.]all|everyone|everybody|customers?|clients?|users?|staff|"
    r"team|list|lists|announce(?:ments?)?|newsletter|news|marketing|mailing[-_.]?list|"
    r"subscribers?|members|company|employees|distribution|dl[-_.].*|group[-_.].*)$"
)
_EMAIL = re.compile(r"(?i)^[a-z0-9._%+-]+@([a-z0-9.-]+\.[a-z]{2,})$")


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value, with its dotted path (``changes.email``): the keys
    too, which in a free-form object (metadata, headers) are the agent's text as well."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, str(key)
            yield from strings(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")


def link_domains(text: str) -> list[str]:
    domains = []
    unquoted = [
        html.unescape(m.group(1)).translate(_TABS_AND_BREAKS)
        for m in _UNQUOTED_ATTRIBUTE.finditer(text)
    ]
    # In HTML (an e-mail's body) a link's characters may be written as entities, which the
    # browser reads first: https://evil.io&#92;@example.com goes to evil.io.
    text = html.unescape(text)
    urls = [match.group(0) for match in _URL.finditer(text)]
    urls += [m.group(1) for m in _ATTRIBUTE_URL.finditer(text.translate(_TABS_AND_BREAKS))]
    urls += [value for value in unquoted if _ATTRIBUTE_LINK.match(value)]
    for url in urls:
        rest = _SCHEME_AND_SLASHES.sub("", url.replace("\\", "/"))
        try:
            host = urlsplit(f"http://{rest}").hostname or ""
        except ValueError:
            continue  # an unpaired bracket ("https://[evil"): no browser opens it either
        if host and host not in domains:
            domains.append(host)
    return domains


def is_internal(host: str, internal_domains: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in internal_domains)


def external_links(arguments: Any, internal_domains: Iterable[str]) -> Found | None:
    internal = [d.lower().strip(".") for d in internal_domains if d]
    outside: list[str] = []
    for _, text in strings(arguments):
        for host in link_domains(text):
            if not is_internal(host, internal) and host not in outside:
                outside.append(host)
    return Found("external_link", ", ".join(outside[:5])) if outside else None


def injection(arguments: Any, reasoning: str) -> Found | None:
    where = []
    for path, text in [("reasoning", reasoning), *strings(arguments)]:
        # Hidden characters between the words must not hide the phrase.
        plain = unicodedata.normalize("NFKC", _VARIATION_SELECTORS.sub("", HIDDEN.sub("", text)))
        for pattern in _INJECTION:
            match = pattern.search(plain)
            if match:
                phrase = " ".join(match.group(0).split())
                where.append(f"“{phrase[:60]}” in {path or 'the arguments'}")
                break
    return Found("prompt_injection", "; ".join(where[:3])) if where else None


def hidden_characters(arguments: Any, reasoning: str) -> Found | None:
    places = [
        path or "the arguments"
        for path, text in [("reasoning", reasoning), *strings(arguments)]
        if HIDDEN.search(text)
    ]
    return Found("hidden_characters", ", ".join(places[:5])) if places else None


def bulk_recipients(recipients: list[str]) -> Found | None:
    """Several recipients, or one address that reads like a list (all-customers@...)."""
    if len(recipients) > 1:
        return Found("bulk_recipient", f"{len(recipients)} recipients")
    for address in recipients:
        match = _EMAIL.match(address.strip())
        if match and _DISTRIBUTION_LOCAL_PARTS.match(address.split("@", 1)[0]):
            return Found("bulk_recipient", address)
    return None


@dataclass(frozen=True)
class WorkingHours:
    """When people are at work, where the organisation is: weekdays, start and end."""

    start: time
    end: time
    days: frozenset[int]  # 0 = Monday
    zone: ZoneInfo

    @classmethod
    def parse(cls, hours: str, days: str, zone: str) -> WorkingHours:
        """``"08:00-19:00"``, ``"mon-fri"`` or ``"mon,tue,sat"``, an IANA zone name."""
        start, _, end = hours.partition("-")
        names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        chosen: set[int] = set()
        for part in days.lower().replace(" ", "").split(","):
            first, _, last = part.partition("-")
            a = names.index(first)
            b = names.index(last) if last else a
            # "fri-mon" runs across the end of the week.
            chosen.update(day % 7 for day in range(a, b + 1 if b >= a else b + 8))
        opens, closes = time.fromisoformat(start), time.fromisoformat(end)
        if opens.tzinfo is not None or closes.tzinfo is not None:
            # "08:00Z": comparing it with the local time failed every screening (a 500).
            raise ValueError("the hours hold an offset; the zone is COUNTERSIGN_WORKING_ZONE")
        if opens == closes:
            # No time is inside: every call would be outside hours.
            raise ValueError("the hours start and end at the same time")
        return cls(opens, closes, frozenset(chosen), ZoneInfo(zone))

    def outside(self, when: datetime) -> Found | None:
        local = when.astimezone(self.zone)
        day, now = local.weekday(), local.time()
        if self.start <= self.end:
            inside = day in self.days and self.start <= now < self.end
        else:
            # Hours across midnight ("22:00-06:00"): the early hours are the shift of the
            # day before.
            inside = (day in self.days and now >= self.start) or (
                (day - 1) % 7 in self.days and now < self.end
            )
        if inside:
            return None
        return Found("outside_hours", local.strftime("%A %H:%M ") + str(self.zone))


def from_call_itself(
    *,
    arguments: Any,
    reasoning: str,
    recipients: list[str],
    internal_domains: Iterable[str],
    hours: WorkingHours | None,
    at: datetime,
) -> list[Found]:
    """The signals a call raises on its own, in catalogue order."""
    found = [
        external_links(arguments, internal_domains),
        injection(arguments, reasoning),
        hidden_characters(arguments, reasoning),
        bulk_recipients(recipients),
        hours.outside(at) if hours else None,
    ]
    return [f for f in found if f is not None]


def in_catalogue_order(found: Iterable[Found]) -> list[Found]:
    order = list(CATALOGUE)
    return sorted(found, key=lambda f: order.index(f.code))
