"""The MCP endpoint, ``/mcp``: the second door onto the same intake as the REST API.

``app`` is the ASGI endpoint (bearer tokens, sessions, the SDK's Streamable HTTP
transport); ``server`` is the official SDK's server with Countersign's handlers; ``calls``
turns a ``tools/call`` into a submission and its answer into a ``CallToolResult``;
``tasks`` serves calls that wait for a person as MCP tasks (protocol 2025-11-25);
``waiting`` waits for a call to settle without holding a thread; ``threads`` runs the
synchronous Django code the handlers need. See docs/mcp.md.
"""
