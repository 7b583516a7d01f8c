"""Policy rules in CEL: checked against the tool's schema when saved (table first), and the
first rule that holds decides."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from sandbox.tools import issue_refund, send_email
from tools_registry import rules
from tools_registry.policy import Risk

REFUND = issue_refund.input_schema
EMAIL = send_email.input_schema
TEAMS = frozenset({"reviewers", "finance"})

# (condition, what the check says: "" when it is a valid condition of a refund)
CONDITIONS = [
    ("args.amount_cents <= 5000", ""),
    ('args.amount_cents > 50000 && args.currency == "usd"', ""),
    ('"external_link" in signals || "bulk_recipient" in signals', ""),
    ('"admin" in user.roles && user.id != ""', ""),
    ('agent == "support-bot"', ""),
    ('has(user.roles) && user.roles.exists(r, r == "vip") && user["id"] != ""', ""),
    # A misspelt member of the user failed on every call (an error the sample calls took for
    # an optional argument left out): the rule never decided, and a refusal refused every read.
    ('"admin" in user.role', "user has no 'role'; a condition reads user.id and user.roles"),
    ('user.email.endsWith("@rival.com")', "user has no 'email'"),
    ('user["email"] == "x"', "user has no 'email'"),
    ("has(user.name)", "user has no 'name'"),
    ('"email" in user', "user has no 'email'"),
    ('[{"name": args.reason}].exists(user, user.name == "x")', ""),  # an item named user
    ("has(args.reason) && size(args.reason) > 3", ""),
    ("[1, 2].all(i, i > 0) && args.reason.contains('x')", ""),
    ("args.amount_cents >", "not valid CEL"),
    ('args.amount_cents > 5 && "unterminated', "not valid CEL"),
    ("args.amount > 5", "args.amount is not an argument of this tool"),
    ("args.reason.length > 5", "args.reason.length is not an argument"),
    ("(args).amount > 5", "args.amount is not an argument of this tool"),
    ('(args)["amount"] > 5', "args.amount is not an argument of this tool"),
    # A key written as a string is checked as the name it is: a misspelt one never matched.
    ('args["amount"] > 5', "args.amount is not an argument of this tool"),
    ("args['amount'] > 5", "args.amount is not an argument of this tool"),
    ('args["""amount"""] > 5 || args[r"amount"] > 5', "args.amount is not an argument"),
    ('args["reason"]["length"] > 5', "args.reason.length is not an argument"),
    ('args["reason"].length > 5', "args.reason.length is not an argument"),
    ('args["amount_cents"] > 5 && args[\'currency\'] == "usd"', ""),
    ('has(args["reason"]) && args["reason"].contains("x")', ""),
    ('"amount" in args', "args.amount is not an argument of this tool"),
    ('"reason" in args && !("currency" in args)', ""),
    ("amount_cents > 5", "unknown name 'amount_cents'"),
    ("request.amount > 5", "unknown name 'request'"),
    ('"external_lnk" in signals', "there is no signal 'external_lnk'"),
    # A misspelt signal in a macro over the signals, or against one of them, never matches.
    ('signals.exists(s, s == "external_lnk")', "there is no signal 'external_lnk'"),
    ('signals.all(s, "external_lnk" != s)', "there is no signal 'external_lnk'"),
    ('size(signals.filter(s, s == "external_lnk")) > 0', "there is no signal 'external_lnk'"),
    ('signals.exists(s, s in ["external_link", "bulk_recpient"])', "no signal 'bulk_recpient'"),
    ('signals[0] == "external_lnk"', "there is no signal 'external_lnk'"),
    ('signals.exists(s, s == "external_link" || s == "bulk_recipient")', ""),
    ('signals.exists(s, s == "external_link") && [args.reason].exists(s, s == "x")', ""),
    # Any of a list of signals, written from the list: a misspelt one never matched.
    ('["external_link", "bulk_recpient"].exists(c, c in signals)', "no signal 'bulk_recpient'"),
    ('["external_lnk"].all(c, !(c in signals))', "there is no signal 'external_lnk'"),
    ('"external_lnk" in signals.filter(s, s.startsWith("e"))', "there is no signal 'external_lnk'"),
    ('["external_link", "bulk_recipient"].exists(c, c in signals)', ""),
    ("[args.reason].exists(c, c in signals)", ""),
    # cel-python raised its own CELSyntaxError on these, a 500 where they were saved.
    ("[args.reason].all(1, true)", "all() takes a name for each item first"),
    ("[args.reason].exists(args.reason + agent, true)", "exists() takes a name for each item"),
    ("args.currency > 5", "values of different types are compared (int and string)"),
    ('args.amount_cents == "5000"', "values of different types are compared (int and string)"),
    ("args.amount_cents + 1", "must be true or false"),
    ('args.reason.upperAscii() == "X"', "unknown function 'upperAscii'"),
    ("!" * 1500 + "true", "nested too deeply"),
    ('args.reason.exists(a, "ab".exists(b, a == b))', "may not put one of all"),
    ("args.currency", "must be true or false"),
    ("args.amount_cents.exists(a, a > 0)", "a value is not of the kind it reads"),
]


@pytest.mark.parametrize(("condition", "expected"), CONDITIONS)
def test_conditions_are_checked_against_the_schema(condition: str, expected: str) -> None:
    problems = rules.condition_problems(condition, REFUND)
    if not expected:
        assert problems == []
    else:
        assert len(problems) >= 1 and expected in problems[0], problems


def test_keys_written_as_strings_are_checked_like_names_at_any_depth() -> None:
    """``args.customer["tier"]`` reads what ``args.customer.tier`` reads, and a misspelt key
    never matches either way; an item's (``args.lines[0]``) is checked through the list. A key
    computed as the call runs cannot be checked: what comes before it is. A map's keys are
    data, not names: any may be read."""
    schema = {
        "type": "object",
        "properties": {
            "customer": {
                "type": "object",
                "properties": {"tier": {"type": "string"}, "first-name": {"type": "string"}},
            },
            "lines": {
                "type": "array",
                "items": {"type": "object", "properties": {"sku": {"type": "string"}}},
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "key": {"type": "string"},
            "a.b": {"type": "integer"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "labels": {
                "type": "object",
                "properties": {"team": {"type": "string"}},
                "patternProperties": {"^x-": {"type": "string"}},
            },
        },
    }
    for condition, unknown in (
        ('args.customer["tiir"] == "gold"', "args.customer.tiir"),
        ('args["customer"]["tiir"] == "gold"', "args.customer.tiir"),
        ('args["custmer"].tier == "gold"', "args.custmer.tier"),
        ('args.customer["first_name"] == "Ada"', "args.customer.first_name"),
        ('args.lines[0].skku == "x"', "args.lines.skku"),
        ('args.lines[0]["skku"] == "x"', "args.lines.skku"),
        ('args["a.c"] > 1', 'args["a.c"]'),
        ('"tiir" in args.customer', "args.customer.tiir"),
        ('"kee" in args', "args.kee"),
        ('args.labels["taem"] == "x"', "args.labels.taem"),
        ('args.headers["x-id"].size > 0', 'args.headers["x-id"].size'),
    ):
        assert rules.condition_problems(condition, schema) == [
            f"{unknown} is not an argument of this tool."
        ], condition
    for condition in (
        'args.customer["tier"] == "gold" && args.customer["first-name"] == "Ada"',
        'args.lines[0]["sku"] == "x" && args["a.b"] > 1',
        'args.customer[args.key] == "x" && args[args.key] == "x"',
        '"tier" in args.customer && "gold" in args.tags && "sku" in args.lines[0]',
        '"key" in args && args.key in args.customer',
        'args.headers["x-request-id"] == "r1" || "x-trace" in args.headers',
        'args.headers.host == "h" && args.labels["x-owner"] == "ada" && args.labels.team == "a"',
    ):
        assert rules.condition_problems(condition, schema) == [], condition


def test_a_macro_may_not_look_each_item_up_in_the_arguments() -> None:
    """``in`` walks its whole container, so once per item it costs the square of the lists
    an agent sends (two of 3,000 addresses: 9 s at intake), as a nested macro would."""
    schema = {
        "type": "object",
        "properties": {
            "to": {"type": "array", "items": {"type": "string"}},
            "cc": {"type": "array", "items": {"type": "string"}},
        },
    }
    for condition in ("args.to.exists(a, a in args.cc)", "args.to.all(a, !(a in (args.cc)))"):
        problems = rules.condition_problems(condition, schema)
        assert problems and "square" in problems[0], (condition, problems)
    for condition in (
        'args.to.exists(a, a in ["ada@example.com", "bob@example.com"])',
        "args.to.exists(a, a in signals) && args.to[0] in args.cc",
    ):
        assert rules.condition_problems(condition, schema) == [], condition


def test_a_macro_may_not_use_an_argument_whole_per_item() -> None:
    """Once per item, comparing, copying or searching a text or list the agent sends costs
    the square of what it sends (two lists of 3,000 compared per item: 16 s at intake)."""
    schema = {
        "type": "object",
        "properties": {
            "to": {"type": "array", "items": {"type": "string"}},
            "cc": {"type": "array", "items": {"type": "string"}},
            "sender": {"type": "string"},
            "body": {"type": "string"},
            "limit": {"type": "integer"},
            "urgent": {"type": "boolean"},
        },
    }
    for condition in (
        "args.to.exists(a, args.to == args.cc)",
        "args.to.exists(a, string(args.cc) == a)",
        "args.to.exists(a, args.body.contains(a))",
        "args.to.exists(a, size(args.to + args.cc) > 3)",
        'args.to.all(a, args.body + a != "x")',
        "args.to.map(a, args.cc) == args.to.map(a, args.cc)",
        "size(string(args.to.map(a, args.to))) > 0",
        "args.to.exists(a, args.to[0] == a)",
    ):
        problems = rules.condition_problems(condition, schema)
        assert problems and "square" in problems[0], (condition, problems)
    for condition in (
        'args.to.exists(a, a.endsWith("@example.com"))',
        'args.to.exists(a, a in ["x", "y"])',
        "args.to.exists(a, a in signals || a in user.roles)",
        "args.to.all(a, a != args.sender && a.endsWith(args.sender))",
        "args.to.exists(a, size(a) > args.limit && args.urgent)",
        "args.to.exists(a, has(args.cc) && size(args.cc) > 0 && args.cc.size() < 9)",
        'args.to.map(a, a + "!").exists(b, b == "x!")',
    ):
        assert rules.condition_problems(condition, schema) == [], condition


def test_a_macro_whose_every_item_fails_costs_what_its_items_do() -> None:
    """cel-python's all and exists joined two failed items into an error quoting both, so the
    error doubled per item: 22 items without the member a rule reads took 1 s and 300 MB,
    30 the worker's memory. The rule still fails closed."""
    schema = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {}}}}
        },
    }
    ordered = rules.parse([{"when": 'args.items.exists(i, i.sku == "X")', "then": "approve"}])
    assert rules.condition_problems(ordered[0].when, schema) == []
    applied, peak = _first_match_and_peak(ordered, {"items": [{}] * 18 + [{"sku": 1}] * 2}, schema)
    assert applied.rule is None and applied.failed == (1,)
    assert peak < 5_000_000, peak


def test_a_chain_of_failing_terms_costs_what_its_terms_do() -> None:
    """The same with && between terms that each fail (an optional argument absent)."""
    b = {"type": "integer"}
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": b}}}}
    when = " && ".join(["args.a.b == 1"] * 20)
    assert rules.condition_problems(when, schema) == []
    ordered = rules.parse([{"when": when, "then": "approve"}])
    applied, peak = _first_match_and_peak(ordered, {"a": {}}, schema)
    assert applied.rule is None and applied.failed == (1,)
    assert peak < 5_000_000, peak


def _first_match_and_peak(ordered: Any, arguments: dict, schema: dict) -> tuple[Any, int]:
    """The rules applied to a call, and the most memory that took (bytes)."""
    tracemalloc.start()
    try:
        applied = rules.first_match(
            ordered,
            arguments=arguments,
            input_schema=schema,
            signals=[],
            user_id="",
            roles=[],
            agent="a",
        )
        return applied, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# (risk, rule, what the check says: "" when it is a valid rule)
RULES = [
    (Risk.WRITE, {"when": "args.amount_cents <= 5000", "then": "approve"}, ""),
    (Risk.WRITE, {"when": "true", "then": "require", "approvals": 2, "team": "finance"}, ""),
    (Risk.WRITE, {"when": "true", "then": "require", "approvals": 1, "confirm": True}, ""),
    (Risk.WRITE, {"when": "true", "then": "refuse", "note": "Never on Sundays."}, ""),
    (Risk.READ, {"when": "true", "then": "refuse"}, ""),
    (Risk.DESTRUCTIVE, {"when": "true", "then": "approve"}, "cannot be approved by rule"),
    (Risk.DESTRUCTIVE, {"when": "true", "then": "require", "approvals": 1}, "at least 2"),
    (Risk.READ, {"when": "true", "then": "approve"}, "reads run at once"),
    (Risk.READ, {"when": "true", "then": "require", "approvals": 1}, "reads never wait"),
    (Risk.WRITE, {"when": "true", "then": "allow"}, "then must be one of"),
    (Risk.WRITE, {"when": "true"}, "then must be one of"),
    (Risk.WRITE, {"when": "true", "then": "require"}, "approvals must be 1 to 10"),
    (Risk.WRITE, {"when": "true", "then": "require", "approvals": 11}, "approvals must be 1"),
    (Risk.WRITE, {"when": "true", "then": "require", "approvals": "2"}, "whole number"),
    (Risk.WRITE, {"when": "true", "then": "require", "approvals": True}, "whole number"),
    (Risk.WRITE, {"when": "true", "then": "require", "approvals": 1, "team": "ops"}, "no team"),
    (Risk.WRITE, {"when": "true", "then": "approve", "approvals": 2}, "go with then: require"),
    (Risk.WRITE, {"when": "", "then": "approve"}, "when is a CEL condition"),
    (Risk.WRITE, {"when": 5, "then": "approve"}, "when is a CEL condition"),
    (Risk.WRITE, {"when": "x" * 2001, "then": "approve"}, "longer than 2000"),
    (Risk.WRITE, {"when": "true", "then": "approve", "priority": 1}, "unknown field priority"),
    (Risk.WRITE, {"when": "true", "then": "refuse", "note": 5}, "note is a sentence"),
    (Risk.WRITE, "args.amount_cents > 5", "a rule is an object"),
]


@pytest.mark.parametrize(("risk", "rule", "expected"), RULES)
def test_rules_are_checked_whole(risk: str, rule: object, expected: str) -> None:
    problems = rules.problems([rule], risk=risk, input_schema=REFUND, teams=TEAMS)
    if not expected:
        assert problems == []
    else:
        assert problems and problems[0].startswith("Rule 1: ") and expected in problems[0], problems


def test_the_rule_list_itself_is_checked() -> None:
    for raw, expected in (
        ({"when": "true"}, "Give a list of rules"),
        ("[]", "Give a list of rules"),
        ([{"when": "true", "then": "refuse"}] * 51, "At most 50 rules"),
    ):
        assert expected in rules.problems(raw, risk=Risk.WRITE, input_schema=REFUND, teams=TEAMS)[0]
    assert rules.problems([], risk=Risk.WRITE, input_schema=REFUND, teams=TEAMS) == []
    assert rules.problems(None, risk=Risk.WRITE, input_schema=REFUND, teams=TEAMS) == []
    # Every broken rule is reported, each under its own number.
    two = rules.problems(
        [{"when": "ok ==", "then": "approve"}, {"when": "true", "then": "nope"}],
        risk=Risk.WRITE,
        input_schema=REFUND,
        teams=TEAMS,
    )
    assert [p.split(":")[0] for p in two] == ["Rule 1", "Rule 2"]


DEMO_REFUND_RULES = rules.parse(
    [
        {"when": "args.amount_cents <= 5000", "then": "approve"},
        {
            "when": "args.amount_cents > 50000",
            "then": "require",
            "approvals": 2,
            "team": "reviewers",
        },
    ]
)


def refund(amount: int, currency: str = "usd") -> dict[str, object]:
    return {"payment_id": "pay_0001", "amount_cents": amount, "currency": currency, "reason": "x"}


@pytest.mark.parametrize(
    ("amount", "number", "then"),
    [
        (1250, 1, "approve"),
        (5000, 1, "approve"),
        (5001, None, None),
        (50000, None, None),
        (99000, 2, "require"),
    ],
)
def test_the_first_rule_that_holds_decides(
    amount: int, number: int | None, then: str | None
) -> None:
    applied = rules.first_match(
        DEMO_REFUND_RULES,
        arguments=refund(amount),
        input_schema=REFUND,
        signals=[],
        user_id="",
        roles=[],
        agent="support-bot",
    )
    assert applied.number == number
    assert (applied.rule.then if applied.rule else None) == then
    assert applied.errors == ()


def test_signals_user_and_agent_reach_the_conditions() -> None:
    ordered = rules.parse(
        [
            {"when": '"external_link" in signals', "then": "require", "approvals": 2},
            {"when": '"vip" in user.roles', "then": "refuse"},
            {"when": 'agent == "trusted-bot" && user.id == "ada"', "then": "approve"},
        ]
    )

    def decide(signals: list[str], user_id: str, roles: list[str], agent: str) -> int | None:
        return rules.first_match(
            ordered,
            arguments={"to": "a@example.com", "subject": "s", "body": "b"},
            input_schema=EMAIL,
            signals=signals,
            user_id=user_id,
            roles=roles,
            agent=agent,
        ).number

    assert decide(["external_link"], "ada", ["vip"], "trusted-bot") == 1
    assert decide([], "ada", ["vip"], "trusted-bot") == 2
    assert decide([], "ada", [], "trusted-bot") == 3
    assert decide([], "bob", [], "trusted-bot") is None


def test_a_rule_that_cannot_be_evaluated_blocks_every_later_approval() -> None:
    """A rule reading an argument the call does not have fails on that call; it might have
    asked for more reviewers, so no later rule may approve the call on its own."""
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "number"}, "note": {"type": "string"}},
        "required": ["amount"],
    }
    ordered = rules.parse(
        [
            {"when": 'args.note.contains("urgent")', "then": "require", "approvals": 3},
            {"when": "args.amount < 10.0", "then": "approve"},
            {"when": "args.amount < 100.0", "then": "require", "approvals": 2},
        ]
    )
    common = {"input_schema": schema, "signals": [], "user_id": "", "roles": [], "agent": "a"}
    blocked = rules.first_match(ordered, arguments={"amount": 4}, **common)
    # Rule 1 held: it asks 3; it did not: rule 2 approves. Rule 3 decides in no reading.
    assert blocked.rule is None and blocked.failed == (1,)
    assert blocked.errors and "rule 1" in blocked.errors[0]
    nothing = rules.first_match(ordered, arguments={"amount": 400}, **common)
    assert nothing.rule is None and nothing.errors
    # A number written without a decimal point compares with a double: the schema says number.
    assert rules.first_match(ordered, arguments={"amount": 4, "note": "fine"}, **common).number == 2


def test_a_refusal_past_a_blocked_approval_refuses_nothing() -> None:
    """Rule 1 cannot be read on a call without a note; had it held, the call waited for two
    reviewers, and if not rule 2 approved it. The search went on past rule 2 to the catch-all
    refusal, which refused a call that no reading of the rules refuses."""
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "integer"}, "note": {"type": "string"}},
        "required": ["amount"],
    }
    ordered = rules.parse(
        [
            {"when": 'args.note.contains("vip")', "then": "require", "approvals": 2},
            {"when": "args.amount <= 5000", "then": "approve"},
            {"when": "true", "then": "refuse"},
        ]
    )
    common = {"input_schema": schema, "signals": [], "user_id": "", "roles": [], "agent": "a"}
    applied = rules.first_match(ordered, arguments={"amount": 100}, **common)
    assert applied.rule is None and applied.failed == (1,)
    refused = rules.first_match(ordered, arguments={"amount": 9000, "note": "x"}, **common)
    assert refused.number == 3


# --- Numbers CEL cannot hold ------------------------------------------------------------

BIG = 2**63  # one past CEL's int64


def test_a_number_past_64_bits_fails_every_rule_closed_and_no_rules_read_nothing() -> None:
    facts = {"input_schema": REFUND, "signals": [], "user_id": "", "roles": [], "agent": "a"}
    arguments = {"payment_id": "pay_0001", "amount_cents": BIG, "currency": "usd"}
    assert rules.first_match([], arguments=arguments, **facts) == rules.Applied()
    applied = rules.first_match(
        [
            rules.Rule(when="args.amount_cents > 100", then="require", approvals=2),
            rules.Rule(when="true", then=rules.APPROVE),
        ],
        arguments=arguments,
        **facts,
    )
    assert applied.rule is None and applied.failed == (1, 2)
    assert "too large for the rules to read" in applied.errors[0]
    huge_float = {**arguments, "amount_cents": 10**400}  # past a double too
    as_number = {"type": "object", "properties": {"amount_cents": {"type": "number"}}}
    failed = rules.first_match(
        [rules.Rule(when="true", then=rules.APPROVE)],
        arguments=huge_float,
        **{**facts, "input_schema": as_number},
    )
    assert failed.failed == (1,)


def test_rules_on_a_tool_whose_schema_allows_uint64_are_checked_not_a_crash() -> None:
    schema = {
        "type": "object",
        "properties": {"quantity": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}},
    }
    conditions = [{"when": "args.quantity > 100", "then": "require", "approvals": 2}]
    assert rules.problems(conditions, risk="write", input_schema=schema, teams=TEAMS) == []


def test_a_condition_that_gives_a_value_on_a_live_call_fails_closed() -> None:
    """Saved after its check on sample calls (a boolean there), it reads a string here."""
    schema = {
        "type": "object",
        "properties": {"urgent": {"anyOf": [{"type": "boolean"}, {"type": "string"}]}},
    }
    applied = rules.first_match(
        [
            rules.Rule(when="args.urgent", then="require", approvals=2),
            rules.Rule(when="true", then=rules.APPROVE),
        ],
        arguments={"urgent": "yes"},
        input_schema=schema,
        signals=[],
        user_id="",
        roles=[],
        agent="a",
    )
    assert applied.rule is None and applied.failed == (1,)
    assert "not true or false" in applied.errors[0]


def test_a_text_the_condition_reads_as_a_number_or_a_time_is_checked_as_one() -> None:
    """An amount sent as a decimal string (``"value": "12.50"``, as some payment APIs send
    it) is compared as a number with ``double()``, a time as one with ``timestamp()``. The
    sample calls held words there, which neither reads: such a rule was refused as one that
    "cannot be evaluated", and an admin was left with a comparison of texts
    (``args.amount.value <= "50.00"``), which "100.00" meets. A text that is never a number
    (one of a list of words) is still refused."""
    schema = {
        "type": "object",
        "properties": {
            "amount": {
                "type": "object",
                "properties": {
                    "value": {"type": "string", "pattern": "^[0-9]+[.][0-9]{2}$"},
                    "currency_code": {"type": "string", "enum": ["USD", "EUR"]},
                },
                "required": ["value", "currency_code"],
            },
            "send_at": {"type": "string", "format": "date-time"},
        },
        "required": ["amount"],
    }
    for condition in (
        "double(args.amount.value) <= 50.0",
        'args.amount.currency_code == "USD" && double(args.amount.value) > 500.0',
        'timestamp(args.send_at) < timestamp("2030-01-01T00:00:00Z")',
    ):
        assert rules.condition_problems(condition, schema) == [], condition
    assert rules.condition_problems("int(args.amount.currency_code) > 5", schema) == [
        "the condition cannot be evaluated: a text it converts to a number or a time is not one"
    ]
    # As the rule reads it on a call: a number, and a text that is none fails closed.
    rule = [rules.Rule(when="double(args.amount.value) <= 50.0", then="approve")]

    def decided(value: str) -> rules.Applied:
        arguments = {"amount": {"value": value, "currency_code": "USD"}}
        return rules.first_match(
            rule,
            arguments=arguments,
            input_schema=schema,
            signals=[],
            user_id="",
            roles=[],
            agent="a",
        )

    assert decided("12.50").number == 1
    assert decided("100.00").number is None and not decided("100.00").errors
    assert decided("n/a").number is None and decided("n/a").errors


def _decided(rule_list: list[rules.Rule], arguments: dict[str, Any]) -> rules.Applied:
    schema = {"type": "object", "properties": {"x": {"type": "string"}, "n": {"type": "integer"}}}
    return rules.first_match(
        rule_list,
        arguments=arguments,
        input_schema=schema,
        signals=[],
        user_id="",
        roles=[],
        agent="a",
    )


@pytest.mark.parametrize(
    ("conversion", "text"),
    [
        ("double", "nan"),
        ("double", "-inf"),
        ("double", "Infinity"),
        ("double", " 3 "),
        ("double", "1_000"),
        ("double", "0x1p3"),
        ("double", "1e400"),  # past a double's range: read as infinity
        ("int", " 3 "),
        ("int", "0_3"),
        ("int", "0x10"),
        ("int", "\uff13"),  # a fullwidth digit: Python's int() reads it
        ("int", "3.0"),
        ("uint", "-0"),
        ("uint", "+3"),
        ("uint", " 3"),
    ],
)
def test_a_text_cel_reads_as_no_number_fails_the_rule_closed(conversion: str, text: str) -> None:
    """cel-python read int(), uint() and double() of a text as Python does: " 3 ", "0_3" and
    "nan" were numbers, and ``double(args.x) > 5.0``, a refusal of more than 5, did not hold
    on "nan" (no comparison holds for it): the call went on to the next rule, an approval.
    CEL reads a decimal number only; any other text is an error: the refusal fails closed,
    and no later approval applies."""
    refusal = [
        rules.Rule(when=f"{conversion}(args.x) > {conversion}(5)", then="refuse"),
        rules.Rule(when="true", then="approve"),
    ]
    applied = _decided(refusal, {"x": text})
    assert applied.number is None and applied.failed == (1,), applied
    approval = [rules.Rule(when=f"!({conversion}(args.x) > {conversion}(5))", then="approve")]
    assert _decided(approval, {"x": text}).failed == (1,)


def test_cel_s_numbers_in_texts_are_read_and_the_type_names_stay_types() -> None:
    for condition, text in [
        ('int(args.x) == -42 && int("+7") == 7', "-42"),
        ('uint(args.x) == 300u && uint("0") == 0u', "300"),
        ("double(args.x) == 12.5", "12.50"),
        ("double(args.x) == -0.0", "-0.0"),
        ("double(args.x) == 6.02e23", "6.02e23"),
        ('double(args.x) == 0.5 && double("5.") == 5.0 && double("-1E-3") < 0.0', ".5"),
        ('type(args.n) == int && type(args.n) != double && type("") == string', "-"),
        ("type(args.n) in [double, int] && int == type(1)", "-"),
    ]:
        applied = _decided([rules.Rule(when=condition, then="approve")], {"x": text, "n": 4})
        assert applied.number == 1 and not applied.errors, (condition, applied)


def test_has_of_a_member_of_a_list_is_refused_where_it_could_never_hold() -> None:
    """``has(args.lines.discount)`` (meant: a line has a discount) passed the check, which
    walks a list through to its items, and was false on every call: a rule that never held,
    a refusal that never refused. An item's member, or each item's, may be asked."""
    schema = {
        "type": "object",
        "properties": {
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "discount": {"type": "integer"}},
                },
            },
            "customer": {"type": "object", "properties": {"tier": {"type": "string"}}},
        },
    }
    for condition in ("has(args.lines.discount)", 'has(args["lines"].discount)'):
        assert rules.condition_problems(condition, schema) == [
            "args.lines is a list: has() of a member of it is never true; ask it of an item "
            "(args.lines[0]), or of each (exists)."
        ], condition
    for condition in (
        "has(args.lines[0].discount)",
        "args.lines.exists(l, has(l.discount))",
        "has(args.customer.tier)",
        "has(args.lines)",
    ):
        assert rules.condition_problems(condition, schema) == [], condition
