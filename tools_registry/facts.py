"""The facts a decision rests on, read from a call's arguments: how much money, to whom,
on which record. The queue shows them in each row, signals and rules read them, and the
typed confirmation of a risky approval is made of them.

A tool in code may declare where its facts are (``@tool(facts=Facts(amount=...))``);
otherwise, and for tools imported from upstreams, they are found from the schema by the
names and formats such fields usually have.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

JSON = dict[str, Any]

# ISO 4217 currencies without minor units (and the three-decimal ones): amounts in minor
# units are divided by 10 ** exponent. Everything else has two decimals.
_EXPONENTS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}


@dataclass(frozen=True)
class Facts:
    """Where a tool's facts are in its arguments: dotted paths, "" for none.

    ``amount_unit`` says whether the amount is in minor units (cents, as payment APIs
    count) or major ones (12.50). ``confirm`` is what a reviewer types to approve a risky
    call: ``"target"`` (the record's id), ``"amount"`` (the amount with its currency), or
    ``""`` for the first of those the call has.
    """

    amount: str = ""
    amount_unit: str = "minor"
    currency: str = ""
    recipient: str = ""
    target: str = ""
    confirm: str = ""

    def __post_init__(self) -> None:
        if self.amount_unit not in ("minor", "major"):
            raise ValueError("amount_unit is 'minor' or 'major'")
        if self.confirm not in ("", "target", "amount"):
            raise ValueError("confirm is 'target', 'amount' or ''")


@dataclass(frozen=True)
class Money:
    minor: int
    currency: str  # upper-case ISO code, "" when the tool has none

    @property
    def exponent(self) -> int:
        return _EXPONENTS.get(self.currency, 2)

    def __str__(self) -> str:
        major = Decimal(self.minor).scaleb(-self.exponent)
        text = f"{major:,.{self.exponent}f}"
        return f"{text} {self.currency}".strip()


@dataclass(frozen=True)
class CallFacts:
    money: Money | None = None
    recipients: tuple[str, ...] = ()
    target: str = ""

    def confirmation_phrase(self, facts: Facts) -> str:
        """What to type to approve: from the declared source, else the first fact there is."""
        by_target = self.target
        by_amount = str(self.money) if self.money else ""
        if facts.confirm == "amount":
            return by_amount or by_target
        return by_target or by_amount


_AMOUNT = re.compile(r"(?i)^(?:amount|total|price|value|sum)(?:_?(cents|minor|in_cents))?$")
_CENTS = re.compile(r"(?i)(?:_cents|_minor|cents)$")
_RECIPIENT = re.compile(r"(?i)^(?:to|recipient|recipients|email|email_address|address|phone)$")
_TARGET = re.compile(r"(?i)^(?:id|[a-z0-9]+_id)$")


def infer(schema: Mapping[str, Any]) -> Facts:
    """The facts of a tool that declared none, from its top-level properties."""
    properties: Mapping[str, Any] = schema.get("properties") or {}
    required = list(schema.get("required") or [])
    amount = unit = currency = recipient = target = ""
    for name, spec in properties.items():
        if not isinstance(spec, Mapping):
            continue
        kind = spec.get("type")
        if (
            not amount
            and kind in ("integer", "number")
            and (_AMOUNT.match(name) or _CENTS.search(name))
        ):
            amount = name
            # An integer amount is in minor units (as Stripe and most payment APIs count)
            # unless it is a "number", which may carry decimals.
            unit = "minor" if kind == "integer" or _CENTS.search(name) else "major"
        elif not currency and name.lower() in ("currency", "currency_code") and kind == "string":
            currency = name
        elif not recipient and (
            _RECIPIENT.match(name)
            or spec.get("format") == "email"
            or (kind == "array" and (spec.get("items") or {}).get("format") == "email")
        ):
            recipient = name
    for name in [*required, *properties]:
        spec = properties.get(name)
        if isinstance(spec, Mapping) and spec.get("type") == "string" and _TARGET.match(name):
            target = name
            break
    return Facts(
        amount=amount,
        amount_unit=unit or "minor",
        currency=currency,
        recipient=recipient,
        target=target,
    )


def _at(arguments: Any, path: str) -> Any:
    value = arguments
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def read(facts: Facts, arguments: Any) -> CallFacts:
    """The facts of one call's arguments (values that are not there, or not of the right
    kind, are simply absent: the arguments were validated, the declaration may be loose)."""
    money = None
    raw_amount = _at(arguments, facts.amount) if facts.amount else None
    raw_currency = _at(arguments, facts.currency) if facts.currency else None
    currency = raw_currency.upper()[:8] if isinstance(raw_currency, str) else ""
    if isinstance(raw_amount, int | float) and not isinstance(raw_amount, bool):
        exponent = _EXPONENTS.get(currency, 2)
        if facts.amount_unit == "major":
            minor = int(Decimal(str(raw_amount)).scaleb(exponent).to_integral_value())
        else:
            minor = int(raw_amount)
        if abs(minor) < 2**63:
            money = Money(minor=minor, currency=currency)
    recipients: tuple[str, ...] = ()
    raw_recipient = _at(arguments, facts.recipient) if facts.recipient else None
    if isinstance(raw_recipient, str):
        # "a@x.com, b@y.com" is two recipients.
        recipients = tuple(r.strip() for r in re.split(r"[,;]", raw_recipient) if r.strip())
    elif isinstance(raw_recipient, list):
        recipients = tuple(r for r in raw_recipient if isinstance(r, str))
    raw_target = _at(arguments, facts.target) if facts.target else None
    target = str(raw_target) if isinstance(raw_target, str | int) else ""
    return CallFacts(money=money, recipients=recipients, target=target[:200])
