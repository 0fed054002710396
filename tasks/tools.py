"""The tool catalog every agent surface shares (REST, MCP, Python client, the assistant): every guarded operation
plus the memory tools implemented here, and their OpenAI / Anthropic tool definitions.

Operations run through the guard (flows.operate.run_operation), never from here; memory tools run here, over
a MemoryScope that fixes the tenant, the user and the current context (a model cannot widen it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field

from blocks.embedders.base import Embedder
from blocks.errors import InputError
from blocks.llm import tool_name_from_wire, wire_tool_name
from blocks.settings import SearchSettings
from tasks.context_models import parse_input
from tasks.contexts import context_scope, search_contexts, user_scope
from tasks.ops.base import operations
from tasks.search import SearchRequest

__all__ = ["MEMORY_TOOLS", "MemoryScope", "MemorySearchInput", "Tool", "is_memory_tool", "list_tools",
           "run_memory_tool", "to_anthropic", "to_openai", "tool_name_from_provider"]

HIT_CHARS = 1500  # text of one hit shown to a model


class Tool(BaseModel):
    """One tool: name (an operation's, e.g. `github.create_issue`, or `memory.search`), what it does, its input's
    JSON schema, and whether it only reads / may destroy."""

    model_config = ConfigDict(frozen=True)
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    destructive: bool = False


class MemorySearchInput(BaseModel):
    """Search stored conversations and documents."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=2000, description="What to look for.")
    scope: Literal["context", "user", "all"] = Field(
        "user", description="context: this conversation; user: all of this user's conversations; all: the tenant's "
                            "documents and this user's conversations.")
    mode: Literal["hybrid", "vector", "keyword"] = Field("hybrid", description="Ranking: hybrid, vector or keyword.")
    limit: int = Field(5, ge=1, le=20, description="Hits to return.")


MEMORY_TOOLS: dict[str, tuple[str, type[BaseModel]]] = {
    "memory.search": ("Search memory (past conversations and stored documents such as runbooks) by meaning and "
                      "keywords; returns ranked text passages.", MemorySearchInput),
}


@dataclass(frozen=True)
class MemoryScope:
    """What memory tools may read: one tenant, one user, the current context."""

    pool: ConnectionPool
    tenant: str
    user_id: str | None
    context_id: UUID | None
    embedder: Embedder | None
    search: SearchSettings


def list_tools(names: list[str] | None = None) -> list[Tool]:
    """Every tool sorted by name, or only `names` (an allowlist; an unknown name is an InputError)."""
    tools = [Tool(name=name, description=text, input_schema=model.model_json_schema(), read_only=True)
             for name, (text, model) in MEMORY_TOOLS.items()]
    tools += [Tool(name=op.name, description=_describe(op), input_schema=op.schema(), read_only=not op.mutating,
                   destructive=op.destructive) for op in operations()]
    tools.sort(key=lambda t: t.name)
    if names is None:
        return tools
    known = {t.name for t in tools}
    unknown = sorted(set(names) - known)
    if unknown:
        raise InputError(f"unknown tools {unknown}; known: {', '.join(sorted(known))}", item="tools")
    return [t for t in tools if t.name in set(names)]


def _describe(op) -> str:
    if not op.mutating:
        return f"{op.description} Read-only."
    return (f"{op.description} Changes things: checked by the operation policy (it may deny), audited, and some "
            "operations need a human approval first." + (" Destructive." if op.destructive else ""))


def is_memory_tool(name: str) -> bool:
    return name in MEMORY_TOOLS


def to_openai(tools: list[Tool]) -> list[dict[str, Any]]:
    """Chat Completions function tools; names map `.` -> `__` (OpenAI allows ^[a-zA-Z0-9_-]{1,64}$)."""
    return [{"type": "function", "function": {"name": wire_tool_name(t.name), "description": t.description,
                                              "parameters": t.input_schema}} for t in tools]


def to_anthropic(tools: list[Tool]) -> list[dict[str, Any]]:
    """Messages API client tools (name, description, input_schema), with the same name mapping."""
    return [{"name": wire_tool_name(t.name), "description": t.description, "input_schema": t.input_schema}
            for t in tools]


def tool_name_from_provider(name: str) -> str:
    """The devmesh name of a tool named by a model API (`github__create_issue` -> `github.create_issue`)."""
    return tool_name_from_wire(name)


def run_memory_tool(name: str, arguments: dict[str, Any], scope: MemoryScope) -> dict[str, Any]:
    """Run a memory tool within `scope`; InputError for bad arguments or a scope it cannot serve."""
    if name != "memory.search":
        raise InputError("not a memory tool", item=name)
    inp = parse_input(MemorySearchInput, arguments, name)
    return {"hits": [_hit(h) for h in _search(inp, scope)]}


def _search(inp: MemorySearchInput, scope: MemoryScope) -> list:
    options = {"mode": inp.mode, "limit": inp.limit}
    if inp.scope == "context":
        if scope.context_id is None:
            raise InputError("there is no current conversation to search", item="memory.search")
        request = context_scope(scope.tenant, scope.context_id, inp.query, **options)
    elif inp.scope == "user":
        if scope.user_id is None:
            raise InputError("no user to search the conversations of", item="memory.search")
        request = user_scope(scope.tenant, scope.user_id, inp.query, **options)
    else:  # over-fetch, then drop other users' conversations
        request = SearchRequest(query=inp.query, tenant=scope.tenant, mode=inp.mode, limit=min(200, inp.limit * 4))
    hits = search_contexts(scope.pool, request, embedder=scope.embedder, settings=scope.search)
    if inp.scope == "all":
        hits = [h for h in hits if not h.document_id.startswith("context:")
                or (scope.user_id is not None and h.metadata.get("user_id") == scope.user_id)][: inp.limit]
    return hits


def _hit(hit) -> dict[str, Any]:
    out = {"text": hit.text[:HIT_CHARS], "score": round(hit.score, 4), "relevance": hit.relevance,
           "source": hit.document_id}
    if "message_range" in hit.metadata:
        out["messages"] = hit.metadata["message_range"]
    return out
