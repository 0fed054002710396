"""Texts a client chunked itself, stored into a context at a position it chose (the Developer Mesh guide's
`create_embedding({context_id, content_index, text, metadata})`), and which embedder produces a model a client
names.

A text lives in its context's document beside the chunks of appended messages, so context-scoped search, expiry,
deletion and similar-context search all include it. Storing position `content_index` again replaces the text held
there (the guide re-indexes a conversation's last turns on every message); an unchanged text is not re-embedded
(the content-hash cache). Positions are bounded by the context's max_messages, texts by the per-message limit.
"""

from __future__ import annotations

import hashlib

from psycopg_pool import ConnectionPool
from pydantic import Field

from blocks.cipher import ContextCipher
from blocks.embedders import Embedder, check_embedding_model, load_embedder
from blocks.embedders.hosted import collect_usage
from blocks.errors import ConfigError, ContextLimitExceeded, InputError
from blocks.storable import StorableModel
from tasks.chunk import Chunk
from tasks.context_index import append_chunks, cached_vectors, embed_chunks, live_context, resolve_cipher, seal_chunks
from tasks.context_models import MAX_MESSAGE_BYTES, chunk_fields, context_label, context_uuid, parse_input
from tasks.registry import ensure_model, model_names, set_embedder_name, stored_embedder, tenant_model
from tasks.usage import record_usage

__all__ = ["ContextText", "StoredText", "embedder_for", "model_name", "store_context_text"]

# Locks the context (so that two writers of one position cannot both insert), removes what the position held.
LOCK_CONTEXT = """
UPDATE contexts SET chunk_count = chunk_count + 1, updated_at = now()
WHERE tenant_id = %(tenant)s AND id = %(id)s AND (expires_at IS NULL OR expires_at > now())
RETURNING chunk_count - 1, user_id, agent_id, session_id, type, metadata, name"""
DROP_POSITION = """
DELETE FROM chunks WHERE tenant_id = %(tenant)s AND document_id = %(document_id)s
  AND metadata @> jsonb_build_object('content_index', %(index)s::int)"""
RESERVED = ("sealed", "key_name", "content_index")  # set by devmesh: encrypted text, its key block, the position
UNBUMP_DOCUMENT = """
UPDATE documents SET chunk_count = chunk_count - %(n)s WHERE tenant_id = %(tenant)s AND document_id = %(document_id)s"""


class ContextText(StorableModel):
    """One text for a context, at a position of the client's choosing, with metadata its chunk carries."""

    content_index: int = Field(..., ge=0, description="Position among this context's texts; again: replaces it.")
    text: str = Field(..., min_length=1, description="The text to embed and store, as given (not re-chunked).")
    metadata: dict = Field(default_factory=dict, description="Stored with it and returned with search hits.")


class StoredText(StorableModel):
    """Where a text went and whether it had to be embedded."""

    context_id: str
    content_index: int
    chunk_id: int
    model: str
    dimensions: int
    embedded: bool = Field(description="False when the same text was already embedded (the content-hash cache).")
    replaced: bool = Field(description="The position held a text before.")


def embedder_for(pool: ConnectionPool, tenant: str, model: str | None, *, default: str,
                 embedders: dict[str, str]) -> tuple[Embedder, str]:
    """(embedder, its name) producing `model`; None: the tenant's default model, else `default` (settings.embedder).

    A named model is found as the default embedder's model, in `embedders` (settings.embedders: model -> 'local'
    or a block slug), or as a stored model whose embedder was recorded; else ConfigError naming what would work.
    """
    current = tenant_model(pool, tenant)
    name = current.embedder if current is not None and current.embedder else default
    if model is None:
        return load_embedder(name), name
    check_embedding_model(model)
    candidates = [name, embedders.get(model)]
    candidates.append(stored_embedder(pool, model))
    for candidate in filter(None, candidates):
        embedder = load_embedder(candidate)
        if _same_model(embedder.model_id, model):
            return embedder, candidate
    raise ConfigError(
        f"no embedder here produces model {model!r} (this server embeds with {load_embedder(name).model_id!r}); "
        "map the model to an embedder block in settings.embedders (devmesh.yaml embedding.models), or name "
        "no model to use the server's")


def _same_model(stored: str, named: str) -> bool:
    """devmesh names hosted models by vendor ("openai/text-embedding-3-small"); clients may leave the vendor out."""
    return stored == named or stored.split("/", 1)[-1] == named


def model_name(pool: ConnectionPool, model: str | None, *, embedders: dict[str, str]) -> str | None:
    """The stored name of a model a client names: itself, the model of its mapped embedder, or the one stored
    model whose name it is without the vendor; None stays None (the default model)."""
    if model is None:
        return None
    if model in embedders:
        return load_embedder(embedders[model]).model_id
    names = model_names(pool)
    if model in names:
        return model
    matches = [n for n in names if _same_model(n, model)]
    return matches[0] if len(matches) == 1 else model


def store_context_text(pool: ConnectionPool, tenant: str, context_id, text: ContextText | dict, *,
                       embedder: Embedder, embedder_name: str, cipher: ContextCipher | None = None) -> StoredText:
    """Embed `text` (unless its hash is known) and store it at its position in the context, replacing what the
    position held, in one transaction; tokens and cost of a hosted embedder are recorded."""
    cid = context_uuid(context_id)
    item = parse_input(ContextText, text, context_label(cid))
    reserved = sorted(set(item.metadata) & set(RESERVED))
    if reserved:
        raise InputError(f"metadata keys {', '.join(reserved)} are reserved", item=context_label(cid))
    size = len(item.text.encode("utf-8", "surrogatepass"))
    if "\x00" in item.text or size > MAX_MESSAGE_BYTES:
        raise InputError(f"text is {size} bytes or holds a NUL byte; at most {MAX_MESSAGE_BYTES} bytes, no NUL",
                         item=context_label(cid))
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)
    set_embedder_name(pool, model_id, embedder_name)
    with pool.connection() as conn:
        context = live_context(conn, tenant, cid)
        if item.content_index >= context.max_messages:
            raise ContextLimitExceeded(f"content_index {item.content_index} is past max_messages "
                                       f"({context.max_messages}), the most texts a context holds",
                                       item=context_label(cid))
        cipher = resolve_cipher(context, cipher)
        digest = cipher.fingerprint(item.text) if cipher else hashlib.sha256(item.text.encode()).hexdigest()
        chunk = Chunk(seq=0, text=item.text, token_count=embedder.count_tokens(item.text), content_hash=digest)
        vectors = cached_vectors(conn, tenant, model_id, [digest])
    with collect_usage() as usages:
        try:
            embedded = embed_chunks(embedder, [chunk], vectors) > 0  # outside any transaction
        finally:
            record_usage(pool, tenant, usages)
    with pool.connection() as conn, conn.transaction():
        row = conn.execute(LOCK_CONTEXT, {"tenant": tenant, "id": cid}).fetchone()
        if row is None:
            live_context(conn, tenant, cid)  # deleted or expired meanwhile: raises which
        seq, *fields, name = row
        params = {"tenant": tenant, "document_id": context.document_id, "index": item.content_index}
        dropped = conn.execute(DROP_POSITION, params).rowcount
        if dropped:
            conn.execute(UNBUMP_DOCUMENT, {**params, "n": dropped})
        metadata = {**item.metadata, "content_index": item.content_index, **chunk_fields(cid, *fields, name=name)}
        stored = [Chunk(seq=seq, text=chunk.text, token_count=chunk.token_count, content_hash=digest,
                        metadata=metadata)]
        if cipher is not None:
            stored = seal_chunks(conn, cipher, context.key_name, stored)
        append_chunks(conn, tenant, model_id, embedder.dimensions, context.document_id, stored, [vectors[digest]])
        chunk_id = conn.execute("SELECT id FROM chunks WHERE tenant_id = %s AND document_id = %s AND seq = %s",
                                [tenant, context.document_id, seq]).fetchone()[0]
    return StoredText(context_id=str(cid), content_index=item.content_index, chunk_id=chunk_id,
                      model=embedder.model_id, dimensions=embedder.dimensions, embedded=embedded,
                      replaced=dropped > 0)
