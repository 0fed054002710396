"""MCP clients for tests: an organization's admin key, an in-process client as a key's principal, one tool call over
streamable HTTP, and the text of a tool result."""

from __future__ import annotations

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from deployments.mcp_server import build_server
from tasks.tenancy import OrganizationCreate, authenticate, register_organization

__all__ = ["client", "mcp_call", "org", "text"]


def org(pool, slug: str) -> str:
    """A new organization; returns its admin key."""
    _, key = register_organization(pool, OrganizationCreate(name=slug, slug=slug, admin_email=f"ops@{slug}.test",
                                                             admin_name="Ops", password="correct horse battery"))
    return key


def client(settings, pool, key: str, mode: str = "auto", **kw) -> Client:
    """An in-process client as the key's principal ("legacy": over the SDK's in-memory JSON-RPC streams)."""
    principal = authenticate(pool, key)
    return Client(build_server(lambda ctx: principal, settings, **kw), mode=mode)


def text(result) -> str:
    return result.content[0].text


def mcp_call(url: str, key: str, tool: str, arguments: dict):
    """One MCP tool call over streamable HTTP at `url`/mcp with `key`; its result."""

    async def call():
        headers = {"Authorization": f"Bearer {key}"}
        async with Client(streamable_http_client(f"{url}/mcp", http_client=create_mcp_http_client(headers=headers))) \
                as client:
            return await client.call_tool(tool, arguments)

    return anyio.run(call)
