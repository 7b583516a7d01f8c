"""A complete agent loop: the OpenAI SDK's Chat Completions, pointed at any
OpenAI-compatible endpoint, proposing tool calls that Countersign gates.

    pip install openai ./clients/python
    export OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_API_KEY=... MODEL=llama3.1
    export COUNTERSIGN_URL=http://127.0.0.1:8000 COUNTERSIGN_TOKEN=$(cat var/demo_agent_token)
    python examples/openai_agent_loop.py task-42 "Refund pay_0001 and tell the customer."

Each tool call goes through Countersign: reads answer at once, writes wait for a reviewer
(the client long-polls), and every refusal comes back to the model as the tool's answer,
with Countersign's suggestion. The model's tool-call ids are the steps, so running the same
task again after a crash, with the transcript it saved, sends the same Idempotency-Keys and
gets the same calls: nothing runs twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from countersign_client import CallEnded, CallRejected, Countersign, WaitTimeout, errors
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

MAX_TURNS = 20


def run_tool(cs: Countersign, session_id: str, call_id: str, name: str, raw: str) -> dict[str, Any]:
    """One tool call through Countersign; whatever happens is an answer for the model."""
    try:
        arguments = json.loads(raw or "{}")
    except ValueError as exc:
        return {"error": "invalid_json", "message": str(exc)}
    while True:
        try:
            return {
                "result": cs.call(
                    name, arguments, session_id=session_id, step=call_id, wait_timeout=600
                )
            }
        except errors.RateLimited as exc:
            time.sleep(exc.retry_after or 1)  # same step, same key: the refusal took nothing
        except CallRejected as exc:
            return {
                "error": "rejected",
                "reason": exc.comment,
                "advice": "Do not retry; tell the user.",
            }
        except (errors.InvalidArguments, errors.ToolFailed, errors.ToolNotAllowed) as exc:
            return {"error": exc.code, "message": exc.message, "suggestion": exc.suggestion,
                    "details": exc.details}  # fmt: skip
        except CallEnded as exc:
            return {"error": f"call {exc.call.get('status')}", "message": str(exc)}
        except WaitTimeout as exc:
            return {"status": "pending", "call_id": exc.call.get("id")}


def main(session_id: str, task: str) -> str:
    model = os.environ.get("MODEL", "gpt-4o-mini")
    llm = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
    transcript_path = Path(f"var/transcripts/{session_id}.json")
    with Countersign(os.environ["COUNTERSIGN_URL"], os.environ["COUNTERSIGN_TOKEN"]) as cs:
        tools: list[ChatCompletionToolParam] = cs.tools("openai")  # type: ignore[assignment]
        messages: list[ChatCompletionMessageParam] = (
            json.loads(transcript_path.read_text())
            if transcript_path.exists()
            else [
                {
                    "role": "system",
                    "content": "You help customers. Changes wait for a person's approval.",
                },
                {"role": "user", "content": task},
            ]
        )
        for _ in range(MAX_TURNS):
            reply = llm.chat.completions.create(model=model, messages=messages, tools=tools)
            message = reply.choices[0].message
            messages.append(message.model_dump(exclude_none=True))  # type: ignore[arg-type]
            transcript_path.parent.mkdir(parents=True, exist_ok=True)
            transcript_path.write_text(json.dumps(messages))  # the ids survive a crash
            if not message.tool_calls:
                return message.content or ""
            for call in message.tool_calls:
                if call.type != "function":
                    continue
                try:
                    answer = run_tool(
                        cs, session_id, call.id, call.function.name, call.function.arguments
                    )
                except errors.MaxRoundsExceeded:
                    return "I made as many tool calls as this task may; here is where things stand."
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(answer)}
                )
    return "I ran out of turns."


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2]))  # noqa: T201
