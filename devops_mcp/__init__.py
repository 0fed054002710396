"""`devops_mcp`: the Python client of the Developer Mesh "AI Agent Integration" guide, on devmesh.

    from devops_mcp import MCPClient, VectorClient
    mcp_client = MCPClient(base_url="http://localhost:8787/api/v1", api_key=os.getenv("MCP_API_KEY"), timeout=30)
    vector_client = VectorClient(base_url="http://localhost:8787/api/v1", model_id="text-embedding-3-small")
    context = await mcp_client.create_context({"id": "conv-1", "user_id": "ana", "metadata": {"type": "chat"}})
    await vector_client.create_embedding({"context_id": context.id, "content_index": 0, "text": "user: hi"})
    hits = await vector_client.search({"query": "hi", "context_ids": [context.id], "similarity_threshold": 0.5})
    result = await mcp_client.execute_tool("github.create_issue", {"repository": "acme/app", "title": "t"})

A thin layer over `deployments.client.AsyncMesh` (the REST API's client, with its retries and error classes): the
guide's method names, dict arguments and result shapes. It sits above `deployments` in the layering (an entry point
for agents, like the CLI). README "The Developer Mesh guide" lists what differs from the guide and why.
"""

from devops_mcp.clients import ContextRecord, MCPClient, ToolResult, VectorClient

__all__ = ["ContextRecord", "MCPClient", "ToolResult", "VectorClient"]
