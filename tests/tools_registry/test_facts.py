"""The facts of a call: where a tool keeps its amount, recipient and target (declared or
found from the schema), read from the arguments, and the phrase a reviewer types."""

from __future__ import annotations

import pytest

from sandbox.tools import delete_customer, issue_refund, send_email, update_customer
from tools_registry import facts

# (schema properties, required, what is found)
INFERRED = [
    (
        {"amount_cents": {"type": "integer"}, "currency": {"type": "string"}},
        [],
        facts.Facts(amount="amount_cents", currency="currency"),
    ),
    (
        {"amount": {"type": "number"}, "currency_code": {"type": "string"}},
        [],
        facts.Facts(amount="amount", amount_unit="major", currency="currency_code"),
    ),
    ({"amount": {"type": "integer"}}, [], facts.Facts(amount="amount")),
    ({"to": {"type": "string"}, "body": {"type": "string"}}, [], facts.Facts(recipient="to")),
    ({"address": {"type": "string", "format": "email"}}, [], facts.Facts(recipient="address")),
    (
        {"cc": {"type": "array", "items": {"type": "string", "format": "email"}}},
        [],
        facts.Facts(recipient="cc"),
    ),
    (
        {
            "note": {"type": "string"},
            "ticket_id": {"type": "string"},
            "user_id": {"type": "string"},
        },
        ["user_id"],
        facts.Facts(target="user_id"),  # a required id first
    ),
    ({"count": {"type": "integer"}, "name": {"type": "string"}}, [], facts.Facts()),
]


@pytest.mark.parametrize(("properties", "required", "expected"), INFERRED)
def test_facts_are_found_from_the_schema(
    properties: dict, required: list[str], expected: facts.Facts
) -> None:
    schema = {"type": "object", "properties": properties, "required": required}
    assert facts.infer(schema) == expected


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1250, "GBP", "12.50 GBP"),
        (99000, "USD", "990.00 USD"),
        (123456789, "EUR", "1,234,567.89 EUR"),
        (5000, "JPY", "5,000 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (700, "", "7.00"),
    ],
)
def test_money_is_written_in_its_currency(minor: int, currency: str, text: str) -> None:
    assert str(facts.Money(minor, currency)) == text


def test_reading_a_call() -> None:
    refund = facts.read(
        issue_refund.facts,
        {"payment_id": "pay_0003", "amount_cents": 99000, "currency": "usd", "reason": "x"},
    )
    assert refund.money == facts.Money(99000, "USD")
    assert refund.target == "pay_0003"
    assert refund.confirmation_phrase(issue_refund.facts) == "990.00 USD"
    major = facts.read(
        facts.Facts(amount="total", amount_unit="major", currency="cur"),
        {"total": 12.5, "cur": "eur"},
    )
    assert major.money == facts.Money(1250, "EUR")
    email = facts.read(send_email.facts, {"to": "a@example.com; b@example.com"})
    assert email.recipients == ("a@example.com", "b@example.com")
    # Missing or ill-typed values are simply absent.
    assert facts.read(issue_refund.facts, {"amount_cents": "lots"}) == facts.CallFacts()
    assert facts.read(issue_refund.facts, {"amount_cents": True}).money is None


def test_the_confirmation_phrase_comes_from_the_target_or_the_amount() -> None:
    deleting = facts.read(delete_customer.facts, {"customer_id": "cus_0003", "reason": "gone"})
    assert deleting.confirmation_phrase(delete_customer.facts) == "cus_0003"
    updating = facts.read(update_customer.facts, {"customer_id": "cus_0001", "changes": {}})
    assert updating.confirmation_phrase(update_customer.facts) == "cus_0001"
    nothing = facts.read(facts.Facts(), {"x": 1})
    assert nothing.confirmation_phrase(facts.Facts()) == ""


def test_a_declaration_must_name_arguments_the_schema_has() -> None:
    from tools_registry.registry import tool

    with pytest.raises(ValueError, match="fact 'amount' is not in its schema"):
        tool(
            name="bad_facts",
            description="A tool whose facts point nowhere.",
            input_schema={"type": "object", "properties": {"total": {"type": "integer"}}},
            risk="write",
            facts=facts.Facts(amount="amount"),
        )
