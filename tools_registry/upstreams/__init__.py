"""Upstreams: tools that live in another system, imported without code.

``secrets`` keeps their header values encrypted at rest; ``openapi`` and ``mcp`` read what
an HTTP API's OpenAPI document or an MCP server offers (``ImportedTool``s); ``sync``
applies that to the Tool rows (audited); ``http`` and ``mcp`` are the connectors the
executor calls them through; ``tools_registry.sources`` picks a tool's implementation.
"""
