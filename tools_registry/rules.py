"""Policy rules: per tool, an ordered list of conditions on a call and what each decides.

A condition is written in CEL, the Common Expression Language (Kubernetes admission
policies, Google Cloud IAM conditions), and evaluated by ``cel-python``: no Python
``eval``, no language of our own. A condition sees

* ``args``: the call's arguments (``args.amount_cents > 50000``),
* ``signals``: the risk signals the call raised (``"external_link" in signals``),
* ``user``: who the agent acts for, ``user.id`` and ``user.roles``,
* ``agent``: the agent's name.

The first rule whose condition holds decides: ``approve`` (no reviewer; never for a
destructive tool), ``require`` (``approvals`` reviewers, optionally all from ``team``,
optionally typing the call's target to confirm), or ``refuse`` (the agent gets an error).
No rule holding leaves the tool's own policy in force. Rules are part of the tool's policy:
checked against its schema when saved, versioned and audited with it, and every call
records the rule that applied.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from typing import Any

import celpy
import re2
from celpy import celparser, celtypes
from celpy.evaluation import celstr
from lark import Token, Tree

from audit.masking import field_path
from core.json_values import unstorable_text
from tools_registry import risk_signals
from tools_registry.policy import Risk
from tools_registry.schemas import has_argument_parts, pattern_takes

APPROVE, REQUIRE, REFUSE = "approve", "require", "refuse"
OUTCOMES = (APPROVE, REQUIRE, REFUSE)
VARIABLES = frozenset({"args", "signals", "user", "agent"})
USER_FIELDS = frozenset({"id", "roles"})  # what ``user`` holds (``_activation``)
# CEL's names of the kinds of values, for ``type(args.to) == list``: a rule on an argument the
# schema allows in more than one kind reads each kind its own way.
TYPE_NAMES = frozenset({"bool", "int", "uint", "double", "string", "bytes", "list", "map"})
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
MAX_RULES = 50
MAX_CONDITION_LENGTH = 2000
MAX_DEPTH = 250  # levels of the parse tree: twenty nested parentheses make about 210
MAX_APPROVALS = 10
_KEYS = frozenset({"when", "then", "approvals", "team", "confirm", "note"})


@dataclass(frozen=True)
class Rule:
    when: str
    then: str
    approvals: int = 0  # ``require``: how many distinct reviewers
    team: str = ""  # ``require``: every approval from a member of this team
    confirm: bool = False  # ``require``: the approver types the call's target
    note: str = ""  # why the rule exists; shown to reviewers, and to the agent on refusal

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0, False)}

    def describe(self) -> str:
        if self.then == APPROVE:
            return "approved without a reviewer"
        if self.then == REFUSE:
            return "refused"
        team = f" from {self.team}" if self.team else ""
        confirm = ", typed confirmation" if self.confirm else ""
        return f"{self.approvals} approval{'s' if self.approvals != 1 else ''}{team}{confirm}"


@dataclass(frozen=True)
class Applied:
    """Which rule decided a call (``number`` counts from 1), or none; and the rules that
    could not be evaluated on it (such a call is never approved without a reviewer)."""

    number: int | None = None
    rule: Rule | None = None
    errors: tuple[str, ...] = field(default=())
    failed: tuple[int, ...] = field(default=())  # the numbers of the rules in ``errors``

    def as_dict(self) -> dict[str, Any] | None:
        if self.rule is None and not self.errors:
            return None
        return {
            "number": self.number,
            **(self.rule.as_dict() if self.rule else {}),
            **({"errors": list(self.errors)} if self.errors else {}),
        }


class RuleError(ValueError):
    pass


# --- Reading and checking -----------------------------------------------------------------


def parse(raw: Any) -> list[Rule]:
    """The rules stored on a tool (checked when saved, so this only re-reads them)."""
    return [Rule(**{k: v for k, v in item.items() if k in _KEYS}) for item in raw or []]


def teams_named(raw: Any) -> frozenset[str]:
    """The teams ``raw`` (a tool's rules, stored or about to be) names, each rule's ``team``.
    A rule's team is a name: the team must exist while a rule names it (``rule_teams``)."""
    if not isinstance(raw, list):
        return frozenset()
    return frozenset(
        item["team"]
        for item in raw
        if isinstance(item, dict) and isinstance(item.get("team"), str) and item["team"]
    )


def for_risk(raw: Any, risk: str) -> list[Any]:
    """A tool's rules once its risk class becomes ``risk``: each asks at least what it asked.

    A ``require`` of a tool made destructive asks for 2 approvals if it asked for fewer, its
    team and confirmation kept; of a tool made a read, which no reviewer can hold, it refuses
    the calls it held. An ``approve`` the class does not allow goes: a later rule or the
    tool's own policy then decides, and either asks more. Every other rule stays as it was,
    even one that no longer fits the tool's schema: dropped, a refusal would let through what
    it refused; kept, it fails closed on every call, and the policy check names it until an
    admin mends it.
    """
    adapted = []
    for item in raw if isinstance(raw, list) else []:
        then = item.get("then") if isinstance(item, dict) else None
        if then == APPROVE and risk in (Risk.READ, Risk.DESTRUCTIVE):
            continue
        if then == REQUIRE and risk == Risk.READ:
            item = {
                "when": item.get("when"),
                "then": REFUSE,
                "note": "This rule asked for reviewers, and a read cannot wait for them: "
                "refused until an admin changes the rule.",
            }
        elif then == REQUIRE and risk == Risk.DESTRUCTIVE:
            approvals = item.get("approvals")
            if isinstance(approvals, int) and not isinstance(approvals, bool) and approvals < 2:
                item = {**item, "approvals": 2}
        adapted.append(item)
    return adapted


def problems(
    raw: Any, *, risk: str, input_schema: Mapping[str, Any], teams: frozenset[str]
) -> list[str]:
    """Everything wrong with ``raw`` as a tool's rules, each message naming its rule."""
    if raw in (None, ""):
        return []
    if not isinstance(raw, list):
        return ['Give a list of rules, like [{"when": "args.amount_cents > 50000", ...}].']
    if len(raw) > MAX_RULES:
        return [f"At most {MAX_RULES} rules."]
    found: list[str] = []
    for number, item in enumerate(raw, start=1):
        found += [f"Rule {number}: {p}" for p in _rule_problems(item, risk, input_schema, teams)]
    return found


def _rule_problems(
    item: Any, risk: str, input_schema: Mapping[str, Any], teams: frozenset[str]
) -> list[str]:
    if not isinstance(item, dict):
        return ["a rule is an object with a condition (when) and an outcome (then)."]
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        return [f"unknown field {', '.join(unknown)}; a rule has {', '.join(sorted(_KEYS))}."]
    if unstorable := unstorable_text(item):
        # The rules are stored as jsonb, which refuses it (the save failed, a 500).
        return [f"a rule may not hold {unstorable}."]
    found = []
    then = item.get("then")
    if then not in OUTCOMES:
        found.append(f"then must be one of {', '.join(OUTCOMES)}, not {then!r}.")
    elif then == APPROVE and risk == Risk.DESTRUCTIVE:
        found.append("a destructive call always needs reviewers; it cannot be approved by rule.")
    elif then == APPROVE and risk == Risk.READ:
        found.append("reads run at once already; approve changes nothing for them.")
    approvals, team, confirm = item.get("approvals", 0), item.get("team", ""), item.get("confirm")
    if then == REQUIRE:
        if risk == Risk.READ:
            found.append("reads never wait for reviewers; a rule can only refuse them.")
        if not isinstance(approvals, int) or isinstance(approvals, bool):
            found.append("approvals must be a whole number.")
        elif not 1 <= approvals <= MAX_APPROVALS:
            found.append(f"approvals must be 1 to {MAX_APPROVALS}.")
        if risk == Risk.DESTRUCTIVE and isinstance(approvals, int) and approvals < 2:
            found.append("destructive calls need at least 2 approvals.")
        if not isinstance(team, str):
            found.append("team is the name of a team.")
        elif team and team not in teams:
            found.append(f"there is no team named {team!r}.")
        if confirm not in (None, True, False):
            found.append("confirm is true or false.")
    elif then in OUTCOMES and (approvals or team or confirm):
        found.append("approvals, team and confirm go with then: require only.")
    if not isinstance(item.get("note", ""), str) or len(item.get("note", "")) > 300:
        found.append("note is a sentence of at most 300 characters.")
    when = item.get("when")
    if not isinstance(when, str) or not when.strip():
        found.append(
            'when is a CEL condition, like args.amount_cents > 50000 && args.currency == "usd".'
        )
    elif len(when) > MAX_CONDITION_LENGTH:
        found.append(f"the condition is longer than {MAX_CONDITION_LENGTH} characters.")
    else:
        found += condition_problems(when, input_schema)
    return found


def condition_problems(when: str, input_schema: Mapping[str, Any]) -> list[str]:
    """Why ``when`` cannot be a condition of a tool with this schema: a syntax error,
    a name it does not know, an argument the tool does not have, a signal that does not
    exist, values of different types compared."""
    try:
        tree = _environment().compile(when)
    except celparser.CELParseError as exc:
        where = str(exc.args[0]).rstrip() if exc.args else ""
        return [f"the condition is not valid CEL:\n{where}"]
    except RecursionError:
        return ["the condition is nested too deeply."]
    if _depth(tree) > MAX_DEPTH:
        # Evaluating it would recurse past Python's stack limit.
        return ["the condition is nested too deeply."]
    found = []
    bound = _macro_variables(tree)
    for name in sorted(_identifiers(tree) - VARIABLES - TYPE_NAMES - bound):
        found.append(f"unknown name {name!r}; a condition can use {', '.join(sorted(VARIABLES))}.")
    for name in _unnamed_macro_items(tree):
        # cel-python raises on such a macro as on a fault of its own (a 500 when saved).
        found.append(f"{name}() takes a name for each item first, as in [1, 2].{name}(x, x > 0).")
    if _nested_macros(tree):
        # Its cost grows with the square of a list an agent sends (300 items: 37 s, in the
        # submission's transaction, holding the agent's run lock).
        found.append(
            "a condition may not put one of all, exists, exists_one, map or filter inside another."
        )
    if _looks_through_arguments_per_item(tree):
        # ``in`` walks its whole container: once per item, the square of what the agent sends
        # (two lists of 3,000: 9 s), as a macro inside another would.
        found.append(
            "inside all, exists, exists_one, map or filter, in may not look through the "
            "arguments (a in args.cc): its cost would grow with the square of their size."
        )
    elif _reads_arguments_whole_per_item(tree, input_schema):
        # Once per item it walks, copies or compares a value the agent sends at any size
        # (args.b == args.c over two lists of 3,000: 16 s; string(args.b): 5 s).
        found.append(
            "inside all, exists, exists_one, map or filter, an argument may only be a number "
            "or true/false, compared with the item (a == args.sender), or given to has() or "
            "size(): using a text or list whole there (args.body.contains(a), string(args.to)) "
            "costs the square of what the agent sends."
        )
    found += _pattern_problems(tree)
    for name in sorted(_functions(tree) - FUNCTIONS):
        # Found on a live call only when the rule gets that far, as an error that skips it.
        found.append(
            f"unknown function {name!r}; the functions are {', '.join(sorted(FUNCTIONS))}."
        )
    for path in dict.fromkeys([*_argument_paths(tree), *_keys_tested(tree, input_schema)]):
        if not has_argument_parts(input_schema, path):
            found.append(f"{_written(path)} is not an argument of this tool.")
    for lists in _has_through_a_list(tree, input_schema):
        found.append(
            f"{_written(lists)} is a list: has() of a member of it is never true; ask it of an "
            f"item ({_written(lists)}[0]), or of each (exists)."
        )
    if "user" not in bound:  # not a macro's item named so
        for name in _user_fields(tree):
            if name not in USER_FIELDS:
                found.append(f"user has no {name!r}; a condition reads user.id and user.roles.")
    for code in _signal_literals(tree):
        if code not in risk_signals.CODES:
            known = ", ".join(sorted(risk_signals.CODES))
            found.append(f"there is no signal {code!r}; the signals are {known}.")
    if not found:
        found += _type_problems(when, input_schema)
    return found


def _pattern_problems(tree: Tree) -> list[str]:
    """Why a ``matches()`` of the condition cannot be checked when saved: its pattern must be
    a string literal (one from the call would let the agent choose what the rule matches, and
    an invalid one was written to the logs), and a valid RE2 expression."""
    found = []
    for node in _matches_patterns(tree):
        token = _literal_token(node)
        if token is None or token.type not in ("STRING_LIT", "MLSTRING_LIT"):
            found.append(
                "matches() takes its pattern as a string literal, "
                'like args.code.matches("^[A-Z]{3}$"), not a value of the call.'
            )
            continue
        pattern = str(celstr(token))
        try:
            re2.compile(pattern, _QUIET)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else b""
            reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            found.append(
                f"the pattern {pattern!r} is not a regular expression RE2 reads: {reason}."
            )
    return found


def _matches_patterns(tree: Tree) -> Iterator[Any]:
    """The pattern given to each ``matches()``: ``x.matches(p)`` or ``matches(x, p)``."""
    for node in _subtrees(tree, "member_dot_arg"):
        given = node.children[2] if len(node.children) > 2 else None
        if str(node.children[1]) == "matches" and isinstance(given, Tree) and given.children:
            yield given.children[0]
    for node in _subtrees(tree, "ident_arg"):
        given = node.children[1] if len(node.children) > 1 else None
        if str(node.children[0]) == "matches" and isinstance(given, Tree) and given.children[1:]:
            yield given.children[1]


def _type_problems(when: str, input_schema: Mapping[str, Any]) -> list[str]:
    """Evaluate the condition on sample calls made from the schema: values of different
    types compared (``args.currency > 5``) fail here rather than on a live call."""
    program = _compiled(when)
    for low in (True, False):
        sample = _sample(input_schema, low=low, depth=0, root=input_schema)
        problems = _sample_problems(program, sample, input_schema)
        if problems is _CONVERTED:
            # A text the condition converts (``double(args.amount.value) <= 50.0``, a decimal
            # sent as a string, as some payment APIs send amounts): the sample's words are no
            # number, its digits are. Refused, such a rule was written as a comparison of
            # texts instead (``args.amount.value <= "50.00"``), which "100.00" meets.
            digits = _sample(input_schema, low=low, depth=0, root=input_schema, digits=True)
            problems = _sample_problems(program, digits, input_schema)
            if problems is _CONVERTED:
                return [
                    "the condition cannot be evaluated: a text it converts to a number or a "
                    "time is not one"
                ]
        if problems:
            return problems
    return []


_CONVERTED: list[str] = ["a text converted"]  # ``_sample_problems``: a conversion failed


def _sample_problems(program: Any, sample: Any, input_schema: Mapping[str, Any]) -> list[str]:
    """Why the condition cannot be evaluated on ``sample``: nothing when it can (or when the
    sample cannot tell), ``_CONVERTED`` when a text of it could not be read as a number."""
    try:
        activation = _activation(
            normalise(sample, input_schema),
            signals=["external_link"],
            user_id="u",
            roles=["r"],
            agent="a",
        )
    except (ValueError, OverflowError):
        return []  # a schema's bound past 64 bits (uint64): no sample CEL can hold
    try:
        value = program.evaluate(activation)
    except celpy.CELEvalError as exc:
        if (
            len(exc.args) > 1
            and isinstance(exc.args[1], type)
            and issubclass(exc.args[1], ValueError)
        ):
            return _CONVERTED  # int(), double(), timestamp()...: a text that is none
        message = _eval_message(exc)
        if "no such member" in message or "no such key" in message:
            return []  # an optional argument absent from this sample: has() is the cure
        return [f"the condition cannot be evaluated: {message}"]
    except _PYTHON_ERRORS:
        return ["the condition cannot be evaluated: a value is not of the kind it reads"]
    if not isinstance(value, celtypes.BoolType):
        return ["the condition must be true or false, not a value."]
    return []


# --- Evaluating ---------------------------------------------------------------------------


def first_match(
    rules: list[Rule],
    *,
    arguments: Any,
    input_schema: Mapping[str, Any],
    signals: list[str],
    user_id: str,
    roles: list[str],
    agent: str,
) -> Applied:
    """The first rule whose condition holds on this call, and the rules that failed.

    A rule that cannot be evaluated on the call (an optional argument it reads is absent,
    say) is skipped and reported; no later ``approve`` then applies, since the failed rule
    might have asked for more, and the first that matches ends the search with no rule
    applied: every reading of the rules ends there.
    """
    if not rules:
        return Applied()
    try:
        activation = _activation(
            normalise(arguments, input_schema),
            signals=signals,
            user_id=user_id,
            roles=roles,
            agent=agent,
        )
    except (ValueError, OverflowError):
        # A whole number past 64 bits (JSON allows any): CEL cannot hold it, so no rule
        # can be evaluated on this call, and every one fails closed.
        numbers = tuple(range(1, len(rules) + 1))
        problem = "the arguments hold a number too large for the rules to read"
        return Applied(errors=tuple(f"rule {n}: {problem}" for n in numbers), failed=numbers)
    errors: list[str] = []
    failed: list[int] = []
    for number, rule in enumerate(rules, start=1):
        try:
            value = _compiled(rule.when).evaluate(activation)
        except celpy.CELEvalError as exc:
            errors.append(f"rule {number}: {_eval_message(exc)}")
            failed.append(number)
            continue
        except (celparser.CELParseError, RecursionError):
            errors.append(f"rule {number}: not valid CEL")
            failed.append(number)
            continue
        except _PYTHON_ERRORS:
            # cel-python lets some errors through as Python's own: a macro over a value that
            # is not a list (``args.to.exists(...)`` on a null that the schema allows).
            errors.append(f"rule {number}: the condition could not be evaluated on this call")
            failed.append(number)
            continue
        if not isinstance(value, bool | celtypes.BoolType):
            # Checked when saved on sample calls, but a live value may differ (an argument
            # typed "a boolean or a string"): not false, so it fails closed.
            errors.append(f"rule {number}: the condition gave a value, not true or false")
            failed.append(number)
            continue
        if value is True or bool(value):
            if rule.then == APPROVE and errors:
                # Had a failed rule held, it decided; else this one approves. No later rule
                # can decide either way, so none applies (a refusal further down refused a
                # call that no reading of the rules refuses): the call asks what the failed
                # rules would have asked, and what its tool asks.
                return Applied(errors=tuple(errors), failed=tuple(failed))
            return Applied(number=number, rule=rule, errors=tuple(errors), failed=tuple(failed))
    return Applied(errors=tuple(errors), failed=tuple(failed))


def normalise(arguments: Any, schema: Any, root: Any = None) -> Any:
    """JSON numbers as CEL types them: an argument the schema calls a ``number`` is a double
    even when written ``4``, so ``args.price > 3.5`` compares like with like, and one it
    calls an ``integer`` is an int even when written ``4.0`` or ``4e0``. So too where
    the schema also allows a null (``"type": ["number", "null"]``, or the ``anyOf`` of a
    number and a null an optional field is written as), or names the number's schema by a
    ``$ref`` (a nested model, as an MCP server's schema does): the check on saving reads
    such an argument as a number, and ``args.price == 0.0`` failed on every call that sent
    ``0``."""
    root = schema if root is None else root
    schema = _referred(schema, root)
    if not isinstance(schema, Mapping):
        return arguments
    branches = [schema, *(_referred(b, root) for b in _branches(schema))]
    branches = [b for b in branches if isinstance(b, Mapping)]
    if isinstance(arguments, int) and not isinstance(arguments, bool):
        kinds = {k for branch in branches for k in _types(branch)}
        return float(arguments) if "number" in kinds and "integer" not in kinds else arguments
    if isinstance(arguments, float) and arguments.is_integer() and abs(arguments) < 2**63:
        # JSON Schema takes 1.0 and 1e0 for the integer 1, and so validates the call; read as
        # a double, ``args.account_id in [1, 2]`` compared a double with ints, an error that
        # skipped the rule: a refusal dodged by writing the number another way.
        kinds = {k for branch in branches for k in _types(branch)}
        return int(arguments) if "integer" in kinds and "number" not in kinds else arguments
    if isinstance(arguments, dict):
        properties: Mapping[str, Any] = next(
            (b["properties"] for b in branches if isinstance(b.get("properties"), Mapping)), {}
        )
        return {
            k: normalise(v, properties[k] if k in properties else _map_value(branches, k), root)
            for k, v in arguments.items()
        }
    if isinstance(arguments, list):
        items = next((b["items"] for b in branches if isinstance(b.get("items"), Mapping)), None)
        return [normalise(v, items, root) for v in arguments]
    return arguments


def _map_value(branches: list[Mapping[str, Any]], key: str) -> Any:
    """The schema of a member that ``properties`` do not name: the value of a map whose keys
    are data (``args.limits["daily"]``, which the check on saving lets a rule read), typed by
    a ``patternProperties`` pattern that takes its key, or else by ``additionalProperties``.
    Read without it, ``args.limits["daily"] > 100.0`` compared an int with a double on every
    call that sent ``500``: an error that skipped the rule, a refusal dodged."""
    for branch in branches:
        patterns = branch.get("patternProperties")
        for pattern, value in patterns.items() if isinstance(patterns, Mapping) else ():
            if pattern_takes(pattern, key):
                return value
    return next(
        (
            b["additionalProperties"]
            for b in branches
            if isinstance(b.get("additionalProperties"), Mapping)
        ),
        None,
    )


def _referred(schema: Any, root: Any) -> Any:
    """The schema a local ``$ref`` (``#/$defs/Money``) names, followed a few steps (a
    reference to a reference), or ``schema`` itself when it holds none."""
    for _ in range(8):
        ref = schema.get("$ref") if isinstance(schema, Mapping) else None
        if not (isinstance(ref, str) and (ref == "#" or ref.startswith("#/"))):
            return schema
        target: Any = root
        for key in ref[2:].split("/") if ref != "#" else []:
            key = key.replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, Mapping) else None
        schema = target
    return schema


def _branches(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The choices a schema gives (``anyOf``, ``oneOf``), and the parts it is made of
    (``allOf``), one level down."""
    return [
        branch
        for keyword in ("anyOf", "oneOf", "allOf")
        if isinstance(schema.get(keyword), list)
        for branch in schema[keyword]
        if isinstance(branch, Mapping)
    ]


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    return {kind} if isinstance(kind, str) else set()


def _activation(
    arguments: Any, *, signals: list[str], user_id: str, roles: list[str], agent: str
) -> dict[str, Any]:
    return {
        "args": celpy.json_to_cel(arguments),
        "signals": celpy.json_to_cel(list(signals)),
        "user": celpy.json_to_cel({"id": user_id, "roles": list(roles)}),
        "agent": celtypes.StringType(agent),
    }


# What cel-python's evaluator raises as Python's own errors rather than ``CELEvalError``
# (a macro over a number or a null: TypeError, "'IntType' object is not iterable").
_PYTHON_ERRORS = (TypeError, ValueError, ArithmeticError, AttributeError, KeyError, IndexError)


def _without_quoting(combine: Any) -> Any:
    """cel-python's ``&&`` and ``||``, which ``all`` and ``exists`` fold a list with: two
    errors made a new one whose message quotes both, so over items that each fail (an
    optional member absent, or a type the schema leaves open) it doubled per item (22 items:
    1 s and 300 MB; 30 items: the worker's memory), as over a chain of ``&&`` that each fail
    (24 terms: 2 s). Either error says as much."""

    def combined(x: Any, y: Any) -> Any:
        if not isinstance(x, celtypes.BoolType) and not isinstance(y, celtypes.BoolType):
            if isinstance(x, Exception) or isinstance(y, Exception):
                return x if isinstance(x, Exception) else y
            raise TypeError("no such overload")
        return combine(x, y)

    return combined


# The macros look these up on the module as they run; the operators, in this table.
celtypes.logical_and = _without_quoting(celtypes.logical_and)
celtypes.logical_or = _without_quoting(celtypes.logical_or)
celpy.evaluation.base_functions["_&&_"] = celtypes.logical_and
celpy.evaluation.base_functions["_||_"] = celtypes.logical_or


class _WrongKind(TypeError):
    """What CEL has no overload for and cel-python answered all the same, as Python would.
    Raised as a ``TypeError``, which cel-python makes the rule's evaluation error, so the rule
    fails closed. Its first argument is what ``_eval_message`` says: kinds of values, never
    a value."""


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__.removesuffix("Type").lower()


def _a_kind(value: Any) -> str:
    kind = _kind(value)
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _bool_and_number(a: Any, b: Any, *, within: bool = False) -> tuple[Any, Any] | None:
    """A boolean and a number that meet, as ``a`` and ``b``, or (``within``) as the items at
    the same place of two lists or the values at the same key of two maps, as equality
    compares them; ``None`` if none do."""
    if within and isinstance(a, celtypes.ListType) and isinstance(b, celtypes.ListType):
        if len(a) == len(b):
            for x, y in zip(a, b, strict=True):
                if (pair := _bool_and_number(x, y, within=True)) is not None:
                    return pair
        return None
    if within and isinstance(a, celtypes.MapType) and isinstance(b, celtypes.MapType):
        for key in a.keys() & b.keys():
            if (pair := _bool_and_number(a[key], b[key], within=True)) is not None:
                return pair
        return None
    if isinstance(a, celtypes.BoolType) != isinstance(b, celtypes.BoolType) and any(
        isinstance(v, int | float) and not isinstance(v, celtypes.BoolType) for v in (a, b)
    ):
        return a, b
    return None


def _different_types(pair: tuple[Any, Any]) -> _WrongKind:
    kinds = " and ".join(sorted({_kind(pair[0]), _kind(pair[1])}))
    return _WrongKind(f"values of different types are compared ({kinds})")


def _typed_as_cel(operation: Any, *, within: bool = False) -> Any:
    """An operator that gives no answer where a boolean meets a number: cel-python's
    ``BoolType`` is a Python int, so ``true <= 5000``, ``true == 1`` and ``true + 1`` held
    or counted, where CEL has no such overload. A rule ``args.copies <= 5`` then approved a
    call sending ``true`` (a schema that allows "a number or true"), which CEL would not.
    ``within``: equality, which compares lists item by item and maps value by value with
    Python's ``==`` (``[true] == [1]`` held)."""

    def typed(a: Any, b: Any) -> Any:
        # Values of one plain type (most comparisons) cannot be a boolean and a number: that
        # test first, as every operator of every rule of every call passes here.
        mixed = type(a) is not type(b) or (
            within and isinstance(a, celtypes.ListType | celtypes.MapType)
        )
        if mixed and (pair := _bool_and_number(a, b, within=within)) is not None:
            raise _different_types(pair)
        return operation(a, b)

    return typed


def _in_as_cel(item: Any, container: Any) -> Any:
    """``in`` over a list or a map only: over a text cel-python looked for one character, so
    ``"ceo@rival.com" in args.to`` was false when ``to`` was that very address (a schema
    that allows an address or a list of them): a refusal skipped. Each item (or key) is
    compared as ``==`` compares it: ``1 in [true]`` held, as Python's ``1 == True`` does."""
    if isinstance(container, celtypes.StringType | celtypes.BytesType):
        raise _WrongKind(f"in looks through a list or a map, not {_a_kind(container)}")
    if isinstance(container, celtypes.ListType | celtypes.MapType) and not isinstance(
        item, celtypes.StringType | celtypes.BytesType
    ):
        for held in container:
            if (pair := _bool_and_number(item, held, within=True)) is not None:
                raise _different_types(pair)
    return _IN(item, container)


def _contains_as_cel(text: Any, part: Any) -> Any:
    """``contains`` of a text in a text only: on a list cel-python looked for an item equal
    to it, so ``args.to.contains("@rival.com")`` was false for ``["ceo@rival.com"]``."""
    if not any(isinstance(v, Exception) for v in (text, part)) and not all(
        isinstance(v, celtypes.StringType) for v in (text, part)
    ):
        raise _WrongKind(
            f"contains() reads a string in a string, not {_a_kind(part)} in {_a_kind(text)}"
        )
    return _CONTAINS(text, part)


def _index_as_cel(container: Any, index: Any) -> Any:
    """An index into a list or a map only: cel-python gave a text's character."""
    if isinstance(container, celtypes.StringType | celtypes.BytesType):
        raise _WrongKind(f"an index reads a list or a map, not {_a_kind(container)}")
    return _INDEX(container, index)


def _size_as_cel(value: Any) -> Any:
    """The size of a text, a list or a map only: cel-python gave a null's as 0, so a rule
    ``size(args.to) <= 1`` approved a call sending ``"to": null`` (a nullable list, where
    the tool may read null as its default recipients)."""
    sized = celtypes.StringType | celtypes.BytesType | celtypes.ListType | celtypes.MapType
    if not isinstance(value, sized | Exception):
        raise _WrongKind(f"size() reads a string, a list or a map, not {_a_kind(value)}")
    return _SIZE(value)


# re2 writes the pattern it cannot read to stderr, as the process's log: a pattern taken from
# the call (a rule saved before ``_pattern_problems``) put an argument, maybe a secret, there.
_QUIET = re2.Options()
_QUIET.log_errors = False


def _matches_quietly(text: Any, pattern: Any) -> Any:
    """cel-python's ``matches()``, without re2's log of an invalid pattern."""
    try:
        found = re2.search(pattern, text, _QUIET)
    except re2.error as exc:
        return celpy.CELEvalError("match error", exc.__class__, ())
    return celtypes.BoolType(found is not None)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower_ascii(text: Any) -> Any:
    """CEL's ``lowerAscii()`` (its strings extension), which cel-python lacks: without it a
    rule could compare texts only as written, and a refusal of ``@rival.com`` let
    ``ceo@RIVAL.com`` through (a mail domain is the same in any case)."""
    if isinstance(text, Exception):
        return text
    if not isinstance(text, celtypes.StringType):
        raise _WrongKind(f"lowerAscii() reads a string, not {_a_kind(text)}")
    return celtypes.StringType(str(text).translate(_ASCII_LOWER))


class _Conversion:
    """CEL's ``int()``, ``uint()`` or ``double()``, reading a text as CEL does: a decimal
    number, nothing around it. cel-python read it as Python does, so ``" 3 "``, ``"0_3"``,
    ``"0x10"``, ``"nan"`` and ``"inf"`` were numbers: ``!(double(args.x) > 5.0)`` held on
    ``"nan"`` (no comparison holds for it), and a refusal written so was dodged by sending
    it. A text CEL refuses (or a double past its range) is an error, which fails the rule
    closed. Any other value converts as cel-python converts it. Equal to the type it stands
    for, as the name also reads that type: ``type(args.n) == int``."""

    def __init__(self, name: str, kind: type, text: str) -> None:
        self.name, self.kind = name, kind
        self.text = re.compile(text, re.ASCII)

    def __call__(self, source: Any) -> Any:
        if isinstance(source, celtypes.BytesType):
            # Python reads bytes as it reads a text; CEL has no such conversion.
            raise _WrongKind(f"{self.name}() reads no bytes")
        if not isinstance(source, celtypes.StringType):
            return self.kind(source)
        if not self.text.fullmatch(source):
            raise ValueError(f"a text that is no {self.name} for CEL")
        value = self.kind(source)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("a double out of range")
        return value

    def __eq__(self, other: object) -> bool:
        return other is self or other is self.kind

    def __hash__(self) -> int:
        return hash(self.kind)


_IN = celpy.evaluation.base_functions["_in_"]
_SIZE = celpy.evaluation.base_functions["size"]
_CONTAINS = celpy.evaluation.base_functions["contains"]
_INDEX = celpy.evaluation.base_functions["_[_]"]
for _operator in ("_<_", "_<=_", "_>_", "_>=_", "_==_", "_!=_", "_+_", "_-_", "_*_", "_/_", "_%_"):
    celpy.evaluation.base_functions[_operator] = _typed_as_cel(
        celpy.evaluation.base_functions[_operator], within=_operator in ("_==_", "_!=_")
    )
celpy.evaluation.base_functions["_in_"] = _in_as_cel
celpy.evaluation.base_functions["contains"] = _contains_as_cel
celpy.evaluation.base_functions["_[_]"] = _index_as_cel
celpy.evaluation.base_functions["size"] = _size_as_cel
celpy.evaluation.base_functions["matches"] = _matches_quietly
celpy.evaluation.base_functions["lowerAscii"] = _lower_ascii
celpy.evaluation.base_functions["int"] = _Conversion("int", celtypes.IntType, r"[+-]?[0-9]+")
celpy.evaluation.base_functions["uint"] = _Conversion("uint", celtypes.UintType, r"[0-9]+")
celpy.evaluation.base_functions["double"] = _Conversion(
    "double", celtypes.DoubleType, r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
)


@cache
def _environment() -> celpy.Environment:
    return celpy.Environment()


@lru_cache(maxsize=2048)
def _compiled(when: str) -> Any:
    environment = _environment()
    return environment.program(environment.compile(when))


_CEL_TYPE = re.compile(r"\b([A-Z][a-z]+)Type\(")


_UNDECLARED = re.compile(r"undeclared reference to '([A-Za-z_][A-Za-z0-9_.]*)'")


def _eval_message(exc: celpy.CELEvalError) -> str:
    """What went wrong, in words an admin can act on, and never cel-python's own text: it
    may quote the whole call (every argument, secret ones included), and this message is
    stored on the call and shown to reviewers. Only names from the rule itself are named."""
    if len(exc.args) > 2 and exc.args[1] is _WrongKind and exc.args[2]:
        return str(exc.args[2][0])  # written here, of kinds of values only
    text = str(exc.args[0] if exc.args else exc)
    detail = " ".join(str(d) for d in (exc.args[2] or ())) if len(exc.args) > 2 else ""
    if "no matching overload" in text or "no such overload" in text:
        # cel-python says "no such overload: IntType(1) IntType != StringType('5') ...".
        kinds = list(dict.fromkeys(k.lower() for k in _CEL_TYPE.findall(detail)))
        named = f" ({' and '.join(sorted(kinds))})" if kinds else ""
        return f"values of different types are compared{named}"
    if text.startswith("no such member"):
        # "no such member in mapping: 'x'": x is a name written in the rule (args.x).
        member = re.search(r"'([A-Za-z_][A-Za-z0-9_]*)'", text)
        return f"no such member {member.group(1)!r}" if member else "no such member"
    if text.startswith("no such key"):
        return "no such key (a value the call does not have)"
    if undeclared := _UNDECLARED.search(text):
        return f"unknown function or name {undeclared.group(1)!r}"
    if "divide by zero" in text:
        return "division by zero"
    return "the condition could not be evaluated on this call"


# --- The parse tree -----------------------------------------------------------------------


def _subtrees(tree: Tree, name: str) -> Iterator[Tree]:
    return (t for t in tree.iter_subtrees() if t.data == name)


def _identifiers(tree: Tree) -> set[str]:
    return {str(t.children[0]) for t in _subtrees(tree, "ident")}


# What a condition may call: CEL's standard functions as cel-python has them, its macros,
# and has().
FUNCTIONS = (
    frozenset(name for name in celpy.evaluation.base_functions if name[:1].isalpha())
    | MACROS
    | {"has"}
)


def _depth(tree: Tree) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in node.children if isinstance(c, Tree))
    return deepest


def _macros(tree: Tree) -> Iterator[Tree]:
    return (t for t in _subtrees(tree, "member_dot_arg") if str(t.children[1]) in MACROS)


@dataclass(frozen=True)
class _Comprehension:
    """A macro as written, ``args.to.exists(a, a.endsWith("x"))``: its name, what it runs
    over, its arguments, the name it gives each item ("" when its first argument is none)
    and the expressions it evaluates per item."""

    method: str
    over: Any
    arguments: Tree
    item: str
    bodies: list[Tree]


def _comprehensions(tree: Tree) -> Iterator[_Comprehension]:
    for node in _macros(tree):
        arguments = node.children[2] if len(node.children) > 2 else None
        if not isinstance(arguments, Tree):
            continue
        first = _plain(arguments.children[0]) if arguments.children else None
        yield _Comprehension(
            method=str(node.children[1]),
            over=node.children[0],
            arguments=arguments,
            item=first[1] if first and first[0] == "ident" else "",
            bodies=[body for body in arguments.children[1:] if isinstance(body, Tree)],
        )


def _nested_macros(tree: Tree) -> bool:
    """Whether a comprehension (``x.all(i, ...)``) holds another in its arguments."""
    return any(next(_macros(c.arguments), None) is not None for c in _comprehensions(tree))


def _looks_through_arguments_per_item(tree: Tree) -> bool:
    """Whether a comprehension's condition looks each item up in the arguments with ``in``
    (``args.to.exists(a, a in args.cc)``); a literal list (``a in ["x", "y"]``) is fine."""
    for comprehension in _comprehensions(tree):
        for body in comprehension.bodies:
            for relation in _subtrees(body, "relation"):
                first = relation.children[0] if relation.children else None
                if not (isinstance(first, Tree) and first.data == "relation_in"):
                    continue
                container = _unwrapped(relation.children[-1])
                if (
                    isinstance(container, Tree)
                    and container.data not in ("list_lit", "map_lit")
                    and "args" in _identifiers(container)
                ):
                    return True
    return False


_COMPARISONS = frozenset(
    {"relation_eq", "relation_ne", "relation_lt", "relation_le", "relation_gt", "relation_ge"}
)
_ITEM_METHODS = frozenset({"startsWith", "endsWith", "contains"})  # cost bounded by the item


def _reads_arguments_whole_per_item(tree: Tree, schema: Mapping[str, Any]) -> bool:
    """Whether a comprehension's condition uses an argument at a cost of its size per item:
    any use but reading a number or boolean, comparing it with the item (``a == args.to``),
    looking for it in the item (``a.endsWith(args.domain)``), or giving it to has() or size()."""
    return any(
        _costly_read(body, c.item, schema) for c in _comprehensions(tree) for body in c.bodies
    )


def _costly_read(node: Any, item: str, schema: Mapping[str, Any]) -> bool:
    if not isinstance(node, Tree) or "args" not in _identifiers(node):
        return False
    chain = _chain(_unwrapped(node))
    if chain and chain[0] == "args":
        return not _is_scalar(schema, chain[1:])
    if node.data == "ident":
        return True  # args itself
    children = node.children
    first = children[0] if children else None
    if node.data == "relation" and isinstance(first, Tree) and first.data in _COMPARISONS:
        sides = (first.children[0], children[-1])
        return any(
            not (_is_argument(side) and item in _identifiers(other))
            and _costly_read(side, item, schema)
            for side, other in (sides, sides[::-1])
        )
    if (
        node.data == "ident_arg"
        and str(first) in ("has", "size")
        and len(children) > 1
        and all(_is_argument(e) for e in children[1].children)
    ):
        return False
    if node.data == "member_dot_arg" and isinstance(children[1], Token):
        method, receiver = str(children[1]), children[0]
        given = children[2].children if len(children) > 2 else []
        if method == "size" and _is_argument(receiver) and not given:
            return False
        named = _identifiers(receiver)
        if (
            method in _ITEM_METHODS
            and item in named
            and "args" not in named
            and all(_is_argument(e) for e in given)
        ):
            return False
    return any(_costly_read(child, item, schema) for child in children)


def _is_argument(node: Any) -> bool:
    chain = _chain(_unwrapped(node))
    return bool(chain and chain[0] == "args")


def _declared(schema: Any, path: Sequence[str]) -> Any:
    """The schema ``properties`` give ``args.<path>``, None where they give none (through
    no list, choice or reference: the checks that read it look only at plain members)."""
    for part in path:
        properties = schema.get("properties") if isinstance(schema, Mapping) else None
        schema = properties.get(part) if isinstance(properties, Mapping) else None
    return schema


def _is_scalar(schema: Any, path: Sequence[str]) -> bool:
    """Whether the schema types ``args.<path>`` as a number or boolean, whatever is sent."""
    schema = _declared(schema, path)
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    kinds = set(kind) if isinstance(kind, list) else {kind}
    return bool(kinds - {"null"}) and kinds <= {"integer", "number", "boolean", "null"}


def _unnamed_macro_items(tree: Tree) -> list[str]:
    """The macros whose first argument is not a name (``args.items.all(1, true)``)."""
    return [
        c.method for c in _comprehensions(tree) if not c.item and len(c.arguments.children) >= 2
    ]


def _functions(tree: Tree) -> set[str]:
    """The functions a condition calls: ``size(x)``, ``x.startsWith(y)``."""
    called = {str(t.children[0]) for t in _subtrees(tree, "ident_arg")}
    called |= {str(t.children[1]) for t in _subtrees(tree, "member_dot_arg")}
    return called


def _macro_variables(tree: Tree) -> set[str]:
    """Names bound by macros: ``i`` in ``args.items.all(i, i.qty < 5)``."""
    return {c.item for c in _comprehensions(tree) if c.item}


def _chain(node: Any, *, keys: bool = False) -> tuple[str, ...] | None:
    """``args.changes.email`` as ("args", "changes", "email"); None for anything else.

    With ``keys``, indexes too: a key written as a string names a member as a name does
    (``args.changes["email"]`` is ``args.changes.email``), and a whole-number index
    (``args.lines[0].sku``) reads an item of a list, which the schema check walks through.
    A key computed as the call runs (``args[args.field]``) cannot be read when saved: None."""
    if isinstance(node, Tree) and node.data == "member" and len(node.children) == 1:
        return _chain(node.children[0], keys=keys)
    if isinstance(node, Tree) and node.data == "member_dot":
        inner = _chain(node.children[0], keys=keys)
        return None if inner is None else (*inner, str(node.children[1]))
    if keys and isinstance(node, Tree) and node.data == "member_index" and len(node.children) == 2:
        inner, key = _chain(node.children[0], keys=keys), _literal_token(node.children[1])
        if inner is None or key is None:
            return None
        if key.type in ("STRING_LIT", "MLSTRING_LIT"):
            return (*inner, str(celstr(key)))
        return inner if key.type in ("INT_LIT", "UINT_LIT") else None
    if isinstance(node, Tree) and node.data == "primary":
        plain = _plain(node)
        return (plain[1],) if plain and plain[0] == "ident" else None
    return None


def arguments_read(when: str) -> list[str]:
    """The argument paths a condition reads (``args.a.b`` and ``args["a"]["b"]`` as "a.b");
    none if it does not compile (``condition_problems`` says why)."""
    try:
        return [field_path(path) for path in _argument_paths(_environment().compile(when))]
    except (celparser.CELParseError, RecursionError):
        return []


def _argument_paths(tree: Tree) -> list[tuple[str, ...]]:
    """Every argument path the condition reads, ``args.a.b`` or ``args["a"].b`` as ("a", "b")
    (the longest; prefixes are implied)."""
    nodes = [*_subtrees(tree, "member_dot"), *_subtrees(tree, "member_index")]
    chains = (_chain(node, keys=True) for node in nodes)
    paths = {p[1:] for p in chains if p and p[0] == "args" and len(p) > 1}
    return sorted(p for p in paths if not any(len(o) > len(p) and o[: len(p)] == p for o in paths))


def _keys_tested(tree: Tree, schema: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The argument paths ``"tier" in args.customer`` asks for, as ``has(args.customer.tier)``
    does: where the schema makes the argument an object (in a list, ``in`` looks for an item,
    which may be any text)."""
    found = []
    for node in _subtrees(tree, "relation"):
        first = node.children[0] if node.children else None
        if not (isinstance(first, Tree) and first.data == "relation_in") or len(node.children) < 2:
            continue
        key = _literal_token(first.children[0]) if first.children else None
        right = _unwrapped(node.children[1])
        # ``args`` itself, unwrapped to its name, or a member of it.
        container = ("args",) if _plain(right) == ("ident", "args") else _chain(right, keys=True)
        if (
            key is not None
            and key.type in ("STRING_LIT", "MLSTRING_LIT")
            and container
            and container[0] == "args"
            and _is_object(schema, container[1:])
        ):
            found.append((*container[1:], str(celstr(key))))
    return found


def _has_through_a_list(tree: Tree, schema: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The lists that ``has()`` asks a member of, as if of an item: ``has(args.lines.sku)``,
    where the schema makes ``lines`` a list. The check of argument paths walks a list through
    to its items (``args.lines[0].sku``), and the sample calls gave false, no error: such a
    condition was accepted, and never held on any call."""
    found = []
    for node in _subtrees(tree, "ident_arg"):
        given = node.children[1] if len(node.children) > 1 else None
        if str(node.children[0]) != "has" or not isinstance(given, Tree) or not given.children:
            continue
        steps = _steps(_unwrapped(given.children[0]))
        if not steps or steps[0] != "args":
            continue
        here: Any = schema
        for number, step in enumerate(steps[1:], start=1):
            here = _referred(here, schema)
            if not isinstance(here, Mapping):
                break
            kind = here.get("type")
            kinds = set(kind) if isinstance(kind, list) else {kind}
            if step is None:
                here = here.get("items")
            elif "array" in kinds and "object" not in kinds:
                found.append(tuple(str(s) for s in steps[1:number]))
                break
            else:
                properties = here.get("properties")
                here = properties.get(step) if isinstance(properties, Mapping) else None
    return list(dict.fromkeys(found))


def _steps(node: Any) -> list[str | None] | None:
    """``args.lines[0].sku`` as ["args", "lines", None, "sku"] (None: an item of a list), a
    key written as a string as the name it is; None for anything else."""
    if isinstance(node, Tree) and node.data == "member" and len(node.children) == 1:
        return _steps(node.children[0])
    if isinstance(node, Tree) and node.data == "member_dot":
        inner = _steps(node.children[0])
        return None if inner is None else [*inner, str(node.children[1])]
    if isinstance(node, Tree) and node.data == "member_index" and len(node.children) == 2:
        inner, key = _steps(node.children[0]), _literal_token(node.children[1])
        if inner is None or key is None:
            return None
        if key.type in ("STRING_LIT", "MLSTRING_LIT"):
            return [*inner, str(celstr(key))]
        return [*inner, None] if key.type in ("INT_LIT", "UINT_LIT") else None
    if isinstance(node, Tree) and node.data == "primary":
        plain = _plain(node)
        return [plain[1]] if plain and plain[0] == "ident" else None
    return None


def _user_fields(tree: Tree) -> list[str]:
    """The members of ``user`` a condition reads, ``user.role`` or ``user["email"]``, given to
    ``has()`` or asked with ``"email" in user``. One it does not hold (a misspelt
    ``user.roles``) was accepted when saved, the sample calls' error taken for an optional
    argument left out, and failed on every call: the rule never decided, no later approval
    applied, and a refusal refused every read."""
    nodes = [*_subtrees(tree, "member_dot"), *_subtrees(tree, "member_index")]
    chains = (_chain(node, keys=True) for node in nodes)
    read = [chain[1] for chain in chains if chain and chain[0] == "user" and len(chain) > 1]
    for node in _subtrees(tree, "relation"):
        first = node.children[0] if node.children else None
        if not (isinstance(first, Tree) and first.data == "relation_in") or len(node.children) < 2:
            continue
        key = _literal_token(first.children[0]) if first.children else None
        if (
            key is not None
            and key.type in ("STRING_LIT", "MLSTRING_LIT")
            and _plain(_unwrapped(node.children[1])) == ("ident", "user")
        ):
            read.append(str(celstr(key)))
    return list(dict.fromkeys(read))


def _is_object(schema: Any, path: Sequence[str]) -> bool:
    """Whether the schema plainly types ``args.<path>`` as an object (not a list, nor a choice
    it leaves to branches or a reference)."""
    schema = _declared(schema, path)
    if not isinstance(schema, Mapping):
        return False
    kind = schema.get("type")
    if kind is None:
        return "properties" in schema and not {"items", "anyOf", "oneOf", "$ref"} & set(schema)
    kinds = set(kind) if isinstance(kind, list) else {kind}
    return "object" in kinds and "array" not in kinds


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _written(path: tuple[str, ...]) -> str:
    """An argument path as a condition would write it: ``args.customer["first-name"]``."""
    return "args" + "".join(
        f".{part}" if _NAME.fullmatch(part) else f"[{json.dumps(part, ensure_ascii=False)}]"
        for part in path
    )


def _literal_token(node: Any) -> Token | None:
    """The token of a subtree that is only a literal (``"tier"``, ``0``), through its wrapping
    rules."""
    while isinstance(node, Tree) and len(node.children) == 1 and node.data != "literal":
        node = node.children[0]
    if isinstance(node, Tree) and node.data == "literal" and node.children:
        token = node.children[0]
        return token if isinstance(token, Token) else None
    return None


def _plain(node: Any) -> tuple[str, str] | None:
    """A subtree that is only an identifier or a literal, through its wrapping rules."""
    while (
        isinstance(node, Tree) and len(node.children) == 1 and node.data not in ("ident", "literal")
    ):
        node = node.children[0]
    if isinstance(node, Tree) and node.data in ("ident", "literal") and node.children:
        return node.data, str(node.children[0])
    return None


def _signal_literals(tree: Tree) -> list[str]:
    """The string literals a condition tests the signals against: ``"x" in signals``, and
    in a macro over them, ``signals.exists(s, s == "x")`` or ``s in ["x", "y"]``, and
    ``signals[0] == "x"``: a misspelt one would never match."""
    codes = []
    # The parse tree nests ``a in b`` as relation(relation_in(a), b).
    for node in _subtrees(tree, "relation"):
        first = node.children[0] if node.children else None
        if not (isinstance(first, Tree) and first.data == "relation_in") or len(node.children) < 2:
            continue
        left, right = _plain(first.children[0]), _plain(node.children[1])
        if (right == ("ident", "signals") or _filters_signals(node.children[1])) and (
            left and left[0] == "literal"
        ):
            codes += _string_literals(first.children[0])
    indexed = [n for n in _subtrees(tree, "member_index") if _chain(n.children[0]) == ("signals",)]
    if indexed:
        codes += _compared_with(tree, lambda n: any(n is i for i in indexed))
    for c in _comprehensions(tree):
        if c.item and any(
            _is_in_signals(r, c.item) for body in c.bodies for r in _subtrees(body, "relation")
        ):
            # Any of a list of codes: ``["a", "b"].exists(x, x in signals)``.
            codes += _string_literals(c.over)
        if _chain(c.over) == ("signals",) and c.item:
            item = ("ident", c.item)
            for body in c.bodies:
                codes += _compared_with(body, lambda n, item=item: _plain(n) == item)
    return codes


def _is_in_signals(relation: Tree, item: str) -> bool:
    """Whether ``relation`` is ``item in signals``."""
    first = relation.children[0] if relation.children else None
    return (
        isinstance(first, Tree)
        and first.data == "relation_in"
        and len(relation.children) >= 2
        and bool(first.children)
        and _plain(first.children[0]) == ("ident", item)
        and _plain(relation.children[1]) == ("ident", "signals")
    )


def _filters_signals(node: Any) -> bool:
    """Whether ``node`` is some of the signals: ``signals.filter(s, ...)``."""
    node = _unwrapped(node)
    return (
        isinstance(node, Tree)
        and node.data == "member_dot_arg"
        and str(node.children[1]) == "filter"
        and _chain(node.children[0]) == ("signals",)
    )


def _compared_with(tree: Tree, is_signal: Any) -> list[str]:
    """The string literals ``==``, ``!=`` or ``in`` compare with a node ``is_signal`` picks."""
    codes = []
    for node in _subtrees(tree, "relation"):
        first = node.children[0] if node.children else None
        if not isinstance(first, Tree) or len(node.children) < 2 or not first.children:
            continue
        left, right = _unwrapped(first.children[0]), _unwrapped(node.children[1])
        if first.data in ("relation_eq", "relation_ne"):
            if is_signal(left):
                codes += _string_literals(right)
            elif is_signal(right):
                codes += _string_literals(left)
        elif first.data == "relation_in" and is_signal(left):
            codes += _string_literals(right)
    return codes


def _unwrapped(node: Any) -> Any:
    """A subtree through its single-child wrapping rules (``relation`` to ``member_index``)."""
    while isinstance(node, Tree) and len(node.children) == 1 and isinstance(node.children[0], Tree):
        if node.data in ("member_index", "list_lit"):
            break
        node = node.children[0]
    return node


def _string_literals(node: Any) -> list[str]:
    """A plain string literal's text, or those of a list of them (``["a", "b"]``)."""
    plain = _plain(node)
    if plain and plain[0] == "literal":
        literal = plain[1]
        if len(literal) >= 2 and literal[0] == literal[-1] and literal[0] in "\"'":
            return [literal[1:-1]]
        return []
    node = _unwrapped(node)
    if isinstance(node, Tree) and node.data == "list_lit" and node.children:
        return [code for item in node.children[0].children for code in _string_literals(item)]
    return []


# --- Sample calls from a schema -----------------------------------------------------------


def _sample(schema: Any, *, low: bool, depth: int, root: Any, digits: bool = False) -> Any:
    """A call made from the schema: its smallest values or (not ``low``) its largest, every
    argument present; with ``digits``, a free text is a number written as one."""
    # A nested model named by a local $ref (``#/$defs/Money``) is sampled as what it names:
    # as a string, every rule that read into it was refused when saved.
    schema = _referred(schema, root)
    if not isinstance(schema, Mapping) or depth > 8:
        return ""
    if schema.get("enum"):
        return schema["enum"][0 if low else -1]
    for keyword in ("anyOf", "oneOf"):
        if schema.get(keyword):
            return _sample(schema[keyword][0], low=low, depth=depth + 1, root=root, digits=digits)
    kind = schema.get("type")
    if kind is None and "properties" not in schema and schema.get("allOf"):
        # ``allOf: [{"$ref": ...}]``, as a described nested model is often written.
        return _sample(schema["allOf"][0], low=low, depth=depth + 1, root=root, digits=digits)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        return {
            name: _sample(spec, low=low, depth=depth + 1, root=root, digits=digits)
            for name, spec in (schema.get("properties") or {}).items()
        }
    if kind == "array":
        return [
            _sample(schema.get("items") or {}, low=low, depth=depth + 1, root=root, digits=digits)
        ]
    if kind == "integer":
        return int(schema.get("minimum", 0) if low else schema.get("maximum", 1000))
    if kind == "number":
        return float(schema.get("minimum", 0) if low else schema.get("maximum", 1000))
    if kind == "boolean":
        return low
    if digits:
        # What ``timestamp()`` reads, where the schema says the text is a time.
        if schema.get("format") == "date-time":
            return "2026-01-01T00:00:00Z" if low else "2026-12-31T23:59:59Z"
        if schema.get("format") == "date":
            return "2026-01-01" if low else "2026-12-31"
        return "1" if low else "2"
    return "sample" if low else "another sample"
