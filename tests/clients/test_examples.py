"""examples/: the agent loop with the OpenAI SDK imports and type-checks, and runs against
a live server with a scripted model in the SDK's own types: a refusal is the tool's answer,
and a rerun after a crash answers the saved tool calls with their own keys before asking
the model anything."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from countersign_client.testing import Message, ScriptedModel, final, tool_call
from openai import omit
from openai.types.chat import ChatCompletion

from approvals.models import ToolCall
from tests.conftest import World
from tests.support import ROOT
from tests.support.reviewer import reviewing
from tools_registry.models import Tool

EXAMPLE = ROOT / "examples" / "openai_agent_loop.py"
EMAIL_ARGS = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("openai_agent_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedOpenAI:
    """The part of the ``OpenAI`` client the example uses, answering with a scripted
    model's turns as the SDK's own ``ChatCompletion``."""

    def __init__(self, model: ScriptedModel) -> None:
        self.model = model
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, *, model: str, messages: list[Message], tools: Any = omit) -> ChatCompletion:
        # As OpenAI's API does: 400 "Invalid 'tools': empty array. Expected an array with
        # minimum length 1"; an agent without tools must send none.
        assert tools != [], "OpenAI refuses an empty tools list"
        message = self.model.complete(messages)
        finish_reason = "tool_calls" if message.get("tool_calls") else "stop"
        return ChatCompletion.model_validate(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
            }
        )


@pytest.fixture
def example(
    live_world: World, live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    """The example, run in a scratch directory (its transcripts and keys) as the live
    world's agent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COUNTERSIGN_STATE_DIR", raising=False)
    monkeypatch.setenv("COUNTERSIGN_URL", live_server.url)
    monkeypatch.setenv("COUNTERSIGN_TOKEN", live_world.token)
    return load_example()


def script(example: ModuleType, monkeypatch: pytest.MonkeyPatch, model: ScriptedModel) -> None:
    monkeypatch.setattr(example, "OpenAI", lambda: ScriptedOpenAI(model))


def test_the_openai_example_imports() -> None:
    module = load_example()
    assert callable(module.main) and callable(module.run_tool)


def test_the_openai_example_type_checks(tmp_path: object) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--config-file", "/dev/null", "--strict",
            "--ignore-missing-imports", "--cache-dir", str(ROOT / ".mypy_cache" / "examples"),
            "--follow-imports", "silent", str(EXAMPLE),
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={"MYPYPATH": str(ROOT / "clients" / "python"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.django_db(transaction=True)
def test_every_refusal_goes_back_to_the_model(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ScriptedModel(
        [
            [tool_call("launch_rocket", {}, id="call_rocket")],
            lambda messages: final(json.loads(messages[-1]["content"])["error"]),
        ]
    )
    script(example, monkeypatch, model)
    assert example.main("task-1", "Launch the rocket.") == "unknown_tool"


@pytest.mark.django_db(transaction=True)
def test_a_rerun_after_a_crash_answers_the_saved_tool_calls_with_their_own_keys(
    example: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The agent is killed while its email waits for a reviewer, after the customer lookup
    of the same turn was answered. The rerun sends the email's call again under its own id
    (so its own key: the same call) before asking the model, which then sees its answer; a
    model asked without it could propose the email again under a new id: a second call."""
    real_run_tool = example.run_tool
    ran: list[str] = []
    killed_at = {"call_mail"}

    def run_tool(cs: Any, session_id: str, call_id: str, name: str, raw: str) -> Any:
        ran.append(call_id)
        if call_id in killed_at:
            cs.submit(name, json.loads(raw), session_id=session_id, step=call_id)
            raise SystemExit("killed while waiting for the reviewer")
        return real_run_tool(cs, session_id, call_id, name, raw)

    def reviewer_still_away(cs: Any, call_id: str, **wait: Any) -> Any:
        raise example.WaitTimeout({"id": call_id, "status": "pending"})

    monkeypatch.setattr(example, "run_tool", run_tool)
    monkeypatch.setattr(example.Countersign, "wait", reviewer_still_away)
    lookup = tool_call("get_customer", {"customer_id": "cus_0002"}, id="call_lookup")
    mail_call = tool_call("send_email", EMAIL_ARGS, id="call_mail")
    script(example, monkeypatch, ScriptedModel([[lookup, mail_call]]))
    with pytest.raises(SystemExit):
        example.main("task-42", "Tell Grace her refund is on its way.")
    assert ran == ["call_lookup", "call_mail"]
    mail = ToolCall.objects.get(tool__name="send_email")

    def model_on_the_rerun(messages: list[Message]) -> Message | list[Message]:
        if messages[-1].get("tool_call_id") == "call_mail":
            return final("A person will approve the email.")
        return [tool_call("send_email", EMAIL_ARGS, id="call_mail_again")]

    ran.clear()
    killed_at.clear()
    script(example, monkeypatch, ScriptedModel([model_on_the_rerun]))
    answer = example.main("task-42", "Tell Grace her refund is on its way.")
    assert ran == ["call_mail"], "only the unanswered call runs again: the lookup's was saved"
    assert answer == "A person will approve the email."
    assert list(ToolCall.objects.filter(tool__name="send_email")) == [mail]
    saved = json.loads((tmp_path / "var" / "transcripts" / "task-42.json").read_text())
    replies = [m for m in saved if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in replies] == ["call_lookup", "call_mail"]
    fed = json.loads(replies[1]["content"])
    assert (fed["status"], fed["call_id"]) == ("pending", str(mail.pk))
    assert "approval" in fed["message"] and "Do not propose it again" in fed["message"]


@pytest.mark.django_db(transaction=True)
def test_a_call_a_reviewer_corrected_tells_the_model_what_ran(
    example: ModuleType, live_world: World, live_server: Any
) -> None:
    corrected = {**EMAIL_ARGS, "to": "grace@example.com"}
    with (
        reviewing(live_world.bob, correct=lambda call: corrected),
        example.Countersign(live_server.url, live_world.token) as cs,
    ):
        answer = example.run_tool(cs, "task-9", "call_mail", "send_email", json.dumps(EMAIL_ARGS))
    assert answer["result"]["status"] == "sent"
    assert answer["arguments_edited"] is True and answer["arguments"] == corrected


@pytest.mark.django_db(transaction=True)
def test_an_agent_without_tools_sends_the_model_none(
    example: ModuleType, live_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent whose tools were all taken away sent ``tools=[]``, which OpenAI refuses:
    every task failed with a 400 instead of the model answering in words."""
    live_world.agent.allowed_tools.clear()
    script(example, monkeypatch, ScriptedModel([final("I have no tools for that.")]))
    assert example.main("task-1", "Refund pay_0001.") == "I have no tools for that."


@pytest.mark.django_db(transaction=True)
def test_a_long_rate_limit_is_the_models_answer_not_a_sleep(
    example: ModuleType, live_world: World, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool limited per day answers Retry-After: hours; the example slept it out, holding
    the task (and its user) for up to a day. A short one is still waited out."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if seconds > 60:
            raise AssertionError(f"the example slept {seconds} s")

    monkeypatch.setattr(time, "sleep", sleep)
    Tool.objects.filter(name="get_customer").update(rate_limit_per_agent="1/day")
    lookup = json.dumps({"customer_id": "cus_0002"})
    with example.Countersign(live_server.url, live_world.token) as cs:
        assert example.run_tool(cs, "task-1", "call_1", "get_customer", lookup)["result"]
        answer = example.run_tool(cs, "task-1", "call_2", "get_customer", lookup)
    assert answer["error"] == "rate_limited" and answer["retry_after"] > 60
    assert "suggestion" in answer and slept == []
