"""Tools declared in code. Only handlers registered here can ever run.

@tool(name="send_email", description="...", input_schema={...}, risk=Risk.WRITE)
def send_email(ctx: ToolContext, arguments: dict) -> dict: ...

@send_email.lookup
def _(ctx: ToolContext) -> LookupResult: ...   # did the effect with ctx.idempotency_key happen?

@send_email.preview
def _(arguments: dict) -> str: ...              # what approving would do, for the reviewer

@update_customer.current_state
def _(arguments: dict) -> State: ...            # the record as it is now, before the change
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from audit.canonical import canonical_json, sha256_hex
from tools_registry.facts import Facts
from tools_registry.policy import Risk
from tools_registry.schemas import (
    ArgumentErrors,
    has_argument_path,
    schema_problems,
    validate_arguments,
)

JSON = dict[str, Any]


@dataclass(frozen=True)
class ToolContext:
    """What a handler knows about the call it runs."""

    call_id: UUID
    # Stable for the call: every attempt, retry and re-run passes the same key downstream.
    idempotency_key: str
    timeout: float
    attempt: int = 1
    agent_name: str = ""
    on_behalf_of: str = ""


class ToolFailed(Exception):
    """The handler knows the effect did not happen (the downstream refused the request).

    Any other exception leaves the outcome unknown, to be reconciled.

    ``unsent``: nothing reached the downstream (its credentials cannot be read, its URL
    cannot be requested). Such a failure of a re-run says nothing of an earlier attempt,
    which may have had its effect (``runner``).

    ``retry_after``: the seconds the downstream asked to be left alone (an upstream's 429 and
    its Retry-After): a read is not asked again sooner, and its agent is told.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "tool_failed",
        retryable: bool = False,
        unsent: bool = False,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.unsent = unsent
        self.retry_after = retry_after


@dataclass(frozen=True)
class LookupResult:
    """What the downstream says about an idempotency key: found (with the result) or not."""

    found: bool | None  # None: it cannot tell
    result: JSON | None = None

    @classmethod
    def found_with(cls, result: JSON) -> LookupResult:
        return cls(found=True, result=result)

    @classmethod
    def not_found(cls) -> LookupResult:
        return cls(found=False)

    @classmethod
    def cannot_tell(cls) -> LookupResult:
        return cls(found=None)


@dataclass(frozen=True)
class Change:
    """One field of what a call changes: its value now and after the call (``None`` after:
    the call does not change it, or erases it with the record)."""

    field: str
    now: Any
    after: Any = None
    changes: bool = False


@dataclass(frozen=True)
class State:
    """The part of the world a call would change, as it is now, read without changing it:
    the customer record before an update, the charge and what was already refunded before
    a refund, the record and what hangs off it before a delete. The reviewer sees it beside
    the proposal; what they saw is stored with their verdict."""

    title: str
    rows: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> JSON:
        return {
            "title": self.title,
            "rows": [
                {"field": r.field, "now": r.now, "after": r.after, "changes": r.changes}
                for r in self.rows
            ],
            "notes": list(self.notes),
        }


Handler = Callable[[ToolContext, JSON], JSON]
Lookup = Callable[[ToolContext], LookupResult]
Preview = Callable[[JSON], str]
CurrentState = Callable[[JSON], State]


@dataclass
class RegisteredTool:
    name: str
    description: str
    input_schema: JSON
    risk: str
    handler: Handler
    sensitive_fields: tuple[str, ...] = ()
    # True when the downstream refuses a second effect for the same key, which makes a
    # re-run after an unknown outcome safe.
    honours_idempotency_key: bool = False
    # True when the downstream answers a repeat of a key with the first attempt's outcome
    # (Stripe's semantics): sending the call again is how an unknown outcome is learned,
    # even without a lookup.
    rerun_reconciles: bool = False
    lookup_fn: Lookup | None = None
    preview_fn: Preview | None = None
    current_state_fn: CurrentState | None = None
    # Where the amount, recipient and target are in the arguments (inferred from the
    # schema when the tool does not say), and the fields reviewers never see even in part.
    facts: Facts | None = None
    secret_fields: tuple[str, ...] = ()
    # What the tool does to the world, beyond its risk class (MCP's tool annotations):
    # deletes or overwrites existing data; repeating it with the same arguments changes
    # nothing more; reaches systems outside the organisation's own.
    overwrites: bool = False
    idempotent: bool = False
    open_world: bool = True
    # The JSON Schema of a successful result, for clients that check it (read tools only).
    output_schema: JSON | None = None
    version: str = field(init=False)

    def __post_init__(self) -> None:
        self.version = tool_version(self.name, self.description, self.input_schema)

    def lookup(self, fn: Lookup) -> Lookup:
        """Decorator: how to ask the downstream whether the effect of a key happened."""
        self.lookup_fn = fn
        return fn

    def preview(self, fn: Preview) -> Preview:
        """Decorator: a sentence that tells the reviewer what approving would do."""
        self.preview_fn = fn
        return fn

    def current_state(self, fn: CurrentState) -> CurrentState:
        """Decorator: read, without changing anything, what the call would change."""
        self.current_state_fn = fn
        return fn

    def __call__(
        self, ctx: ToolContext, arguments: JSON, *, sensitive_fields: Iterable[str] = ()
    ) -> JSON:
        """Run the handler on valid arguments only; invalid ones never reach it.

        ``sensitive_fields`` adds the fields an admin marked sensitive in the tool's policy to
        those declared in code: the refusal's messages quote neither."""
        problems = validate_arguments(
            self.input_schema,
            arguments,
            sensitive_fields=(*self.sensitive_fields, *sensitive_fields),
        )
        if problems:
            raise InvalidArguments(problems)
        return self.handler(ctx, arguments)


class InvalidArguments(ToolFailed):
    """The arguments do not match the tool's schema; the handler was not called."""

    def __init__(self, problems: ArgumentErrors):
        super().__init__(problems.summary(), code="invalid_arguments", unsent=True)
        self.problems = problems


def tool_version(
    name: str, description: str, input_schema: JSON, *, runs: JSON | None = None
) -> str:
    """What an approval binds to besides the arguments. ``runs``: for a tool imported from
    an upstream, what a call of it does there (its risk, the HTTP operation): a re-sync that
    changes them is a new version, and calls approved before it are refused at the claim."""
    payload: JSON = {"name": name, "description": description, "input_schema": input_schema}
    if runs is not None:
        payload["runs"] = runs
    return sha256_hex(canonical_json(payload))[:16]


_registry: dict[str, RegisteredTool] = {}

# What the agent ecosystems accept as a tool name (OpenAI and Anthropic both use it).
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class UnknownTool(LookupError):
    pass


def tool(
    *,
    name: str,
    description: str,
    input_schema: JSON,
    risk: str,
    sensitive_fields: Iterable[str] = (),
    honours_idempotency_key: bool = False,
    lookup: Lookup | None = None,
    preview: Preview | None = None,
    facts: Facts | None = None,
    secret_fields: Iterable[str] = (),
    overwrites: bool | None = None,
    idempotent: bool | None = None,
    open_world: bool = True,
    output_schema: JSON | None = None,
) -> Callable[[Handler], RegisteredTool]:
    """Declare a tool and its handler. A name can be registered once.

    A malformed declaration (bad name, invalid JSON Schema, a sensitive field the schema
    does not declare) fails at import time, not on the first call. ``lookup`` and
    ``preview`` may be given here or attached with ``@spec.lookup`` / ``@spec.preview``.

    ``overwrites`` (the call deletes or overwrites existing data) defaults to true for
    destructive tools, which it must be, and false otherwise; ``idempotent`` (a repeat
    with the same arguments has no further effect) defaults to true for reads.
    ``output_schema`` describes a successful result; only reads may declare one, since a
    write's answer may be "pending approval" instead.
    """
    if risk not in Risk.values:
        raise ValueError(f"risk must be one of {Risk.values}, not {risk!r}")
    if not TOOL_NAME.fullmatch(name):  # ``$`` alone matches before a final line break
        raise ValueError(f"tool name {name!r} must match {TOOL_NAME.pattern}")
    if not description.strip():
        raise ValueError(f"tool {name!r} needs a description")
    problems = schema_problems(input_schema)
    if problems:
        raise ValueError(f"tool {name!r} has an invalid JSON Schema: {'; '.join(problems)}")
    if overwrites is False and risk == Risk.DESTRUCTIVE:
        raise ValueError(f"tool {name!r} is destructive: it overwrites by definition")
    if output_schema is not None:
        if risk != Risk.READ:
            raise ValueError(f"tool {name!r}: only read tools may declare an output schema")
        if problems := schema_problems(output_schema):
            raise ValueError(f"tool {name!r} has an invalid output schema: {'; '.join(problems)}")
    sensitive = tuple(sensitive_fields)
    secret = tuple(secret_fields)
    unknown = [path for path in (*sensitive, *secret) if not has_argument_path(input_schema, path)]
    if unknown:
        raise ValueError(f"tool {name!r}: masked fields {unknown} are not in its schema")
    for path in (facts.amount, facts.currency, facts.recipient, facts.target) if facts else ():
        if path and not has_argument_path(input_schema, path):
            raise ValueError(f"tool {name!r}: fact {path!r} is not in its schema")

    def register(handler: Handler) -> RegisteredTool:
        if name in _registry and _registry[name].handler is not handler:
            raise ValueError(f"tool {name!r} is already registered")
        registered = RegisteredTool(
            name=name,
            description=description,
            input_schema=input_schema,
            risk=risk,
            handler=handler,
            sensitive_fields=sensitive,
            honours_idempotency_key=honours_idempotency_key,
            lookup_fn=lookup,
            preview_fn=preview,
            facts=facts,
            secret_fields=secret,
            overwrites=risk == Risk.DESTRUCTIVE if overwrites is None else overwrites,
            idempotent=risk == Risk.READ if idempotent is None else idempotent,
            open_world=open_world,
            output_schema=output_schema,
        )
        _registry[name] = registered
        return registered

    return register


def get(name: str) -> RegisteredTool:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownTool(name) from None


def registered() -> list[RegisteredTool]:
    return sorted(_registry.values(), key=lambda t: t.name)


def unregister(name: str) -> RegisteredTool | None:
    """Remove a tool from the in-code registry and return it (tests that simulate deleted
    code use it, then ``restore`` it)."""
    return _registry.pop(name, None)


def restore(spec: RegisteredTool) -> None:
    """Put back a tool that ``unregister`` removed."""
    _registry[spec.name] = spec
