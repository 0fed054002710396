"""Typed inputs and outputs of the conversation-context operations (tasks/contexts.py)."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blocks.cipher import DEFAULT_KEY_NAME
from blocks.errors import ContextNotFound, InputError
from blocks.storable import StorableModel

__all__ = [
    "ROLES", "MAX_MESSAGE_BYTES", "MAX_APPEND", "DEFAULT_MAX_MESSAGES", "DEFAULT_MAX_BYTES",
    "ContextCreate", "MessageIn", "Message", "Context", "ContextPage", "ListContextsRequest", "ContextList",
    "ContextSummary", "AppendResult", "SimilarContext", "ExpireResult", "CONTEXT_COLUMNS", "parse_input",
    "context_uuid", "document_id", "context_from_row", "open_message", "chunk_fields", "encode_cursor",
    "decode_cursor", "CONTEXT_NAME", "context_label", "searchable_metadata", "metadata_bytes",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGE_BYTES = 1024 * 1024  # per message, UTF-8 bytes of the content
MAX_APPEND = 10_000  # messages per append call
DEFAULT_MAX_MESSAGES = 100_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_ID = Field(None, min_length=1, max_length=256)
# The column order of every query that returns a whole contexts row (context_from_row reads it).
CONTEXT_COLUMNS = ("id, tenant_id, user_id, agent_id, session_id, type, metadata, message_count, byte_count,"
                   " token_estimate, chunk_count, first_message_at, last_message_at, expires_at, max_messages,"
                   " max_bytes, encrypted, key_name, created_at, updated_at, name")
# A client-chosen context id ("conv-<session>" in the Developer Mesh guide): letters, digits and . _ : @ -
CONTEXT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
_NAME = re.compile(CONTEXT_NAME)
# Names map onto uuids in this namespace (uuid5), so that a name works wherever a context id does, without a lookup.
_NAMESPACE = uuid.UUID("5d7c2b8e-3f1a-5c44-9a0e-6d65766d6573")
_TYPE = re.compile(r"^[a-z][a-z0-9_.-]*$")
TRANSCRIPT_KEY = "messages"  # where the guide keeps a conversation inside metadata: not copied into chunks


class _NamedUUID(uuid.UUID):
    """The uuid of a named context, remembering the name it was given by (for messages that name it)."""

    def __init__(self, value: uuid.UUID, given: str) -> None:
        super().__init__(int=value.int)
        object.__setattr__(self, "given", given)


class _Strict(BaseModel):
    """Outputs, built from database rows: what was stored is read back as it is, unchecked."""

    model_config = ConfigDict(extra="forbid")


class _StrictIn(StorableModel):
    """Inputs from callers: every string, key and nested value must be storable (blocks/storable.py)."""

    model_config = ConfigDict(extra="forbid")


class ContextCreate(_StrictIn):
    """A new context: who it belongs to, its metadata, lifetime, size limits and encryption. `name` is an id the
    client chose (unique in its organization; it answers to it wherever its uuid works); `type` defaults to
    metadata["type"] when that is a valid type name (the guide keeps it there), else "conversation"."""

    name: str | None = Field(None, pattern=CONTEXT_NAME,
                             description="An id of your choosing, unique in your organization.")
    user_id: str | None = _ID
    agent_id: str | None = _ID
    session_id: str | None = _ID
    type: str = Field("conversation", min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")
    metadata: dict = Field(default_factory=dict, description="Free-form JSON; chunks carry it for filtering.")
    ttl_seconds: int | None = Field(None, ge=1, le=10 * 365 * 86400, description="Expire this long after creation.")
    max_messages: int = Field(DEFAULT_MAX_MESSAGES, ge=1, le=10_000_000)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, le=1 << 40, description="Total UTF-8 bytes of message content.")
    encrypted: bool = Field(False, description="Encrypt message content at rest (see blocks/cipher.py).")
    key_name: str = Field(DEFAULT_KEY_NAME, min_length=1, description="Secret block holding the Fernet key.")

    @model_validator(mode="before")
    @classmethod
    def _type_from_metadata(cls, data):
        if isinstance(data, dict) and data.get("type") is None and isinstance(data.get("metadata"), dict):
            kind = data["metadata"].get("type")
            if isinstance(kind, str) and len(kind) <= 64 and _TYPE.match(kind):
                data = {**data, "type": kind}
        return data

    @model_validator(mode="after")
    def _metadata_fits(self) -> "ContextCreate":
        size = metadata_bytes(self.metadata)
        if size > self.max_bytes:
            raise ValueError(f"metadata is {size} bytes; max_bytes is {self.max_bytes}")
        return self


class MessageIn(_StrictIn):
    """One message to append; content is limited to MAX_MESSAGE_BYTES UTF-8 bytes."""

    role: Role = Field(..., description="system, user, assistant or tool.")
    content: str = Field(..., description="What was said (or the tool's output).")
    name: str | None = Field(None, max_length=256, description="Speaker name, when several share a role.")
    tool_name: str | None = Field(None, max_length=256)
    tool_arguments: dict | None = None
    created_at: datetime | None = Field(None, description="When it was said; default: the time of the append.")

    @field_validator("content")
    @classmethod
    def _content_fits(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("content contains a NUL byte")
        size = len(v.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise ValueError(f"content is {size} bytes; the per-message limit is {MAX_MESSAGE_BYTES} bytes")
        return v

    @property
    def byte_size(self) -> int:
        """UTF-8 bytes of the content (what max_bytes counts)."""
        return len(self.content.encode("utf-8", "surrogatepass"))


class Message(_Strict):
    """A stored message, at its 0-based position `idx` in the context."""

    idx: int
    role: Role
    content: str
    name: str | None = None
    tool_name: str | None = None
    tool_arguments: dict | None = None
    created_at: datetime


class Context(_Strict):
    """A context's header: ownership, metadata, counters, limits and times."""

    id: UUID
    tenant: str
    user_id: str | None
    agent_id: str | None
    session_id: str | None
    type: str
    metadata: dict
    message_count: int
    byte_count: int
    token_estimate: int
    chunk_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    expires_at: datetime | None
    max_messages: int
    max_bytes: int
    encrypted: bool
    key_name: str | None
    created_at: datetime
    updated_at: datetime
    name: str | None = Field(None, description="The id its client chose, if any; it works wherever `id` does.")

    @property
    def document_id(self) -> str:
        """The documents row holding this context's chunks."""
        return f"context:{self.id}"


class ContextPage(_Strict):
    """A context with one page of its messages; `next_offset` is None on the last page."""

    context: Context
    messages: list[Message]
    offset: int
    next_offset: int | None


class ListContextsRequest(_StrictIn):
    """Filters and pagination for listing contexts, newest first (keyset `cursor` or `offset`)."""

    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    type: str | None = None
    metadata: dict | None = Field(None, description="Only contexts whose metadata contains this JSON object.")
    include_expired: bool = False
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=100_000)
    cursor: str | None = Field(None, description="next_cursor of the previous page (keyset pagination).")
    with_total: bool = Field(True, description="Count all matches (one more query).")

    @model_validator(mode="after")
    def _one_way_to_page(self) -> "ListContextsRequest":
        if self.cursor and self.offset:
            raise ValueError("give cursor or offset, not both")
        return self


class ContextList(_Strict):
    """One page of contexts; `next_cursor` continues after the last item."""

    items: list[Context]
    total: int | None
    next_cursor: str | None


class ContextSummary(_Strict):
    """Counts and time span of a context."""

    context_id: UUID
    message_count: int
    token_estimate: int
    byte_count: int
    chunk_count: int
    roles: dict[str, int]
    first_message_at: datetime | None
    last_message_at: datetime | None
    span_seconds: float | None
    expires_at: datetime | None


class AppendResult(_Strict):
    """What one append stored: message positions [first_idx, last_idx], chunks and embeddings."""

    context_id: UUID
    first_idx: int
    last_idx: int
    message_count: int
    chunks_added: int
    texts_embedded: int
    carried: int = Field(description="Earlier messages re-read for chunk overlap.")
    contended: bool = Field(description="Another append landed first, so chunks were redone under the lock.")


class SimilarContext(_Strict):
    """A context near the reference one, with its score (cosine similarity, higher is nearer)."""

    context_id: UUID
    score: float
    chunks: int = Field(description="Its chunks among the nearest neighbours.")


class ExpireResult(_Strict):
    """What one expiry batch deleted."""

    contexts: int = 0
    messages: int = 0
    chunks: int = 0


def parse_input(model, value, item: str):
    """`value` as `model`; a validation failure becomes an InputError naming the item and each problem."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise InputError(problems, item=item) from None


def context_uuid(value) -> UUID:
    """A context id as UUID: a uuid, or a client-chosen name (its uuid5); anything else cannot name a context
    (ContextNotFound)."""
    if isinstance(value, UUID):
        return value
    text = str(value)
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    if _NAME.match(text):
        return _NamedUUID(uuid.uuid5(_NAMESPACE, text), text)
    raise ContextNotFound("no such context (not a context id)", item=text[:256])


def context_label(cid) -> str:
    """How to name a context in a message: the name it was looked up by, else its uuid."""
    return getattr(cid, "given", None) or str(cid)


def metadata_bytes(metadata: dict) -> int:
    """Bytes a context's metadata takes (its compact JSON), counted against max_bytes with the messages."""
    return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


def searchable_metadata(metadata: dict) -> dict:
    """The part of a context's metadata its chunks carry for filtering: all of it but a transcript kept there."""
    return {k: v for k, v in metadata.items() if k != TRANSCRIPT_KEY}


def document_id(context_id) -> str:
    """The documents row that holds a context's chunks."""
    return f"context:{context_id}"


def context_from_row(row) -> Context:
    """A Context from a row of CONTEXT_COLUMNS."""
    values = dict(zip((n.strip() for n in CONTEXT_COLUMNS.split(",")), row))
    values["tenant"] = values.pop("tenant_id")
    return Context(**values)


def open_message(cipher, content, sealed, tool_arguments) -> dict:
    """Content and tool arguments of a stored message, decrypting a sealed one."""
    if sealed is None:
        return {"content": content, "tool_arguments": tool_arguments}
    if cipher is None:
        raise InputError("the message is encrypted and no cipher was given", item="message")
    return json.loads(cipher.decrypt(sealed))


def chunk_fields(context_id, user_id, agent_id, session_id, type_, metadata, name=None) -> dict:
    """What every chunk (and the document) of a context carries in its metadata, for filtered search: its ids
    (`context_name` when the client chose one), owners, type and metadata (without a transcript kept there)."""
    fields = {"context_id": str(context_id), "user_id": user_id, "agent_id": agent_id, "session_id": session_id,
              "type": type_, "metadata": searchable_metadata(metadata)}
    if name is not None:
        fields["context_name"] = name
    return fields


def encode_cursor(context: Context) -> str:
    """An opaque keyset cursor after `context` (created_at, id)."""
    return base64.urlsafe_b64encode(f"{context.created_at.isoformat()}|{context.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """(created_at, id) of a cursor from encode_cursor."""
    try:
        at, _, cid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), uuid.UUID(cid)
    except ValueError:
        raise InputError("not a cursor returned by list_contexts", item=cursor[:40]) from None
