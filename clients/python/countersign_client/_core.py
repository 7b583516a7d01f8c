"""What the sync and the async client share: requests, answers, steps and retry rules.

Retry rules (the server's ``retryable`` decides):

* a read that failed transiently (``tool_failed``/``timeout``/``read_abandoned`` with
  ``retryable: true``) is asked again as a new request, with a new key, up to
  ``read_attempts``; a tool's refusal (``tool_failed``, 422, ``retryable: false``) is
  raised at once with its ``tool_code``;
* ``idempotency_key_in_use`` (409), ``unavailable`` (503) and ``internal_error`` (500) are
  asked again with the same key: the key makes that safe for writes too; so is a 5xx that
  is not Countersign's (a proxy's 502/504: the request may have reached Countersign), and
  one that outlasts the retries is no answer (``TransportError``);
* a request that got no answer is sent again with the same key for a read; for a write it
  raises ``TransportError``, naming the step (run it again: same key, same call);
* a GET answered 429 or 5xx, or not at all, is asked again, up to ``read_attempts``; a
  last try not answered by Countersign (none, or a proxy's 5xx) raises ``TransportError``,
  and so does ``call``'s wait whose last try got Countersign's own 5xx (``failed_wait``);
* a long-poll refused because the agent's other waits hold all its places
  (``too_many_waits``, 429) says nothing of the call: ``wait`` (and ``call``'s wait) pauses
  and asks again until its deadline, as long as the call takes;
* a step's key refused as expired (``idempotency_key_expired``, its answer swept) is the
  call the key made, read afresh (``call_the_key_made``);
* everything else (rate limits, rounds, invalid arguments, rejections) is raised for the
  agent to decide.

Every pause before asking again is the longer of an exponential backoff with jitter and
the server's Retry-After: the backoff keeps a failing server from being hammered, and
Retry-After is the earliest the server wants to hear from us. A ``wait`` with a timeout
carries its deadline into every request and pause, so none of them outlasts it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from countersign_client import errors
from countersign_client.state import StateStore

TERMINAL = frozenset({"succeeded", "failed", "rejected", "expired", "cancelled"})
MAX_WAIT_PER_REQUEST = 60
FRESH_KEY_CODES = frozenset({"tool_failed", "timeout", "read_abandoned"})
SAME_KEY_CODES = frozenset({"idempotency_key_in_use", "unavailable", "internal_error"})
USER_AGENT = "countersign-client/0.2"


def bearer(token: str) -> str:
    """The Authorization header of ``token``, without the line break a token read from a
    file keeps. A token with a character no token has is refused here, unquoted: httpx's
    error on sending a header it cannot carry quotes the whole header, into every
    TransportError and its cause."""
    token = token.strip()
    if not all("!" <= c <= "~" for c in token):
        raise ValueError(
            "the agent token holds a character no token has (a space, a line break, a "
            "non-ASCII letter): check how it was read"
        )
    return f"Bearer {token}"


class Steps:
    """Numbers the unnamed steps of each session in the order they are made, per client.

    A rerun of the same agent code after a crash makes the same calls in the same order, so
    step ``#3`` of session ``task-7`` gets the key it was given the first time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}

    def name(self, session_id: str, step: str | None) -> str:
        if step is not None:
            return step
        with self._lock:
            number = self._next.get(session_id, 0) + 1
            self._next[session_id] = number
            return f"#{number}"


# The end user a call is for: their id, or ``{"id": ..., "roles": [...]}`` from an agent an
# admin trusts to assert roles (docs/api.md).
EndUser = str | Mapping[str, Any]
# The end user's identity-provider token, for an agent that forwards its users' tokens.
USER_TOKEN_HEADER = "Countersign-User-Token"  # noqa: S105 - a header name


def user_token_header(user_token: str) -> dict[str, str]:
    """The header that forwards ``user_token`` (none without one). Never part of a step's
    fingerprint: a token refreshed between two tries of a step is still the same request."""
    return {USER_TOKEN_HEADER: user_token} if user_token else {}


def end_user_params(on_behalf_of: EndUser) -> dict[str, str]:
    """The tool list's query for an end user: ``on_behalf_of`` and, when asserted, ``roles``."""
    if isinstance(on_behalf_of, Mapping):
        params = {"on_behalf_of": str(on_behalf_of.get("id", ""))}
        if roles := on_behalf_of.get("roles"):
            params["roles"] = ",".join(str(role) for role in roles)
        return params
    return {"on_behalf_of": on_behalf_of} if on_behalf_of else {}


def body(
    tool: str,
    arguments: dict[str, Any],
    session_id: str,
    *,
    on_behalf_of: EndUser = "",
    reasoning: str = "",
    token_cost: dict[str, Any] | None = None,
    callback_url: str | None = None,
) -> dict[str, Any]:
    sent: dict[str, Any] = {"tool": tool, "arguments": arguments, "session_id": session_id}
    if on_behalf_of:
        sent["on_behalf_of"] = (
            dict(on_behalf_of) if isinstance(on_behalf_of, Mapping) else on_behalf_of
        )
    if reasoning:
        sent["reasoning"] = reasoning
    if token_cost is not None:
        sent["token_cost"] = token_cost
    if callback_url:
        sent["callback_url"] = callback_url
    return sent


def parse(response: httpx.Response) -> Any:
    """The answer's JSON, or its typed error (keeping the body: its JSON, else its text)."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 300 or answer is None:
        # A redirect or a page (a proxy's, a captive portal's) is not Countersign's answer
        # either: raised as an error, not taken for a call.
        body = response.text if answer is None else answer
        raise errors.from_response(response.status_code, body, response.headers)
    return answer


def a_call(answer: Any, status: int = 200) -> dict[str, Any]:
    """``answer`` (a 2xx's JSON) if it is a call, with its id and status. JSON that is no
    call (another service's, at a client URL that is not Countersign's) raised a bare
    KeyError further on: it is an ``http_error``, as a page without JSON is."""
    if (
        isinstance(answer, dict)
        and isinstance(answer.get("id"), str)
        and isinstance(answer.get("status"), str)
    ):
        return answer
    raise errors.from_response(status, answer, None)


def code_of(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def retry_same_key(response: httpx.Response) -> bool:
    return (
        response.status_code >= 409 and code_of(response) in SAME_KEY_CODES
    ) or not_countersigns(response)


def last_read(response: httpx.Response, path: str) -> Any:
    """The answer to a GET's last try. A proxy's 5xx is no answer, as to a proposal: not an
    ApiError an agent would take for the call's refusal."""
    if not_countersigns(response):
        raise errors.TransportError(
            f"GET {path} got HTTP {response.status_code} from in front of Countersign"
        )
    return parse(response)


def not_countersigns(response: httpx.Response) -> bool:
    """A server failure without Countersign's error body: a proxy or load balancer in front
    answered (502, 504...), so Countersign may have received the request, or not."""
    return response.status_code >= 500 and not code_of(response)


def no_answer(what: str, state: StateStore, session_id: str, name: str) -> errors.TransportError:
    """The error of a step that got no answer, naming the step to run again: an unnamed
    call made again would be the session's next step, with a new key."""
    return errors.TransportError(
        f"{what}; run step {name!r} of session {session_id!r} again (step={name!r}): "
        "its key gets the same call",
        session_id=session_id,
        step=name,
        idempotency_key=state.step(session_id, name).get("key"),
    )


def failed_wait(exc: errors.ApiError, state: StateStore, session_id: str, name: str) -> Exception:
    """What ``call`` raises when its wait ends in an error: a server failure that outlasted
    the GET's tries (Countersign's database restarting) says nothing of the call, which
    still waits and runs once approved. As an ApiError the adapters would hand it to the
    model as a refusal, and the model propose the write again as a new step with a new key;
    it is no answer, naming the step. Any other error is the answer, as it came."""
    if exc.status < 500:
        return exc
    return no_answer(
        f"waiting for the call got HTTP {exc.status} {exc.code} from Countersign",
        state,
        session_id,
        name,
    )


def fingerprint(sent: dict[str, Any]) -> str:
    """What a step asks, as a hash of the request's body (kept beside its key)."""
    text = json.dumps(sent, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def call_the_key_made(response: httpx.Response, step: dict[str, Any], request: str) -> str | None:
    """The call a step's key made, when Countersign no longer keeps the key's answer
    (``idempotency_key_expired``, past ``IDEMPOTENCY_KEY_TTL``: an agent back after a long
    pause) and names the call: the step is that call, read afresh. Raising the error
    instead invited the agent to propose the same effect again under a new key.

    Only if the step asks what it asked when its key was made (``request``, the body's
    ``fingerprint``, against the one kept with the key): past the TTL Countersign refuses
    the key whatever the body, and a rerun asking something else at the step (a model's
    other answer, a session id used again) would get another request's call for its own.
    A step kept without a fingerprint (an older client's) is checked by its tool alone."""
    if response.status_code != 422 or code_of(response) != "idempotency_key_expired":
        return None
    if step.get("request") and step["request"] != request:
        return None
    try:
        details = response.json()["error"].get("details") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    call_id = details.get("call_id") if isinstance(details, dict) else None
    return call_id if isinstance(call_id, str) and call_id else None


def retry_read(response: httpx.Response) -> bool:
    """A GET answered with an overload or a server failure, which another try may not get."""
    return response.status_code >= 500 or response.status_code == 429


def pause(response: httpx.Response, base: float, attempt: int) -> float:
    """How long to wait before asking again after ``response``: see the module docstring."""
    return max(backoff(base, attempt), retry_after_seconds(response))


# The longest Retry-After heeded: Countersign asks for seconds; a proxy in front may say
# anything (a day, "inf"), and a step must not sleep that long, or fail on it.
MAX_RETRY_AFTER = 300.0


def retry_after_seconds(response: httpx.Response) -> float:
    """The answer's Retry-After in seconds, at most ``MAX_RETRY_AFTER``; 0 when it has none,
    one given as a date, or one that is no number of seconds."""
    try:
        seconds = float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0


def busy_pause(exc: errors.ApiError, base: float) -> float:
    """How long a wait refused for the agent's other waits (``too_many_waits``) pauses
    before it asks again: the server's Retry-After (at most ``MAX_RETRY_AFTER``), at least
    ``base``."""
    asked = exc.retry_after if exc.retry_after and math.isfinite(exc.retry_after) else 0.0
    return min(max(asked, base), MAX_RETRY_AFTER)


def fresh_key_retry(exc: errors.ApiError) -> bool:
    """A read that failed in a way another try may not: ask again with a new key."""
    return exc.retryable and exc.code in FRESH_KEY_CODES


def backoff(base: float, attempt: int) -> float:
    """Between half and all of ``base``, 2 x ``base``, 4 x ``base``... for attempts 1, 2, 3...:
    doubling gives a failing server room, the jitter keeps clients from retrying in step."""
    return base * 2.0 ** (attempt - 1) * random.uniform(0.5, 1.0)


class DeadlinePassed(errors.CountersignError):
    """A wait's deadline came before an answer did (``wait`` raises ``WaitTimeout``)."""


def within(seconds: float, deadline: float | None) -> float:
    """``seconds``, cut to the time left before ``deadline`` (a ``time.monotonic()``; None:
    no deadline). Raises ``DeadlinePassed`` when no time is left."""
    if deadline is None:
        return seconds
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed()
    return min(seconds, left)


def wait_params(wait: float, seen: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if wait > 0:
        params["wait"] = min(wait, MAX_WAIT_PER_REQUEST)
    if seen:
        params["seen"] = seen
    return params


def risks(listed: list[dict[str, Any]]) -> dict[str, str]:
    return {
        t["name"]: "read" if t.get("annotations", {}).get("readOnlyHint") else "write"
        for t in listed
    }


class Result(dict[str, Any]):
    """A succeeded call's result, as a dict, with the ``call`` it came from: when
    ``arguments_edited``, a reviewer corrected the arguments before approving, and the call
    ran with ``arguments``, not the ones sent: a model must be told so, or it tells its
    user that what it asked for was done."""

    def __init__(self, result: dict[str, Any], call: dict[str, Any]) -> None:
        super().__init__(result)
        self.call = call

    @property
    def arguments_edited(self) -> bool:
        return bool(self.call.get("arguments_edited"))

    @property
    def arguments(self) -> dict[str, Any] | None:
        """The arguments that ran, when a reviewer corrected them (else None)."""
        return self.call.get("arguments") if self.arguments_edited else None


def corrected(result: dict[str, Any]) -> dict[str, Any]:
    """What a model must read beside a corrected call's result (the MCP answer says it
    too): the arguments that ran. Empty for a call that ran as sent."""
    if isinstance(result, Result) and result.arguments_edited:
        return {"arguments_edited": True, "arguments": result.arguments}
    return {}


def outcome(call: dict[str, Any]) -> Result:
    """The result of a succeeded call (a ``Result``); the typed error of any other terminal
    state."""
    status = call.get("status")
    if status == "succeeded":
        return Result(call.get("result") or {}, call)
    if status == "rejected":
        comment = (call.get("decision") or {}).get("comment", "")
        raise errors.CallRejected(call, f"a reviewer rejected the call: {comment}")
    if status == "expired":
        raise errors.CallExpired(call, "nobody decided on the call before it expired")
    if status == "cancelled":
        raise errors.CallCancelled(call, "the call was cancelled")
    if status == "failed":
        error = call.get("error") or {}
        raise errors.CallFailed(call, f"the tool failed: {error.get('message', '')}")
    raise errors.WaitTimeout(call)


def record(state: StateStore, session_id: str, name: str, call: dict[str, Any]) -> None:
    state.update(session_id, name, call_id=call["id"], status=call["status"])
