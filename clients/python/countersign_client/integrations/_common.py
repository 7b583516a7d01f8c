"""What both adapters do with one tool call: send it through Countersign, wait for the
decision and the result, and turn every ending into text a model can read.

A rejection, an expiry, a refusal (invalid arguments with their paths and suggestion, a
rate limit, a tool's own refusal with its code) is not an exception that ends the run: it
is the tool's answer, so the model can tell the user or try something else.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from countersign_client import errors
from countersign_client._core import corrected
from countersign_client.aio import AsyncCountersign
from countersign_client.client import Countersign

Client = Countersign | AsyncCountersign


class Refusal(Exception):
    """The call did not produce a result; ``str()`` is what the model should read."""


def result_text(result: dict[str, Any]) -> str:
    text = json.dumps(result, ensure_ascii=False)
    if edited := corrected(result):
        # A reviewer corrected the arguments: these ran, and the model must not tell its
        # user that the ones it sent did (as the MCP answer's second text says).
        text += (
            "\n\nA reviewer corrected the arguments before approving the call: it ran with "
            f"these, not the ones you sent: {json.dumps(edited['arguments'], ensure_ascii=False)}"
        )
    return text


def refusal(exc: Exception) -> Refusal:
    """The model-readable account of a call that ended without a result."""
    if isinstance(exc, errors.CallRejected):
        text = (
            f"A reviewer rejected this call: {exc.comment or 'no reason given'}. It did not "
            "run. Do not send it again; tell the user why, or propose something different."
        )
    elif isinstance(exc, errors.CallExpired):
        text = (
            "Nobody approved this call in time; it did not run. Ask the user if it is still wanted."
        )
    elif isinstance(exc, errors.CallCancelled):
        text = "This call was cancelled before anyone approved it; it did not run."
    elif isinstance(exc, errors.CallFailed):
        text = f"The tool failed ({exc.tool_code}): {exc.error.get('message', '')}"
    elif isinstance(exc, errors.WaitTimeout):
        # Where the call stands: waiting for a person, running, or run with its outcome
        # being checked; not always "awaiting approval".
        text = exc.advice
    elif isinstance(exc, errors.ApiError):
        error: dict[str, Any] = {
            "error": exc.code,
            "message": exc.message,
            "suggestion": exc.suggestion,
        }
        if exc.details is not None:
            error["details"] = exc.details
        text = json.dumps(error, ensure_ascii=False)
    else:
        text = str(exc)
    return Refusal(text)


def call_sync(
    client: Countersign, name: str, arguments: dict[str, Any], step: str | None, **fields: Any
) -> str:
    try:
        return result_text(client.call(name, arguments, step=step, **fields))
    except (errors.ApiError, errors.CallEnded, errors.WaitTimeout) as exc:
        raise refusal(exc) from exc


async def call_async(
    client: Client, name: str, arguments: dict[str, Any], step: str | None, **fields: Any
) -> str:
    try:
        if isinstance(client, AsyncCountersign):
            result = await client.call(name, arguments, step=step, **fields)
        else:
            result = await asyncio.to_thread(client.call, name, arguments, step=step, **fields)
        return result_text(result)
    except (errors.ApiError, errors.CallEnded, errors.WaitTimeout) as exc:
        raise refusal(exc) from exc
