"""The asynchronous Countersign client: ``Countersign``'s surface and behaviour, awaited.

    async with AsyncCountersign(url, token) as cs:
        result = await cs.call("send_email", {...}, session_id="task-42")

Keys, steps, retries and errors work exactly as in ``countersign_client.client``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from countersign_client import _core, errors
from countersign_client._core import TERMINAL, Result, outcome
from countersign_client.client import resolve_state
from countersign_client.state import StateStore

__all__ = ["AsyncCountersign"]


class AsyncCountersign:
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
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: dict[str, list[Any]] | None = None,
    ):
        self.state = resolve_state(state)
        self.read_attempts = max(1, read_attempts)
        self.backoff = backoff
        self.in_use_wait = in_use_wait
        self._timeout = timeout
        self._steps = _core.Steps()
        self._risks: dict[str, str] | None = None
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": _core.bearer(token), "User-Agent": _core.USER_AGENT},
            timeout=timeout,
            transport=transport,
            event_hooks=event_hooks or {},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCountersign:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the agent's verbs -------------------------------------------------------------

    async def call(
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
                call = await self.submit(
                    tool, arguments, session_id=session_id, step=name, **fields
                )
                break
            except errors.ApiError as exc:
                # A transient failure of a read, which has no effect: ask again afresh.
                if not _core.fresh_key_retry(exc) or attempt >= self.read_attempts:
                    raise
                self.state.new_key(session_id, name)
                await asyncio.sleep(_core.backoff(self.backoff, attempt))
                attempt += 1
        if call["status"] not in TERMINAL:
            try:
                call = await self.wait(call["id"], timeout=wait_timeout, seen=call["status"])
            except errors.TransportError as exc:
                raise _core.no_answer(str(exc), self.state, session_id, name) from exc
            except errors.ApiError as exc:
                failure = _core.failed_wait(exc, self.state, session_id, name)
                if failure is exc:
                    raise
                raise failure from exc
        _core.record(self.state, session_id, name, call)
        return outcome(call)

    async def submit(
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
                response = await self._http.post(
                    "/api/v1/tool-calls",
                    json=sent,
                    headers={"Idempotency-Key": key, **_core.user_token_header(user_token)},
                )
            except httpx.TransportError as exc:
                if await self._is_read(tool) and attempt < self.read_attempts:
                    await asyncio.sleep(_core.backoff(self.backoff, attempt))
                    attempt += 1
                    continue
                raise _core.no_answer(
                    f"no answer to the {tool} proposal ({exc})", self.state, session_id, name
                ) from exc
            left = deadline - time.monotonic()
            if _core.retry_same_key(response) and left > 0:
                same_key_retries += 1
                await asyncio.sleep(
                    min(_core.pause(response, self.backoff, same_key_retries), left)
                )
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
            call = await self.get(made) if made else {}
            if call.get("tool") != tool:  # not made, or made for another tool: the error
                call = _core.a_call(_core.parse(response), response.status_code)
            _core.record(self.state, session_id, name, call)
            return dict(call)

    async def get(self, call_id: str, *, wait: float = 0, seen: str = "") -> dict[str, Any]:
        """The call now, or after up to ``wait`` seconds if its status stays ``seen``."""
        return await self._get(call_id, wait=wait, seen=seen, deadline=None)

    async def wait(
        self, call_id: str, *, timeout: float | None = None, seen: str = "", poll: float = 30
    ) -> dict[str, Any]:
        """Long-poll until the call is terminal (or raise ``WaitTimeout`` after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Knowing the status the caller saw lets the first long-poll answer at once if the
        # call moved on in between.
        call = {"id": call_id, "status": seen}
        try:
            if not seen:
                call = await self._get(call_id, wait=0, seen="", deadline=deadline)
            while call["status"] not in TERMINAL:
                remaining = _core.within(poll, deadline)
                try:
                    call = await self._get(
                        call_id, wait=remaining, seen=call["status"], deadline=deadline
                    )
                except errors.TooManyWaits as exc:
                    # The agent's other waits hold its places: no answer about this call.
                    await asyncio.sleep(_core.within(_core.busy_pause(exc, self.backoff), deadline))
        except _core.DeadlinePassed as exc:
            raise errors.WaitTimeout(call) from exc
        return call

    async def cancel(self, call_id: str) -> dict[str, Any]:
        """Withdraw a pending call (repeating it is harmless)."""
        return await self._act(call_id, "cancel")

    async def retry(self, call_id: str) -> dict[str, Any]:
        """Ask Countersign to run a failed write again with its original key."""
        return await self._act(call_id, "retry")

    async def tools(
        self, format: str = "openai", *, on_behalf_of: _core.EndUser = "", user_token: str = ""
    ) -> list[dict[str, Any]]:
        """Your tools as definitions: ``openai`` (Chat Completions), ``openai-responses``
        (Responses API / Agents SDK, strict), ``anthropic`` or ``mcp``; with an end user
        (``on_behalf_of`` or ``user_token``, as ``submit``), only those they may call."""
        return list(
            await self._read(
                "/api/v1/tools",
                params={"format": format, **_core.end_user_params(on_behalf_of)},
                headers=_core.user_token_header(user_token),
            )
        )

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's stored keys."""
        self.state.forget(session_id)

    # --- plumbing ----------------------------------------------------------------------

    async def _get(
        self, call_id: str, *, wait: float, seen: str, deadline: float | None
    ) -> dict[str, Any]:
        return _core.a_call(
            await self._read(
                f"/api/v1/tool-calls/{call_id}",
                params=_core.wait_params(wait, seen),
                timeout=self._timeout + wait,
                deadline=deadline,
            )
        )

    async def _read(
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
                response = await self._http.get(path, params=params, headers=headers, timeout=cut)
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
            await asyncio.sleep(_core.within(pause, deadline))
            attempt += 1

    async def _act(self, call_id: str, action: str) -> dict[str, Any]:
        path = f"/api/v1/tool-calls/{call_id}/{action}"
        try:
            response = await self._http.post(path)
        except httpx.TransportError as exc:
            raise errors.TransportError(f"POST {path} got no answer: {exc}") from exc
        return _core.a_call(_core.parse(response), response.status_code)

    async def _is_read(self, tool: str) -> bool:
        if self._risks is None:
            try:
                self._risks = _core.risks(
                    await self._read("/api/v1/tools", params={"format": "mcp"})
                )
            except errors.CountersignError:
                return False  # unknown: treat as a write, never re-send
        return self._risks.get(tool) == "read"
