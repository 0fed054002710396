"""Typed results of the Python client (deployments/client.py): small pydantic models that mirror the REST API's
JSON (deployments/api/schemas.py). Ids are the strings the API sends; fields the API adds later are kept
(extra="allow") instead of breaking older clients. Keys the API shows once are SecretStr, so that no repr, log
line or traceback prints them: use `.api_key.get_secret_value()` (or pass the SecretStr to `Mesh`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

__all__ = [
    "AppendResult", "AuditPage", "AuditRecord", "Context", "ContextEmbedding", "ContextEmbeddings", "ContextList",
    "ContextPage", "ContextSummary", "DecisionResult", "EmbeddingsResult", "ExecuteResult", "ItemFailure",
    "KeyCreated", "KeyInfo", "Message", "OperationInfo", "Organization", "Registered", "SearchHit", "SearchHits",
    "SimilarContext", "StoredDocument", "StoredText", "Tool", "Tools",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- organizations and keys --------------------------------------------------------------------------------------

class KeyInfo(_Model):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    rate_per_minute: int | None = None
    burst: int | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_from: str | None = None
    expires_at: datetime | None = None


class KeyCreated(_Model):
    api_key: SecretStr
    key: KeyInfo


class Organization(_Model):
    tenant: str
    name: str
    admin_email: str


class Registered(_Model):
    organization: Organization
    api_key: SecretStr
    key: KeyInfo


# -- contexts ----------------------------------------------------------------------------------------------------

class Context(_Model):
    id: str
    tenant: str
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    type: str
    metadata: dict[str, Any] = {}
    message_count: int = 0
    byte_count: int = 0
    token_estimate: int = 0
    chunk_count: int = 0
    first_message_at: datetime | None = None
    last_message_at: datetime | None = None
    expires_at: datetime | None = None
    max_messages: int | None = None
    max_bytes: int | None = None
    encrypted: bool = False
    created_at: datetime
    updated_at: datetime
    name: str | None = None


class Message(_Model):
    idx: int
    role: str
    content: str
    name: str | None = None
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | None = None
    created_at: datetime


class ContextPage(_Model):
    context: Context
    messages: list[Message]
    offset: int
    next_offset: int | None = None


class ContextList(_Model):
    items: list[Context]
    total: int | None = None
    next_cursor: str | None = None


class AppendResult(_Model):
    context_id: str
    first_idx: int
    last_idx: int
    message_count: int
    chunks_added: int
    texts_embedded: int


class ContextSummary(_Model):
    context_id: str
    message_count: int
    token_estimate: int
    byte_count: int
    chunk_count: int
    roles: dict[str, int]
    first_message_at: datetime | None = None
    last_message_at: datetime | None = None
    span_seconds: float | None = None
    expires_at: datetime | None = None


class SimilarContext(_Model):
    context_id: str
    score: float
    chunks: int


class ContextEmbedding(_Model):
    chunk_id: int
    seq: int
    model: str
    dimensions: int
    token_count: int
    content_hash: str
    vector: list[float] | None = None


class StoredText(_Model):
    context_id: str
    content_index: int
    chunk_id: int
    model: str
    dimensions: int
    embedded: bool
    replaced: bool


class ContextEmbeddings(_Model):
    context_id: str
    items: list[ContextEmbedding]
    offset: int
    next_offset: int | None = None


# -- embeddings and search ---------------------------------------------------------------------------------------

class StoredDocument(_Model):
    id: str
    chunks: int


class ItemFailure(_Model):
    item: str
    error: str


class EmbeddingsResult(_Model):
    model: str
    documents: list[StoredDocument]
    unchanged: int
    chunks: int
    texts_embedded: int
    errors: list[ItemFailure] = []


class SearchHit(_Model):
    chunk_id: int
    document_id: str
    seq: int
    text: str
    score: float
    similarity: float | None = None
    keyword_score: float | None = None
    metadata: dict[str, Any] = {}
    relevance: str


class SearchHits(_Model):
    hits: list[SearchHit]
    count: int


# -- tools, operations, audit ------------------------------------------------------------------------------------

class Tool(_Model):
    """One tool of the shared catalog (tasks/tools.py): name, description, input JSON schema, read-only/destructive."""

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    destructive: bool = False


class Tools(list[Tool]):
    """The tool catalog as a list, convertible in one call to a model API's tool definitions. Names become
    `github__create_issue` on the wire (OpenAI allows only ^[a-zA-Z0-9_-]{1,64}$); `get` and
    `Mesh.execute_tool` take either form."""

    def to_openai(self) -> list[dict[str, Any]]:
        """Chat Completions `tools=` entries ({"type": "function", "function": {...}})."""
        from tasks.tools import to_openai  # the one converter every surface shares (imported on first use)

        return to_openai(list(self))

    def to_anthropic(self) -> list[dict[str, Any]]:
        """Messages API `tools=` entries ({"name", "description", "input_schema"})."""
        from tasks.tools import to_anthropic

        return to_anthropic(list(self))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self]

    def get(self, name: str) -> Tool:
        """The tool named `name` (devmesh or wire form); KeyError when there is none."""
        wanted = name.replace("__", ".")
        for tool in self:
            if tool.name == wanted:
                return tool
        raise KeyError(name)


class ExecuteResult(_Model):
    operation_id: str | None = None
    status: str
    plan: dict[str, Any] | None = None
    result: Any = None
    flow_run_id: str | None = None


class DecisionResult(_Model):
    operation_id: str
    decision: str
    approver: str
    approver_id: str | None = None
    approver_kind: str | None = None
    flow_run_id: str | None = None


class OperationInfo(_Model):
    id: str
    operation: str
    status: str
    target: str | None = None
    plan: dict[str, Any] | None = None
    plan_hash: str | None = None
    result: Any = None
    error: str | None = None
    actor: dict[str, Any] = {}
    idempotency_key: str
    flow_run_id: str | None = None
    expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class AuditRecord(_Model):
    seq: int
    at: datetime
    operation: str
    status: str
    target: str | None = None
    actor: dict[str, Any] = {}
    operation_id: str | None = None
    error: str | None = None


class AuditPage(_Model):
    items: list[AuditRecord]
    next_after_seq: int | None = None
