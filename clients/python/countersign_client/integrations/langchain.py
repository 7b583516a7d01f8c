"""Countersign-gated LangChain tools (``StructuredTool``), usable in LangGraph's prebuilt
agents (``create_react_agent``, ``ToolNode``).

    from countersign_client import Countersign
    from countersign_client.integrations.langchain import countersign_tools

    tools = countersign_tools(Countersign(url, token), session_id="task-42")
    agent = create_react_agent(model, tools)

Invoking a tool sends the call through Countersign, waits (long-poll) for the reviewers
and the result, and returns the result as JSON text. A rejection (with the reviewer's
reason), an expiry or a refusal comes back as the tool's error message
(``ToolMessage(status="error")``), not as an exception that ends the run. The step of each
call is the model's tool-call id when LangChain gives one (LangGraph checkpoints keep it,
so a resumed run replays the same key), else the session's next number.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from langchain_core.tools import StructuredTool, ToolException

from countersign_client.aio import AsyncCountersign
from countersign_client.client import Countersign
from countersign_client.integrations._common import Client, Refusal, call_async, call_sync

_tool_call_id: ContextVar[str | None] = ContextVar("countersign_tool_call_id", default=None)


class CountersignTool(StructuredTool):
    """A ``StructuredTool`` that remembers the tool-call id it was invoked for."""

    def run(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        token = _tool_call_id.set(kwargs.get("tool_call_id"))
        try:
            return super().run(tool_input, *args, **kwargs)
        finally:
            _tool_call_id.reset(token)

    async def arun(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        token = _tool_call_id.set(kwargs.get("tool_call_id"))
        try:
            return await super().arun(tool_input, *args, **kwargs)
        finally:
            _tool_call_id.reset(token)


def countersign_tools(
    client: Client, *, session_id: str, tools: list[dict[str, Any]] | None = None, **fields: Any
) -> list[StructuredTool]:
    """The agent's tools as LangChain tools. ``fields`` go with every call
    (``reasoning``, ``on_behalf_of``, ``wait_timeout``...). With an ``AsyncCountersign``,
    pass ``tools`` (``await client.tools("openai")``), since this function is not async."""
    if tools is None:
        if isinstance(client, AsyncCountersign):
            raise TypeError("pass tools=await client.tools('openai') with an AsyncCountersign")
        tools = client.tools("openai")
    return [_tool(client, definition["function"], session_id, fields) for definition in tools]


def _tool(
    client: Client, function: dict[str, Any], session_id: str, fields: dict[str, Any]
) -> StructuredTool:
    name = function["name"]

    def run(**arguments: Any) -> str:
        if not isinstance(client, Countersign):
            raise TypeError("a sync invoke needs the sync Countersign client; use ainvoke")
        try:
            return call_sync(
                client, name, arguments, _tool_call_id.get(), session_id=session_id, **fields
            )
        except Refusal as exc:
            raise ToolException(str(exc)) from exc

    async def arun(**arguments: Any) -> str:
        try:
            return await call_async(
                client, name, arguments, _tool_call_id.get(), session_id=session_id, **fields
            )
        except Refusal as exc:
            raise ToolException(str(exc)) from exc

    return CountersignTool(
        name=name,
        description=function.get("description", ""),
        args_schema=function.get("parameters") or {"type": "object", "properties": {}},
        func=run,
        coroutine=arun,
        handle_tool_error=True,
    )
