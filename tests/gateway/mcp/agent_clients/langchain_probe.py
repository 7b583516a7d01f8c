"""Run by the tests in the agent-clients virtual environment (its own `mcp` 1.x):
langchain-mcp-adapters loads Countersign's tools as LangChain tools (what LangGraph's
prebuilt agents take) and invokes a read tool. Prints one JSON object on its last line."""

from __future__ import annotations

import asyncio
import json
import sys

from langchain_core.tools import BaseTool
from langchain_mcp_adapters.client import MultiServerMCPClient


async def main(url: str, token: str) -> None:
    client = MultiServerMCPClient(
        {
            "countersign": {
                "transport": "streamable_http",
                "url": url,
                "headers": {"Authorization": f"Bearer {token}"},
            }
        }
    )
    tools = await client.get_tools()
    by_name: dict[str, BaseTool] = {tool.name: tool for tool in tools}
    answer = await by_name["get_customer"].ainvoke({"customer_id": "cus_0002"})
    refused = await by_name["send_email"].ainvoke({"to": "not-an-address"})
    # Each invocation opens an MCP session of its own: the write sent again (the model
    # calling the tool again instead of countersign_wait) is still the one call.
    email = {"to": "ada@example.com", "subject": "Your refund", "body": "It is on its way."}
    pending = [str(await by_name["send_email"].ainvoke(email)) for _ in range(2)]
    print(
        json.dumps(
            {
                "tools": sorted(by_name),
                "schema": by_name["send_email"].args_schema
                if isinstance(by_name["send_email"].args_schema, dict)
                else by_name["send_email"].args_schema.model_json_schema(),
                "answer": str(answer),
                "refused": str(refused),
                "pending": pending,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
