"""Run by the tests in the agent-clients virtual environment (its own `mcp` 1.x): the
OpenAI Agents SDK's MCP client lists Countersign's tools and calls a read tool. Prints
one JSON object on its last line."""

from __future__ import annotations

import asyncio
import json
import sys

from agents.mcp import MCPServerStreamableHttp


async def main(url: str, token: str) -> None:
    params = {"url": url, "headers": {"Authorization": f"Bearer {token}"}, "timeout": 30}
    async with MCPServerStreamableHttp(params=params, name="countersign") as server:
        tools = await server.list_tools()
        result = await server.call_tool("search_docs", {"query": "refund"})
    print(
        json.dumps(
            {
                "tools": sorted(t.name for t in tools),
                "annotations": {
                    t.name: t.annotations.model_dump(exclude_none=True) if t.annotations else None
                    for t in tools
                },
                "is_error": result.isError,
                "structured": result.structuredContent,
                "text": [c.text for c in result.content if c.type == "text"],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
