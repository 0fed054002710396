"""Request and response bodies of the REST API (the models of the tasks layer are reused where they fit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.types import FiniteFloat

from blocks.storable import StorableModel

from tasks.context_models import (
    CONTEXT_NAME, DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, MAX_APPEND, MessageIn, SimilarContext,
)
from tasks.search import SearchHit

__all__ = [
    "AppendBody", "AuditPage", "ContextCreateBody", "ContextEmbedding", "ContextEmbeddings", "ContextPatch",
    "ContextTextBody",
    "ContextSearchBody", "DecisionBody", "DecisionResult", "DocumentItem", "EmbeddingsBody", "EmbeddingsResult",
    "ErrorBody", "ExecuteBody", "ExecuteResult", "KeyCreate", "KeyCreated", "KeyInfo", "KeyList", "OperationInfo",
    "Registered", "SearchBody", "SearchHits", "SimilarList", "ToolInfo", "ToolList", "VectorSearchBody",
]

Mode = Literal["hybrid", "vector", "keyword"]
Scope = Literal["read", "write", "operate", "admin"]
_ID = Field(None, min_length=1, max_length=256)
FILTERS = Field(None, description="JSON object the chunks' metadata must contain. Context chunks carry "
                                  "{context_id, user_id, agent_id, session_id, type, metadata}.")


class _Strict(StorableModel):
    model_config = ConfigDict(extra="forbid")


class _PerItem(BaseModel):
    """Documents to store: a value that cannot be stored fails its own document (the ingest checks each one and
    lists the failures), not the whole batch."""

    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------------------------

class FieldError(BaseModel):
    field: str = Field(description="Where: body.name, query.limit, path.context_id ...")
    message: str


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="Stable machine-readable code: validation_error, unauthorized, not_found ...")
    message: str
    item: Any = Field(None, description="The field, id or scope at fault, when there is one.")
    request_id: str | None = None
    fields: list[FieldError] | None = Field(None, description="Every invalid field (validation errors).")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


# -- organizations and keys --------------------------------------------------------------------------------------

class KeyCreate(_Strict):
    name: str = Field(..., min_length=1, max_length=200)
    scopes: list[Scope] = Field(..., min_length=1, max_length=4)
    rate_per_minute: int | None = Field(None, ge=1, le=1_000_000, description="Default: 1,000.")
    burst: int | None = Field(None, ge=1, le=1_000_000, description="Default: 3,000.")


class KeyInfo(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    scopes: list[str]
    rate_per_minute: int | None = None
    burst: int | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = Field(None, description="In the future: a rotated key's grace period ends then.")
    rotated_from: str | None = None
    expires_at: datetime | None = Field(None, description="The key stops working then (keys.rotation_days).")


class KeyCreated(BaseModel):
    api_key: str = Field(description="The key itself; shown this once, only its hash is stored.")
    key: KeyInfo


class KeyList(BaseModel):
    items: list[KeyInfo]


class Organization(BaseModel):
    tenant: str
    name: str
    admin_email: str


class Registered(BaseModel):
    organization: Organization
    api_key: str = Field(description="The admin key; shown this once.")
    key: KeyInfo


# -- contexts ----------------------------------------------------------------------------------------------------

class ContextCreateBody(_Strict):
    """A new context. `id`: an id of your choosing (unique in your organization; 409 when taken), usable wherever
    the context's uuid is. `content`: its first message(s), stored and embedded at once: a string is one user
    message. Unset max_bytes / encrypted come from the server's settings (devmesh.yaml
    performance.max_context_size_mb, security.encrypt_contexts)."""

    id: str | None = Field(None, pattern=CONTEXT_NAME, description="Your id for it, e.g. conv-<session>.")
    content: str | list[MessageIn] | None = Field(None, description="First message(s): text, or "
                                                  "[{role, content}, ...].")
    user_id: str | None = _ID
    agent_id: str | None = _ID
    session_id: str | None = _ID
    type: str = Field("conversation", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl_seconds: int | None = Field(None, ge=1, le=10 * 365 * 86400)
    max_messages: int = Field(DEFAULT_MAX_MESSAGES, ge=1, le=10_000_000)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, le=1 << 40, description="Messages + metadata, in bytes "
                           "(default: the server's contexts.max_size_mb).")
    encrypted: bool = Field(False, description="Encrypt message content with the server's context key "
                            "(default: the server's contexts.encrypt).")

    def first_messages(self) -> list[MessageIn]:
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [MessageIn(role="user", content=self.content)]
        return list(self.content)

    def context_fields(self) -> dict[str, Any]:
        """What create_context takes: the fields given (so that unset ones get the server's defaults)."""
        fields = self.model_dump(exclude_unset=True, exclude={"id", "content"})
        return {**fields, **({"name": self.id} if self.id is not None else {})}


class ContextPatch(_Strict):
    metadata: dict[str, Any]
    replace: bool = Field(False, description="Replace the metadata instead of merging into it (shallow).")


class AppendBody(_Strict):
    messages: list[MessageIn] = Field(..., min_length=1, max_length=MAX_APPEND)


class ContextSearchBody(_Strict):
    query: str = Field(..., min_length=1, max_length=10_000)
    mode: Mode = "hybrid"
    limit: int = Field(10, ge=1, le=200)
    min_similarity: float | None = Field(None, ge=-1, le=1)


class ContextEmbedding(BaseModel):
    chunk_id: int
    seq: int
    model: str
    dimensions: int
    token_count: int
    content_hash: str
    vector: list[float] | None = Field(None, description="Only with include_vectors=true.")


class ContextEmbeddings(BaseModel):
    context_id: UUID
    items: list[ContextEmbedding]
    offset: int
    next_offset: int | None


class ContextTextBody(_Strict):
    """One text you chunked yourself, stored at position `content_index` of the context (again: replaced)."""

    content_index: int = Field(..., ge=0, le=10_000_000)
    text: str = Field(..., min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Returned with the search hits it gives.")
    model: str | None = Field(None, min_length=1, max_length=200, description="Embedding model (default: the "
                              "server's); another needs its embedder mapped in the server's settings.")


class SimilarList(BaseModel):
    items: list[SimilarContext]


# -- embeddings and search ---------------------------------------------------------------------------------------

class DocumentItem(_PerItem):
    id: str = Field(..., min_length=1, max_length=1024, description="Your id; storing it again updates it.")
    text: str = Field(..., min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    kind: Literal["auto", "text", "markdown", "code"] = "auto"


class EmbeddingsBody(_PerItem):
    """One document ({id, text, metadata}) or a batch ({documents: [...]})."""

    documents: list[DocumentItem] | None = Field(None, min_length=1, max_length=1000)
    id: str | None = Field(None, min_length=1, max_length=1024)
    text: str | None = Field(None, min_length=1)
    metadata: dict[str, Any] | None = None
    kind: Literal["auto", "text", "markdown", "code"] = "auto"

    @model_validator(mode="after")
    def _one_form(self) -> "EmbeddingsBody":
        single = self.id is not None or self.text is not None or self.metadata is not None
        if (self.documents is None) == (not single):
            raise ValueError("give either documents: [...] or one document's id and text")
        if self.documents is None and (self.id is None or self.text is None):
            raise ValueError("a single document needs both id and text")
        return self

    def items(self) -> list[DocumentItem]:
        if self.documents is not None:
            return self.documents
        return [DocumentItem(id=self.id, text=self.text, metadata=self.metadata or {}, kind=self.kind)]


class StoredDocument(BaseModel):
    id: str
    chunks: int


class ItemFailure(BaseModel):
    item: str
    error: str


class EmbeddingsResult(BaseModel):
    model: str
    documents: list[StoredDocument]
    unchanged: int = Field(description="Documents whose text was already stored as is (nothing re-embedded).")
    chunks: int
    chunks_inserted: int
    chunks_kept: int
    chunks_deleted: int
    texts_embedded: int
    errors: list[ItemFailure]


class SearchBody(_Strict):
    query: str = Field(..., min_length=1, max_length=10_000)
    mode: Mode = "hybrid"
    limit: int = Field(10, ge=1, le=200)
    filters: dict[str, Any] | None = FILTERS
    document_ids: list[str] | None = Field(None, max_length=1000, description="Only these documents.")
    context_id: str | None = Field(None, min_length=1, max_length=256,
                                   description="Only this context (conversation): its id or the id you chose.")
    context_ids: list[str] | None = Field(None, max_length=1000, description="Only these contexts.")
    user_id: str | None = Field(None, min_length=1, max_length=256,
                                description="Only chunks whose metadata has this user_id: the user's contexts.")
    model: str | None = Field(None, min_length=1, max_length=200, description="Default: the tenant's model.")
    min_similarity: float | None = Field(None, ge=-1, le=1, description="Drop hits whose cosine similarity is "
                                         "lower (the guide's similarity_threshold).")

    @model_validator(mode="after")
    def _one_scope(self) -> "SearchBody":
        if sum(x is not None for x in (self.context_id, self.context_ids, self.user_id)) > 1:
            raise ValueError("give one of context_id, context_ids and user_id")
        return self


class VectorSearchBody(_Strict):
    vector: list[FiniteFloat] = Field(..., min_length=1, max_length=16_000)
    model: str = Field(..., min_length=1, max_length=200, description="A stored model; its dimensions must match.")
    limit: int = Field(10, ge=1, le=200)
    filters: dict[str, Any] | None = FILTERS
    document_ids: list[str] | None = Field(None, max_length=1000)
    min_similarity: float | None = Field(None, ge=-1, le=1)


class SearchHits(BaseModel):
    hits: list[SearchHit]
    count: int


# -- tools, operations, audit ------------------------------------------------------------------------------------

class ToolInfo(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    destructive: bool


class ToolList(BaseModel):
    items: list[ToolInfo]


class ExecuteBody(_Strict):
    arguments: dict[str, Any] = Field(default_factory=dict, description="The tool's input (its input_schema).")
    dry_run: bool = Field(True, description="Plan and check the policy only; false to act.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="Same key, same action: a retry never acts twice.")
    user_id: str | None = Field(None, min_length=1, max_length=256, description="Memory tools: whose memory.")
    context_id: UUID | None = Field(None, description="Memory tools: the current conversation.")


class ExecuteResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    operation_id: str | None = None
    status: str = Field(description="planned, succeeded, awaiting_approval (memory tools: done).")
    plan: dict[str, Any] | None = None
    result: Any = None
    flow_run_id: str | None = None


class DecisionBody(_Strict):
    comment: str | None = Field(None, max_length=2000)


class DecisionResult(BaseModel):
    operation_id: str
    decision: str
    approver: str
    approver_id: str | None = Field(None, description="The id of the API key (or approver) that decided.")
    approver_kind: str | None = Field(None, description="'api_key' or 'approver'.")
    flow_run_id: str | None = None


class OperationInfo(BaseModel):
    id: str
    operation: str
    status: str
    target: str | None = None
    plan: dict[str, Any] | None = None
    plan_hash: str | None = None
    result: Any = None
    error: str | None = None
    actor: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    flow_run_id: str | None = None
    expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class AuditPage(BaseModel):
    items: list[dict[str, Any]]
    next_after_seq: int | None = Field(None, description="Pass as after_seq for the next page.")
