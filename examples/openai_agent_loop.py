"""A complete agent loop: the OpenAI SDK's Chat Completions, pointed at any
OpenAI-compatible endpoint, proposing tool calls that Countersign gates.

    pip install openai ./clients/python
    export OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_API_KEY=... MODEL=llama3.1
    export COUNTERSIGN_URL=http://127.0.0.1:8000 COUNTERSIGN_TOKEN=$(cat var/demo_agent_token)
    python examples/openai_agent_loop.py task-42 "Refund pay_0001 and tell the customer."

Each tool call goes through Countersign: reads answer at once, writes wait for a reviewer
(the client long-polls), and every refusal comes back to the model as the tool's answer,
with Countersign's suggestion. The model's tool-call ids are the steps, and the transcript
is saved after every message. Running the same task again after a crash first sends the
saved tool calls that never got an answer, with their own ids, so the same
Idempotency-Keys, and gets the calls they made; only then is the model asked to go on:
nothing runs twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from countersign_client import CallEnded, CallRejected, Countersign, WaitTimeout, errors
from openai import OpenAI, omit
from openai.types.chat import ChatCompletionToolParam

MAX_TURNS = 20
RATE_LIMIT_WAIT = 60  # seconds: a rate limit's Retry-After waited out; a longer one is answered


def run_tool(cs: Countersign, session_id: str, call_id: str, name: str, raw: str) -> dict[str, Any]:
    """One tool call through Countersign; whatever happens is an answer for the model, but
    the rounds limit, which ends the task (``main``)."""
    try:
        arguments = json.loads(raw or "{}")
    except ValueError as exc:
        return {"error": "invalid_json", "message": str(exc)}
    while True:
        try:
            result = cs.call(name, arguments, session_id=session_id, step=call_id, wait_timeout=600)
            if result.arguments_edited:
                # A reviewer corrected the arguments: these ran, not the model's.
                return {"result": result, "arguments_edited": True, "arguments": result.arguments}
            return {"result": result}
        except errors.RateLimited as exc:
            if exc.retry_after is None or exc.retry_after > RATE_LIMIT_WAIT:
                # A limit per hour or day: the model tells the user, rather than the task
                # hanging for that long.
                return {"error": exc.code, "message": exc.message,
                        "suggestion": exc.suggestion, "retry_after": exc.retry_after}  # fmt: skip
            time.sleep(exc.retry_after or 1)  # same step, same key: the refusal took nothing
        except CallRejected as exc:
            return {
                "error": "rejected",
                "reason": exc.comment,
                "advice": "Do not retry; tell the user.",
            }
        except errors.MaxRoundsExceeded:
            raise
        except errors.ApiError as exc:
            # Any other refusal (invalid arguments, an unknown tool, a policy, a disabled
            # tool, a timeout...): the model reads the message and suggestion and decides.
            return {"error": exc.code, "message": exc.message, "suggestion": exc.suggestion,
                    "details": exc.details}  # fmt: skip
        except CallEnded as exc:
            return {"error": f"call {exc.call.get('status')}", "message": str(exc)}
        except WaitTimeout as exc:
            # Not always "pending": approved and running, or run with its outcome being
            # checked (unknown), which the model must not take for "not done".
            return {"status": exc.status, "call_id": exc.call.get("id"), "message": exc.advice}


class Transcript:
    """The conversation as the model sees it, saved after every message: its tool-call ids
    name the steps, so they must survive a crash for a rerun to send the same keys."""

    def __init__(self, path: Path, task: str) -> None:
        self.path = path
        self.messages: list[dict[str, Any]] = (
            json.loads(path.read_text())
            if path.exists()
            else [
                {
                    "role": "system",
                    "content": "You help customers. Changes wait for a person's approval.",
                },
                {"role": "user", "content": task},
            ]
        )

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a crash mid-write leaves the previous transcript whole.
        written = self.path.with_suffix(".tmp")
        written.write_text(json.dumps(self.messages))
        written.replace(self.path)

    def unanswered_tool_calls(self) -> list[dict[str, Any]]:
        """The function calls of the last assistant message that have no tool message yet:
        after a crash, those that may have reached Countersign without their answer
        reaching the transcript."""
        assistant = next(
            (
                i
                for i in reversed(range(len(self.messages)))
                if self.messages[i]["role"] == "assistant"
            ),
            None,
        )
        if assistant is None:
            return []
        answered = {m.get("tool_call_id") for m in self.messages[assistant + 1 :]}
        return [
            call
            for call in self.messages[assistant].get("tool_calls") or []
            if call.get("type") == "function" and call["id"] not in answered
        ]


def answer_tool_calls(cs: Countersign, session_id: str, transcript: Transcript) -> None:
    """Run each unanswered tool call with its own id as its step, and save its answer."""
    for call in transcript.unanswered_tool_calls():
        function = call["function"]
        answer = run_tool(cs, session_id, call["id"], function["name"], function["arguments"])
        transcript.add({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(answer)})


def converse(
    cs: Countersign,
    llm: OpenAI,
    tools: list[ChatCompletionToolParam],
    session_id: str,
    transcript: Transcript,
) -> str:
    """Ask the model and run the tools it calls until it answers in words. A resumed
    transcript's unanswered calls are run first: asked again without their answers, the
    model could propose the same write under a new id, which would be a second call."""
    model = os.environ.get("MODEL", "gpt-4o-mini")
    answer_tool_calls(cs, session_id, transcript)
    for _ in range(MAX_TURNS):
        reply = llm.chat.completions.create(
            model=model,
            messages=transcript.messages,  # type: ignore[arg-type]
            tools=tools or omit,  # OpenAI refuses an empty list: an agent without tools
        )
        message = reply.choices[0].message
        transcript.add(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return message.content or ""
        answer_tool_calls(cs, session_id, transcript)
    return "I ran out of turns."


def main(session_id: str, task: str) -> str:
    llm = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
    transcript = Transcript(Path(f"var/transcripts/{session_id}.json"), task)
    with Countersign(os.environ["COUNTERSIGN_URL"], os.environ["COUNTERSIGN_TOKEN"]) as cs:
        tools: list[ChatCompletionToolParam] = cs.tools("openai")  # type: ignore[assignment]
        try:
            return converse(cs, llm, tools, session_id, transcript)
        except errors.MaxRoundsExceeded:
            return "I made as many tool calls as this task may; here is where things stand."


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2]))  # noqa: T201
