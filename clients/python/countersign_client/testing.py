"""Test your agent loop without an LLM: mock the model, keep everything else real.

``ScriptedModel`` plays the model's part: it emits OpenAI-shaped assistant messages
(Chat Completions ``tool_calls``) in the order you script them, and a scripted turn may be
a function of the conversation so far, to assert what your loop fed back (a reviewer's
reason, an argument error's suggestion) and react to it. ``run_agent`` is a minimal agent
loop: it asks the model, sends each tool call through Countersign with the client, and
feeds the outcome back as a ``tool`` message, until the model answers or the session's
rounds run out::

    model = ScriptedModel([
        [tool_call("send_email", {"to": "ada@example.com", "subject": "Hi", "body": "..."})],
        lambda messages: final("Sent." if "sent" in messages[-1]["content"] else "Not sent."),
    ])
    transcript = run_agent(Countersign(url, token), model, session_id="test-1")
    assert transcript.outcome == "answered"

What the loop feeds back, as the ``tool`` message's JSON content:

* a result: ``{"result": {...}}``, with ``"arguments_edited": true`` and the ``arguments``
  that ran when a reviewer corrected them;
* a refusal or failure: ``{"error": code, "message", "suggestion", "details", "tool_code"}``
  (invalid arguments carry their JSON paths, so a model can fix them);
* a rejection: ``{"error": "call_rejected", "reason": <the reviewer's comment>}``;
* a call not ended when ``wait_timeout`` ran out: ``{"status", "call_id", "message"}``, its
  status as last read (``pending``, ``approved``, ``executing``, ``unknown``...) and where
  it stands in words (``WaitTimeout.advice``);
* a rate limit: waited out when ``Retry-After`` is at most ``rate_limit_wait`` seconds,
  else ``{"error": "rate_limited", "retry_after": n}``.

The rounds limit (``max_rounds_exceeded``) ends the loop with ``outcome ==
"max_rounds"``. Each tool call's step is its tool-call id, so a rerun of a crashed loop
over the same script (the same ids, the same session and state) sends the same keys and
gets the same calls.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from countersign_client import errors
from countersign_client._core import corrected
from countersign_client.client import Countersign

Message = dict[str, Any]
Turn = Message | list[Message] | Callable[[list[Message]], "Message | list[Message]"]

_ids = itertools.count(1)


def tool_call(name: str, arguments: dict[str, Any], *, id: str | None = None) -> Message:
    """One OpenAI-shaped tool call (``ChatCompletionMessageToolCall``)."""
    return {
        "id": id or f"call_{next(_ids):04d}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def final(text: str) -> Message:
    """The model's final answer (an assistant message without tool calls)."""
    return {"role": "assistant", "content": text}


class ScriptExhausted(AssertionError):
    """The loop asked the model for more turns than the script has."""


class ScriptedModel:
    """A model that answers with scripted turns, in order.

    A turn is a list of tool calls (``tool_call(...)``), a final answer (``final(...)``),
    or a function of the messages so far returning either. ``seen`` keeps the messages
    each turn was asked with.
    """

    def __init__(self, turns: Sequence[Turn]):
        self.turns = list(turns)
        self.seen: list[list[Message]] = []

    def complete(self, messages: list[Message]) -> Message:
        """The next assistant message, as Chat Completions returns one."""
        if len(self.seen) >= len(self.turns):
            raise ScriptExhausted(f"the script has {len(self.turns)} turns")
        turn = self.turns[len(self.seen)]
        self.seen.append([dict(m) for m in messages])
        produced = turn(messages) if callable(turn) else turn
        if isinstance(produced, dict):
            return produced
        return {"role": "assistant", "content": None, "tool_calls": list(produced)}


@dataclass
class Transcript:
    messages: list[Message]
    outcome: str = ""  # answered | max_rounds | turns_exhausted
    answer: str = ""
    fed_back: list[dict[str, Any]] = field(default_factory=list)

    def tool_results(self) -> list[dict[str, Any]]:
        """The JSON content of every tool message, in order."""
        return [json.loads(m["content"]) for m in self.messages if m["role"] == "tool"]


def run_agent(
    client: Countersign,
    model: ScriptedModel,
    *,
    session_id: str,
    prompt: str = "Help the customer.",
    max_turns: int = 20,
    wait_timeout: float | None = 30,
    rate_limit_wait: float = 2.0,
    **fields: Any,
) -> Transcript:
    """The minimal agent loop: model, tool calls through Countersign, results back."""
    transcript = Transcript(messages=[{"role": "user", "content": prompt}])
    for _ in range(max_turns):
        reply = model.complete(transcript.messages)
        transcript.messages.append(reply)
        calls = reply.get("tool_calls") or []
        if not calls:
            transcript.outcome, transcript.answer = "answered", str(reply.get("content") or "")
            return transcript
        for call in calls:
            content = _run_one(client, call, session_id, wait_timeout, rate_limit_wait, fields)
            transcript.fed_back.append(content)
            transcript.messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(content)}
            )
            if content.get("error") == "max_rounds_exceeded":
                transcript.outcome = "max_rounds"
                return transcript
    transcript.outcome = "turns_exhausted"
    return transcript


def _run_one(
    client: Countersign,
    call: Message,
    session_id: str,
    wait_timeout: float | None,
    rate_limit_wait: float,
    fields: dict[str, Any],
) -> dict[str, Any]:
    name = call["function"]["name"]
    try:
        arguments = json.loads(call["function"]["arguments"] or "{}")
    except ValueError as exc:
        return {"error": "invalid_json", "message": f"The arguments are not JSON: {exc}"}
    while True:
        try:
            result = client.call(
                name,
                arguments,
                session_id=session_id,
                step=call["id"],
                wait_timeout=wait_timeout,
                **fields,
            )
            return {"result": result} | corrected(result)
        except errors.RateLimited as exc:
            if exc.retry_after is not None and exc.retry_after <= rate_limit_wait:
                time.sleep(exc.retry_after)
                continue  # the same step, the same key: the refused call took nothing
            return _error(exc) | {"retry_after": exc.retry_after}
        except errors.ApiError as exc:
            return _error(exc)
        except errors.CallRejected as exc:
            return {"error": "call_rejected", "reason": exc.comment, "call_id": exc.call_id}
        except errors.CallFailed as exc:
            return {"error": "call_failed", "tool_code": exc.tool_code, "message": str(exc)}
        except errors.CallEnded as exc:
            return {"error": f"call_{exc.call.get('status')}", "call_id": exc.call_id}
        except errors.WaitTimeout as exc:
            return {"status": exc.status, "call_id": exc.call.get("id"), "message": exc.advice}


def _error(exc: errors.ApiError) -> dict[str, Any]:
    return {
        "error": exc.code,
        "message": exc.message,
        "suggestion": exc.suggestion,
        "details": exc.details,
        "tool_code": exc.tool_code,
        "retryable": exc.retryable,
    }
