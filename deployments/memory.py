"""`Memory`: the in-process entry point for Python agents — store conversations and documents, recall them.

    from deployments.memory import Memory
    memory = Memory(tenant="acme")                         # embedded defaults unless DEVMESH_* say otherwise
    ctx = memory.create_context(user_id="ana", agent_id="copilot")
    memory.append(ctx.id, [{"role": "user", "content": "The payments deploy failed with OOMKilled"}])
    memory.search("out of memory", user_id="ana")          # across Ana's conversations
"""

from __future__ import annotations

from blocks.settings import Settings
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks.context_index import append_messages
from tasks.context_models import AppendResult, Context, ContextPage, ContextSummary, SimilarContext
from tasks.contexts import (
    context_scope, context_summary, create_context, delete_context, find_similar, get_context, search_contexts,
    user_scope,
)
from tasks.registry import resolve_model
from tasks.runtime import Runtime
from tasks.search import SearchHit, SearchRequest

__all__ = ["Memory"]


class Memory:
    """One tenant's memory: contexts (conversations), documents and search, without a flow run per call."""

    def __init__(self, tenant: str | None = None, settings: Settings | None = None, *,
                 runtime: Runtime | None = None) -> None:
        self.runtime = runtime if runtime is not None else Runtime(settings)
        self.settings = self.runtime.settings
        self.tenant = tenant or self.settings.tenant
        self.pool = self.runtime.pool()

    @property
    def embedder(self):
        """The tenant's default model's embedder, else the configured one."""
        return self.runtime.embedder_for(self.tenant)

    def create_context(self, **fields) -> Context:
        """A new conversation context (name, user_id, agent_id, session_id, type, metadata, ttl_seconds ...);
        what is not given comes from settings.contexts (max size, encryption)."""
        return create_context(self.pool, self.tenant, fields, defaults=self.settings.contexts)

    def append(self, context_id, messages: list[dict]) -> AppendResult:
        """Append messages atomically; only they are chunked and embedded."""
        return append_messages(self.pool, self.tenant, context_id, messages, embedder=self.embedder,
                               chunk=self.settings.chunk, max_messages=self.settings.contexts.max_append_messages,
                               max_bytes=self.settings.contexts.max_append_bytes)

    def get(self, context_id, *, offset: int = 0, limit: int = 100) -> ContextPage:
        """A context and a page of its messages (negative offset: from the end)."""
        return get_context(self.pool, self.tenant, context_id, offset=offset, limit=limit)

    def summary(self, context_id) -> ContextSummary:
        """Counts, token estimate and time span of a context."""
        return context_summary(self.pool, self.tenant, context_id)

    def delete(self, context_id) -> bool:
        """Delete a context with its messages and chunks."""
        return delete_context(self.pool, self.tenant, context_id)

    def remember(self, document_id: str, text: str, **metadata) -> dict:
        """Store (or update) a document; unchanged text costs nothing. Returns the ingest's summary (the dict the
        `ingest` flow returns)."""
        request = IngestRequest(tenant=self.tenant, documents=[DocumentSpec(document_id=document_id, text=text,
                                                                            metadata=metadata)])
        return ingest_documents(request, self.runtime).summary()

    def search(self, query: str, *, context_id=None, user_id: str | None = None, mode: str = "hybrid",
               limit: int = 10, **options) -> list[SearchHit]:
        """Search one context, one user's conversations, or (neither given) everything of the tenant."""
        if context_id is not None:
            request = context_scope(self.tenant, context_id, query, mode=mode, limit=limit, **options)
        elif user_id is not None:
            request = user_scope(self.tenant, user_id, query, mode=mode, limit=limit, **options)
        else:
            return search_now(SearchRequest(query=query, tenant=self.tenant, mode=mode, limit=limit, **options),
                              self.runtime)
        return search_contexts(self.pool, request, embedder=self.embedder, settings=self.settings.search)

    def similar(self, context_id, limit: int = 5) -> list[SimilarContext]:
        """Conversations most like this one (itself excluded)."""
        embedder = self.embedder
        return find_similar(self.pool, self.tenant, context_id, model=resolve_model(self.pool, embedder.model_id),
                            limit=limit, settings=self.settings.search)
