"""The Countersign agent API client.

    from countersign_client import Countersign

    cs = Countersign("https://countersign.example.com", token, state="task-42.json")
    result = cs.call("send_email", {...}, session_id="task-42", step="confirm-refund")

``step`` names the tool call within your task. Its Idempotency-Key is created and written to
the state file *before* the request goes out; after a crash, running the task again sends
the same key for the same step, and Countersign answers with the call it already has.

Retries: reads only. A read that failed or timed out (502/504) is asked again as a new
request, and a read whose request got no answer is sent again; a write is never re-sent or
re-run by the client (``TransportError``, ``CallFailed`` go to you; running the step again
or ``retry(call_id)`` are your decision, and both reuse the original key). Status reads
(``get``/``wait``) are retried on network errors and 5xx. The one exception is 409
``idempotency_key_in_use``: the first request with this key is still being processed, so
the client waits and asks again with the same key to receive that request's answer.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

import httpx

from countersign_client import errors
from countersign_client.state import MemoryState, TaskState

TERMINAL = frozenset({"succeeded", "failed", "rejected", "expired", "cancelled"})
MAX_WAIT_PER_REQUEST = 60


class Countersign:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        state: TaskState | str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        read_attempts: int = 3,
        backoff: float = 0.5,
        in_use_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        event_hooks: dict[str, list[Any]] | None = None,
    ):
        if isinstance(state, TaskState):
            self.state = state
        elif state is None:
            self.state = MemoryState()
        else:
            self.state = TaskState(state)
        self.read_attempts = max(1, read_attempts)
        self.backoff = backoff
        self.in_use_wait = in_use_wait
        self._timeout = timeout
        self._risks: dict[str, str] | None = None
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "countersign-client/0.1"},
            timeout=timeout,
            transport=transport,
            event_hooks=event_hooks or {},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Countersign:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the agent's verbs -------------------------------------------------------------

    def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        session_id: str,
        step: str | None = None,
        wait_timeout: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Propose a call and return its result once it succeeded.

        Blocks (long-polling) while a write waits for its reviewers and runs. Raises
        ``CallRejected``/``CallExpired``/``CallCancelled``/``CallFailed`` for the other
        endings, ``WaitTimeout`` if ``wait_timeout`` seconds pass first, and the API's
        typed errors (``RateLimited``, ``InvalidArguments``, ...) for refusals.
        """
        name = step or f"{tool}:{uuid.uuid4()}"
        attempt = 1
        while True:
            try:
                call = self.submit(tool, arguments, session_id=session_id, step=name, **fields)
                break
            except (errors.Timeout, errors.ToolFailed):
                # Only reads fail inline; a read has no effect, so ask it again afresh.
                if attempt >= self.read_attempts:
                    raise
                self.state.new_key(name)
                self._sleep(attempt)
                attempt += 1
        if call["status"] not in TERMINAL:
            call = self.wait(call["id"], timeout=wait_timeout, seen=call["status"])
        self.state.update(name, call_id=call["id"], status=call["status"])
        return outcome(call)

    def submit(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        session_id: str,
        step: str | None = None,
        on_behalf_of: str = "",
        reasoning: str = "",
        token_cost: dict[str, Any] | None = None,
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """Send the proposal once; returns the call (``pending`` for writes). Repeating it
        for the same ``step`` returns the same call."""
        name = step or f"{tool}:{uuid.uuid4()}"
        key = self.state.key_for(name)  # durable before anything is sent
        body: dict[str, Any] = {"tool": tool, "arguments": arguments, "session_id": session_id}
        if on_behalf_of:
            body["on_behalf_of"] = on_behalf_of
        if reasoning:
            body["reasoning"] = reasoning
        if token_cost is not None:
            body["token_cost"] = token_cost
        if callback_url:
            body["callback_url"] = callback_url
        attempt = 1
        deadline = time.monotonic() + self.in_use_wait
        while True:
            try:
                response = self._http.post(
                    "/api/v1/tool-calls", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError as exc:
                if self._is_read(tool) and attempt < self.read_attempts:
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise errors.TransportError(
                    f"no answer to the {tool} proposal ({exc}); run the step again to resume"
                ) from exc
            in_use = response.status_code == 409 and _code(response) == "idempotency_key_in_use"
            if in_use and time.monotonic() < deadline:
                time.sleep(_retry_after(response, 1.0))
                continue
            call = self._parse(response)
            self.state.update(name, call_id=call["id"], status=call["status"])
            return call

    def get(self, call_id: str, *, wait: float = 0, seen: str = "") -> dict[str, Any]:
        """The call now, or after up to ``wait`` seconds if its status stays ``seen``."""
        params: dict[str, Any] = {}
        if wait > 0:
            params["wait"] = min(wait, MAX_WAIT_PER_REQUEST)
        if seen:
            params["seen"] = seen
        return self._read(
            f"/api/v1/tool-calls/{call_id}", params=params, timeout=self._timeout + wait
        )

    def wait(
        self, call_id: str, *, timeout: float | None = None, seen: str = "", poll: float = 30
    ) -> dict[str, Any]:
        """Long-poll until the call is terminal (or raise ``WaitTimeout`` after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Knowing the status the caller saw lets the first long-poll answer at once if the
        # call moved on in between.
        call = {"id": call_id, "status": seen} if seen else self.get(call_id)
        while call["status"] not in TERMINAL:
            remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
            if remaining <= 0:
                raise errors.WaitTimeout(call)
            call = self.get(call_id, wait=remaining, seen=call["status"])
        return call

    def cancel(self, call_id: str) -> dict[str, Any]:
        """Withdraw a pending call (repeating it is harmless)."""
        return self._parse(self._http.post(f"/api/v1/tool-calls/{call_id}/cancel"))

    def retry(self, call_id: str) -> dict[str, Any]:
        """Ask Countersign to run a failed write again with its original key."""
        return self._parse(self._http.post(f"/api/v1/tool-calls/{call_id}/retry"))

    def tools(self, format: str = "openai") -> list[dict[str, Any]]:
        """Your tools as definitions for ``openai``, ``anthropic`` or ``mcp``."""
        return self._read("/api/v1/tools", params={"format": format})

    # --- plumbing ----------------------------------------------------------------------

    def _read(self, path: str, *, params: dict[str, Any], timeout: float | None = None) -> Any:
        attempt = 1
        while True:
            try:
                response = self._http.get(path, params=params, timeout=timeout or self._timeout)
            except httpx.TransportError as exc:
                if attempt >= self.read_attempts:
                    raise errors.TransportError(f"GET {path} failed: {exc}") from exc
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return self._parse(response)
                if attempt >= self.read_attempts:
                    return self._parse(response)
            self._sleep(attempt)
            attempt += 1

    def _parse(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise errors.from_response(response.status_code, body, response.headers)
        return body

    def _is_read(self, tool: str) -> bool:
        if self._risks is None:
            try:
                listed = self._read("/api/v1/tools", params={"format": "mcp"})
            except errors.CountersignError:
                return False  # unknown: treat as a write, never re-send
            self._risks = {
                t["name"]: "read" if t.get("annotations", {}).get("readOnlyHint") else "write"
                for t in listed
            }
        return self._risks.get(tool) == "read"

    def _sleep(self, attempt: int) -> None:
        time.sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))


def outcome(call: dict[str, Any]) -> dict[str, Any]:
    """The result of a succeeded call; the typed error of any other terminal state."""
    status = call.get("status")
    if status == "succeeded":
        return call.get("result") or {}
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


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.1, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default
