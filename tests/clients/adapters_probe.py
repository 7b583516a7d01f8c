"""Run by the adapter tests in the agent-clients virtual environment, where
``countersign-client[langchain,openai-agents]`` and LangGraph are installed: builds the
framework's own tool objects through the adapter and invokes them as the framework does,
with no model (LangGraph's prebuilt agent gets a scripted one). Prints one JSON object on
its last line."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from typing import Any

from countersign_client import AsyncCountersign, Countersign, DirectoryState, MemoryState

APPROVED = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}
REJECTED = {"to": "ada@example.com", "subject": "reject me", "body": "Please."}


def langchain(url: str, token: str) -> dict[str, Any]:
    from countersign_client.integrations.langchain import countersign_tools
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import StructuredTool

    with Countersign(url, token, state=MemoryState()) as cs:
        tools = {t.name: t for t in countersign_tools(cs, session_id="lc-1", wait_timeout=60)}
        read = tools["search_docs"].invoke({"query": "refund"})
        approved = tools["send_email"].invoke(
            {"name": "send_email", "args": APPROVED, "id": "lc-call-1", "type": "tool_call"}
        )
        rejected = tools["send_email"].invoke(
            {"name": "send_email", "args": REJECTED, "id": "lc-call-2", "type": "tool_call"}
        )
        steps = sorted(cs.state.steps("lc-1"))
    assert isinstance(approved, ToolMessage) and isinstance(rejected, ToolMessage)
    return {
        "types": sorted({type(t).__mro__[1].__name__ for t in tools.values()}),
        "structured": all(isinstance(t, StructuredTool) for t in tools.values()),
        "read": json.loads(read),
        "approved": json.loads(approved.content),
        "rejected": [rejected.status, rejected.content],
        "steps": steps,
        "schema": tools["send_email"].args,
    }


def langgraph(url: str, token: str) -> dict[str, Any]:
    """LangGraph's prebuilt ReAct agent with the adapter's tools and a scripted model that
    asks for a read, a write that is approved and one that is rejected, at once. The agent
    is run twice with the same state directory, as a rerun after a crash would be."""
    from countersign_client.integrations.langchain import countersign_tools
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage
    from langgraph.prebuilt import create_react_agent

    class ScriptedModel(GenericFakeChatModel):
        """Answers with the scripted messages in order; the tools it is bound to change
        nothing (it is not a model)."""

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    requests = [
        {"name": "search_docs", "args": {"query": "refund"}, "id": "lg-call-1"},
        {"name": "send_email", "args": APPROVED, "id": "lg-call-2"},
        {"name": "send_email", "args": REJECTED, "id": "lg-call-3"},
    ]

    def run(state_dir: str) -> list[dict[str, Any]]:
        script = iter([AIMessage(content="", tool_calls=requests), AIMessage(content="Done.")])
        with Countersign(url, token, state=DirectoryState(state_dir)) as cs:
            tools = countersign_tools(cs, session_id="lg-1", wait_timeout=60)
            agent = create_react_agent(ScriptedModel(messages=script), tools)
            out = agent.invoke({"messages": [("user", "Refund Ada and tell her.")]})
            steps = sorted(cs.state.steps("lg-1"))
        answers = [m for m in out["messages"] if isinstance(m, ToolMessage)]
        return [
            {"id": m.tool_call_id, "status": m.status, "content": m.content, "steps": steps}
            for m in answers
        ] + [{"final": out["messages"][-1].content}]

    with tempfile.TemporaryDirectory() as state_dir:
        first = run(state_dir)
        again = run(state_dir)
    return {"first": first, "again": again}


async def openai_agents(url: str, token: str) -> dict[str, Any]:
    from agents import FunctionTool
    from agents.strict_schema import ensure_strict_json_schema
    from agents.tool_context import ToolContext
    from countersign_client.integrations.openai_agents import countersign_tools

    async with AsyncCountersign(url, token, state=MemoryState()) as cs:
        tools = {t.name: t for t in await countersign_tools(cs, session_id="oa-1", wait_timeout=60)}
        exported = {d["name"]: d["parameters"] for d in await cs.tools("openai-responses")}

        async def invoke(name: str, arguments: dict[str, Any], call_id: str) -> str:
            raw = json.dumps(arguments)
            ctx = ToolContext(
                context=None, tool_name=name, tool_call_id=call_id, tool_arguments=raw
            )
            return str(await tools[name].on_invoke_tool(ctx, raw))

        read = await invoke("search_docs", {"query": "refund", "limit": None}, "oa-call-0")
        approved = await invoke("send_email", APPROVED, "oa-call-1")
        rejected = await invoke("send_email", REJECTED, "oa-call-2")
        steps = sorted(cs.state.steps("oa-1"))
    return {
        "function_tools": all(isinstance(t, FunctionTool) for t in tools.values()),
        "strict": all(t.strict_json_schema for t in tools.values()),
        # The SDK leaves the schemas as they are: they are already strict.
        "unchanged": all(t.params_json_schema == exported[n] for n, t in tools.items()),
        "fixed_point": all(
            ensure_strict_json_schema(json.loads(json.dumps(s))) == s for s in exported.values()
        ),
        "update_changes_required": exported["update_customer"]["properties"]["changes"]["required"],
        "read": json.loads(read),
        "approved": json.loads(approved),
        "rejected": rejected,
        "steps": steps,
    }


if __name__ == "__main__":
    which, url, token = sys.argv[1:4]
    if which == "openai_agents":
        seen = asyncio.run(openai_agents(url, token))
    else:
        seen = langchain(url, token) if which == "langchain" else langgraph(url, token)
    print(json.dumps(seen))
