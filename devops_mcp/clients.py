"""MCPClient (contexts, tools) and VectorClient (embeddings, search) with the Developer Mesh guide's signatures.

Defaults, when an argument is None: the base URL from MCP_BASE_URL / VECTOR_API_URL (the variables the guide reads),
else settings.client (devmesh.yaml api.mcp_server.url / api.vector_api.url); the API key from MCP_API_KEY, API_KEY or
DEVMESH_API_KEY; timeout, retries and connection pool from settings.client. A base URL may end in /api/v1, as the
guide writes it, or be the server's root.

Each client makes its AsyncMesh (httpx) on first use inside a running event loop, and a new one when called from
another loop: a client built at import time, as the guide's are, keeps working across `asyncio.run` calls.

`execute_tool` acts (dry_run=False), as the guide expects; the server's policy still decides, and an operation
it denies, or one awaiting a human's approval, is a ToolResult with success False saying so. Bad input, a
missing or expired key and an unreachable server raise the error classes of blocks/errors.py.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from blocks.errors import ApprovalRejected, ConfigError, InputError, OperationDenied
from blocks.settings import Settings
from deployments.client import ApprovalRequired, AsyncMesh
from deployments.client_models import Context

__all__ = ["ContextRecord", "MCPClient", "ToolResult", "VectorClient"]

KEY_VARIABLES = ("MCP_API_KEY", "API_KEY", "DEVMESH_API_KEY")
_CONTEXT_FIELDS = {"id", "content", "user_id", "agent_id", "session_id", "type", "metadata", "ttl_seconds",
                   "max_messages", "max_bytes", "encrypted"}
_DONE = ("succeeded", "done", "planned")


class ContextRecord(Context):
    """A context as the guide reads it: `id` is the id its client chose (else the server's uuid), `uuid` the
    server's id, `metadata` as stored; every other field of the API's context too."""

    uuid: str


class ToolResult(BaseModel):
    """The outcome of execute_tool: `success`, the operation's `data` (GitHub's issue with html_url, a search's
    items ...), its `status` (succeeded, planned, awaiting_approval, denied, rejected, done) and why not, if not."""

    model_config = ConfigDict(extra="allow")
    success: bool
    data: dict[str, Any] = Field(default_factory=dict)
    status: str
    operation_id: str | None = None
    error: str | None = None


def _known(data: dict[str, Any], allowed: set[str], method: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"expected a dict of arguments, got {type(data).__name__}", item=method)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"unknown keys {unknown}; known: {sorted(allowed)}", item=method)
    return data


def _required(data: dict[str, Any], key: str, method: str) -> Any:
    if data.get(key) is None:
        raise InputError(f"{key!r} is required", item=method)
    return data[key]


class _Client:
    """What both clients share: where the API is, the key, and one AsyncMesh per event loop."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float | None, *, url_variable: str,
                 default_url: str, settings: Settings | None, transport: httpx.AsyncBaseTransport | None,
                 max_retries: int | None) -> None:
        self.settings = settings or Settings()
        options = self.settings.client
        url = base_url or os.environ.get(url_variable) or default_url
        self.base_url = url.rstrip("/")
        self._root = self.base_url.removesuffix("/api/v1")
        self._key = api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        if not self._key:
            raise ConfigError(f"no API key: pass api_key=... or set {' or '.join(KEY_VARIABLES)} (registering an "
                              "organization returns one: POST /api/v1/auth/register/organization)")
        self.timeout = float(timeout if timeout is not None else options.timeout_s)
        self._retries = max_retries if max_retries is not None else options.retry_attempts
        self._pool_size = options.pool_size
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncMesh | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key='***')"

    def _mesh(self) -> AsyncMesh:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            transport = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=self._pool_size, max_keepalive_connections=self._pool_size))
            self._client, self._loop = AsyncMesh(self._root, self._key, timeout=self.timeout,
                                                 max_retries=self._retries, transport=transport), loop
        return self._client

    async def aclose(self) -> None:
        """Close the connections of the current event loop's client."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._loop = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _record(context: Context) -> ContextRecord:
    data = context.model_dump()
    return ContextRecord.model_validate({**data, "id": context.name or context.id, "uuid": context.id})


class MCPClient(_Client):
    """Contexts and tools of the devmesh API, as the guide's `MCPClient(base_url, api_key, timeout)`.

    Args:
        base_url: The API, e.g. http://localhost:8787/api/v1 (default: MCP_BASE_URL, else settings.client.base_url).
        api_key: A devmesh API key (default: MCP_API_KEY, API_KEY or DEVMESH_API_KEY).
        timeout: Seconds per request (default: settings.client.timeout_s).
        dry_run: True makes execute_tool plan and check the policy only.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float | None = None, *,
                 dry_run: bool = False, settings: Settings | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, max_retries: int | None = None) -> None:
        settings = settings or Settings()
        super().__init__(base_url, api_key, timeout, url_variable="MCP_BASE_URL",
                         default_url=settings.client.base_url, settings=settings, transport=transport,
                         max_retries=max_retries)
        self.dry_run = dry_run

    async def create_context(self, data: dict[str, Any]) -> ContextRecord:
        """A new context from {"id"?, "user_id"?, "metadata"?, "content"?, ...}; `id` is yours to choose."""
        fields = dict(_known(data, _CONTEXT_FIELDS, "create_context"))
        name = fields.pop("id", None)
        return _record(await self._mesh().create_context(name=name, **fields))

    async def get_context(self, context_id: str) -> ContextRecord:
        """The context (its id, metadata, owners, counts), by the id you chose or its uuid."""
        _required({"context_id": context_id}, "context_id", "get_context")
        return _record((await self._mesh().get_context(str(context_id), limit=0)).context)

    async def update_context(self, context_id: str, data: dict[str, Any]) -> ContextRecord:
        """{"metadata": {...}} merged into the context's metadata ({"replace": True} to replace it)."""
        _known(data, {"metadata", "replace"}, "update_context")
        metadata = _required(data, "metadata", "update_context")
        return _record(await self._mesh().update_context(str(context_id), metadata,
                                                         replace=bool(data.get("replace", False))))

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool: name, description, input_schema, read_only, destructive."""
        return [tool.model_dump() for tool in await self._mesh().list_tools()]

    async def execute_tool(self, name: str, params: dict[str, Any] | None = None) -> ToolResult:
        """Run a tool through the guard; `.success` and `.data` (the operation's result) as the guide reads them."""
        try:
            out = await self._mesh().execute_tool(name, params or {}, dry_run=self.dry_run)
        except OperationDenied as exc:
            return ToolResult(success=False, status="denied", error=str(exc))
        except ApprovalRequired as exc:
            return ToolResult(success=False, status="approval_required", operation_id=exc.operation_id,
                              data={"plan": exc.plan}, error=str(exc))
        except ApprovalRejected as exc:
            return ToolResult(success=False, status="rejected", error=str(exc))
        data = out.result if isinstance(out.result, dict) else {"result": out.result}
        if out.status == "planned":
            data = {**data, "plan": out.plan}
        elif out.status == "awaiting_approval":
            data = {**data, "plan": out.plan, "flow_run_id": out.flow_run_id,
                    "approve_with": f"devmesh approve {out.operation_id}"}
        return ToolResult(success=out.status in _DONE, data=data, status=out.status, operation_id=out.operation_id,
                          error=None if out.status in _DONE else f"the operation is {out.status}")


def _hit(hit) -> dict[str, Any]:
    meta = hit.metadata
    return {"text": hit.text, "similarity": hit.similarity if hit.similarity is not None else hit.score,
            "score": hit.score, "context_id": meta.get("context_name") or meta.get("context_id"), "metadata": meta,
            "document_id": hit.document_id, "chunk_id": hit.chunk_id, "relevance": hit.relevance}


class VectorClient(_Client):
    """Embeddings and search of the devmesh API, as the guide's `VectorClient(base_url, api_key, model_id)`.

    Args:
        base_url: The API (default: VECTOR_API_URL, else settings.client.vector_url or base_url).
        api_key: A devmesh API key (default: MCP_API_KEY, API_KEY or DEVMESH_API_KEY).
        model_id: The embedding model to store and search with (default: the server's). The server needs an
            embedder for it (settings.embedders); Anthropic models cannot embed and are refused here.
        mode: How `search` ranks: vector (cosine, the guide's), hybrid or keyword.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model_id: str | None = None,
                 timeout: float | None = None, *, mode: str = "vector", settings: Settings | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, max_retries: int | None = None) -> None:
        settings = settings or Settings()
        if model_id is not None:
            from blocks.embedders import check_embedding_model  # Anthropic has no embeddings: say so now

            check_embedding_model(model_id)
        super().__init__(base_url, api_key, timeout, url_variable="VECTOR_API_URL",
                         default_url=settings.client.vector_url or settings.client.base_url, settings=settings,
                         transport=transport, max_retries=max_retries)
        self.model_id, self.mode = model_id, mode

    async def create_embedding(self, data: dict[str, Any]) -> dict[str, Any]:
        """Embed and store {"context_id", "content_index", "text", "metadata"?} (a position again: replaced)."""
        _known(data, {"context_id", "content_index", "text", "metadata", "model_id"}, "create_embedding")
        context_id, index, text = (_required(data, key, "create_embedding")
                                   for key in ("context_id", "content_index", "text"))
        stored = await self._mesh().store_text(str(context_id), index, text, metadata=data.get("metadata"),
                                               model=data.get("model_id") or self.model_id)
        return stored.model_dump()

    async def search(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """{"query", "context_ids"?, "limit"?, "similarity_threshold"?, "filters"?} -> hits, best first, each
        {"text", "similarity", "context_id", "metadata", ...}; filters match the contexts' fields (user_id, type,
        agent_id, session_id) and the texts' metadata."""
        _known(data, {"query", "context_ids", "limit", "similarity_threshold", "filters", "mode", "model_id"},
               "search")
        hits = await self._mesh().search(
            _required(data, "query", "search"), mode=data.get("mode") or self.mode, limit=data.get("limit") or 10,
            filters=data.get("filters") or None, context_ids=data.get("context_ids"),
            model=data.get("model_id") or self.model_id, min_similarity=data.get("similarity_threshold"))
        return [_hit(h) for h in hits.hits]

    async def list_embeddings(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """{"context_id", "limit"?} -> the context's stored chunks in order, each {"embedding", "model_id", ...}."""
        _known(data, {"context_id", "limit"}, "list_embeddings")
        page = await self._mesh().context_embeddings(str(_required(data, "context_id", "list_embeddings")),
                                                     limit=data.get("limit") or 100, include_vectors=True)
        return [{"embedding": e.vector, "model_id": e.model, "dimensions": e.dimensions, "chunk_id": e.chunk_id,
                 "seq": e.seq, "context_id": str(data["context_id"])} for e in page.items]

    async def search_by_embedding(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """{"embedding", "model_id", "limit"?, "filters"?, "similarity_threshold"?} -> hits as `search` gives."""
        _known(data, {"embedding", "model_id", "limit", "filters", "similarity_threshold"}, "search_by_embedding")
        model = data.get("model_id") or self.model_id
        if model is None:
            raise InputError("'model_id' is required: the model the embedding was made with",
                             item="search_by_embedding")
        hits = await self._mesh().search_vector(_required(data, "embedding", "search_by_embedding"), model,
                                                limit=data.get("limit") or 10, filters=data.get("filters") or None,
                                                min_similarity=data.get("similarity_threshold"))
        return [_hit(h) for h in hits.hits]
