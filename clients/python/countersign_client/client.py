"""The Countersign agent API client (synchronous; ``AsyncCountersign`` has the same surface).

    from countersign_client import Countersign

    with Countersign("https://countersign.example.com", token) as cs:
        result = cs.call("send_email", {...}, session_id="task-42")

Crash-safe keys by default. ``session_id`` names one run of your task. Within a session,
the calls you make without ``step=`` are numbered in order (``#1``, ``#2``, ...), and each
step's Idempotency-Key is created and written to the state store *before* its request goes
out (by default one file per session under ``.countersign/``, or ``$COUNTERSIGN_STATE_DIR``).
Run the same agent code again after a crash, with the same session id, and it makes the
same calls in the same order: each step sends the key it had, and Countersign answers with
the call it already has instead of making a second one. Name a step (``step="refund"``, or
your model's tool-call id) when the order of calls is not fixed; an explicit step wins.
If the rerun asks something else at a step than the first run did, the server refuses the
reused key (``IdempotencyKeyReused``): nothing is done twice by mistake.

Errors are typed (``errors.*``) and keep the tool's own code (``exc.tool_code``). The
server's ``retryable`` decides what the client asks again (see ``_core``); waiting is a
long-poll, not sleeps.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from countersign_client import _core, errors
from countersign_client._core import TERMINAL, Result, outcome
from countersign_client.state import DirectoryState, StateStore, default_state

__all__ = ["TERMINAL", "Countersign", "Result", "outcome", "resolve_state"]


def resolve_state(state: StateStore | str | os.PathLike[str] | None) -> StateStore:
    if isinstance(state, StateStore):
        return state
    if state is None:
        return default_state()
    return DirectoryState(state)


class Countersign:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        state: StateStore | str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        read_attempts: int = 3,
        backoff: float = 0.5,
        in_use_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        event_hooks: dict[str, list[Any]] | None = None,
    ):
        self.state = resolve_state(state)
        self.read_attempts = max(1, read_attempts)
        self.backoff = backoff
        self.in_use_wait = in_use_wait
        self._timeout = timeout
        self._steps = _core.Steps()
        self._risks: dict[str, str] | None = None
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": _core.bearer(token), "User-Agent": _core.USER_AGENT},
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
    ) -> Result:
        """Propose a call and return its result once it succeeded (a dict; its
        ``arguments_edited`` and ``arguments`` say what ran if a reviewer corrected them).

        Blocks (long-polling) while a write waits for its reviewers and runs. Raises
        ``CallRejected``/``CallExpired``/``CallCancelled``/``CallFailed`` for the other
        endings, ``WaitTimeout`` if ``wait_timeout`` seconds of waiting pass first (the
        proposal before it is bounded by ``timeout`` and ``in_use_wait``), and the API's
        typed errors (``RateLimited``, ``InvalidArguments``, ``ToolFailed``...) for refusals.
        """
        name = self._steps.name(session_id, step)
        attempt = 1
        while True:
            try:
                call = self.submit(tool, arguments, session_id=session_id, step=name, **fields)
                break
            except errors.ApiError as exc:
                # A transient failure of a read, which has no effect: ask again afresh.
                if not _core.fresh_key_retry(exc) or attempt >= self.read_attempts:
                    raise
                self.state.new_key(session_id, name)
                time.sleep(_core.backoff(self.backoff, attempt))
                attempt += 1
        if call["status"] not in TERMINAL:
            try:
                call = self.wait(call["id"], timeout=wait_timeout, seen=call["status"])
            except errors.TransportError as exc:
                raise _core.no_answer(str(exc), self.state, session_id, name) from exc
            except errors.ApiError as exc:
                failure = _core.failed_wait(exc, self.state, session_id, name)
                if failure is exc:
                    raise
                raise failure from exc
        _core.record(self.state, session_id, name, call)
        return outcome(call)

    def submit(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        session_id: str,
        step: str | None = None,
        on_behalf_of: _core.EndUser = "",
        user_token: str = "",
        reasoning: str = "",
        token_cost: dict[str, Any] | None = None,
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """Send the proposal once; returns the call (``pending`` for writes). Repeating it
        for the same step of the same session returns the same call.

        ``on_behalf_of``: the end user's id, or ``{"id", "roles"}`` from an agent trusted to
        assert roles; ``user_token``: the end user's identity-provider token, forwarded."""
        name = self._steps.name(session_id, step)
        sent = _core.body(
            tool,
            arguments,
            session_id,
            on_behalf_of=on_behalf_of,
            reasoning=reasoning,
            token_cost=token_cost,
            callback_url=callback_url,
        )
        request = _core.fingerprint(sent)
        # Durable before anything is sent, with what the step asks.
        key = self.state.key_for(session_id, name, request=request)
        attempt = 1
        same_key_retries = 0
        deadline = time.monotonic() + self.in_use_wait
        while True:
            try:
                response = self._http.post(
                    "/api/v1/tool-calls",
                    json=sent,
                    headers={"Idempotency-Key": key, **_core.user_token_header(user_token)},
                )
            except httpx.TransportError as exc:
                if self._is_read(tool) and attempt < self.read_attempts:
                    time.sleep(_core.backoff(self.backoff, attempt))
                    attempt += 1
                    continue
                raise _core.no_answer(
                    f"no answer to the {tool} proposal ({exc})", self.state, session_id, name
                ) from exc
            left = deadline - time.monotonic()
            if _core.retry_same_key(response) and left > 0:
                same_key_retries += 1
                time.sleep(min(_core.pause(response, self.backoff, same_key_retries), left))
                continue
            if _core.not_countersigns(response):
                raise _core.no_answer(
                    f"no answer to the {tool} proposal from Countersign (HTTP "
                    f"{response.status_code} from in front of it)",
                    self.state,
                    session_id,
                    name,
                )
            made = _core.call_the_key_made(response, self.state.step(session_id, name), request)
            call = self.get(made) if made else {}
            if call.get("tool") != tool:  # not made, or made for another tool: the error
                call = _core.a_call(_core.parse(response), response.status_code)
            _core.record(self.state, session_id, name, call)
            return dict(call)

    def get(self, call_id: str, *, wait: float = 0, seen: str = "") -> dict[str, Any]:
        """The call now, or after up to ``wait`` seconds if its status stays ``seen``."""
        return self._get(call_id, wait=wait, seen=seen, deadline=None)

    def wait(
        self, call_id: str, *, timeout: float | None = None, seen: str = "", poll: float = 30
    ) -> dict[str, Any]:
        """Long-poll until the call is terminal (or raise ``WaitTimeout`` after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Knowing the status the caller saw lets the first long-poll answer at once if the
        # call moved on in between.
        call = {"id": call_id, "status": seen}
        try:
            if not seen:
                call = self._get(call_id, wait=0, seen="", deadline=deadline)
            while call["status"] not in TERMINAL:
                remaining = _core.within(poll, deadline)
                try:
                    call = self._get(
                        call_id, wait=remaining, seen=call["status"], deadline=deadline
                    )
                except errors.TooManyWaits as exc:
                    # The agent's other waits hold its places: no answer about this call.
                    time.sleep(_core.within(_core.busy_pause(exc, self.backoff), deadline))
        except _core.DeadlinePassed as exc:
            raise errors.WaitTimeout(call) from exc
        return call

    def cancel(self, call_id: str) -> dict[str, Any]:
        """Withdraw a pending call (repeating it is harmless)."""
        return self._act(call_id, "cancel")

    def retry(self, call_id: str) -> dict[str, Any]:
        """Ask Countersign to run a failed write again with its original key."""
        return self._act(call_id, "retry")

    def tools(
        self, format: str = "openai", *, on_behalf_of: _core.EndUser = "", user_token: str = ""
    ) -> list[dict[str, Any]]:
        """Your tools as definitions: ``openai`` (Chat Completions), ``openai-responses``
        (Responses API / Agents SDK, strict), ``anthropic`` or ``mcp``; with an end user
        (``on_behalf_of`` or ``user_token``, as ``submit``), only those they may call."""
        return list(
            self._read(
                "/api/v1/tools",
                params={"format": format, **_core.end_user_params(on_behalf_of)},
                headers=_core.user_token_header(user_token),
            )
        )

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's stored keys."""
        self.state.forget(session_id)

    # --- plumbing ----------------------------------------------------------------------

    def _get(
        self, call_id: str, *, wait: float, seen: str, deadline: float | None
    ) -> dict[str, Any]:
        return _core.a_call(
            self._read(
                f"/api/v1/tool-calls/{call_id}",
                params=_core.wait_params(wait, seen),
                timeout=self._timeout + wait,
                deadline=deadline,
            )
        )

    def _read(
        self,
        path: str,
        *,
        params: dict[str, Any],
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """GET ``path``, asking again as ``_core`` says; with a ``deadline``, no request or
        pause outlasts it (``DeadlinePassed``)."""
        attempt = 1
        limit = timeout or self._timeout
        while True:
            cut = _core.within(limit, deadline)
            try:
                response = self._http.get(path, params=params, headers=headers, timeout=cut)
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.TimeoutException) and cut < limit:
                    # Its time was what the deadline left: the wait ran out, not Countersign.
                    raise _core.DeadlinePassed() from exc
                if attempt >= self.read_attempts:
                    raise errors.TransportError(f"GET {path} failed: {exc}") from exc
                pause = _core.backoff(self.backoff, attempt)
            else:
                if not _core.retry_read(response) or attempt >= self.read_attempts:
                    return _core.last_read(response, path)
                pause = _core.pause(response, self.backoff, attempt)
            time.sleep(_core.within(pause, deadline))
            attempt += 1

    def _act(self, call_id: str, action: str) -> dict[str, Any]:
        path = f"/api/v1/tool-calls/{call_id}/{action}"
        try:
            response = self._http.post(path)
        except httpx.TransportError as exc:
            raise errors.TransportError(f"POST {path} got no answer: {exc}") from exc
        return _core.a_call(_core.parse(response), response.status_code)

    def _is_read(self, tool: str) -> bool:
        if self._risks is None:
            try:
                self._risks = _core.risks(self._read("/api/v1/tools", params={"format": "mcp"}))
            except errors.CountersignError:
                return False  # unknown: treat as a write, never re-send
        return self._risks.get(tool) == "read"
