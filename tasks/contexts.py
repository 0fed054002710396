"""Conversation contexts: create, read, list, update, delete, summarise, expire, search and compare them.

Appending lives in tasks/context_index.py (re-exported here): it is the hot path and the only writer of
messages and chunks.
"""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NONE
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.cipher import ContextCipher, load_cipher
from blocks.embedders.base import Embedder
from blocks.errors import ContextExists, ContextLimitExceeded, InputError
from blocks.pg_failure import search_deadline
from blocks.postgres import PgVectorStore
from blocks.settings import ContextSettings, SearchSettings
from blocks.storable import unstorable
from tasks.context_index import append_messages, live_context, resolve_cipher
from tasks.context_models import (
    CONTEXT_COLUMNS, Context, ContextCreate, ContextList, ContextPage, ContextSummary, ExpireResult,
    ListContextsRequest, Message, SimilarContext, chunk_fields, context_from_row, context_label, context_uuid,
    decode_cursor, document_id, encode_cursor, metadata_bytes, open_message, parse_input, searchable_metadata,
)
from tasks.embed import embed_search_query
from tasks.registry import resolve_model
from tasks.search import SearchHit, SearchRequest, configure_hnsw, run_search

__all__ = [
    "create_context", "get_context", "list_contexts", "update_context_metadata", "append_messages",
    "delete_context", "context_summary", "find_similar", "expire_batch", "delete_expired",
    "context_scope", "user_scope", "contexts_scope", "search_contexts", "document_id", "context_embeddings",
]

# A chosen name fixes the id (its uuid5): the primary key then refuses a second context of that name.
INSERT_CONTEXT = f"""
INSERT INTO contexts (tenant_id, id, name, user_id, agent_id, session_id, type, metadata, expires_at, max_messages,
                      max_bytes, encrypted, key_name)
VALUES (%(tenant)s, coalesce(%(id)s, gen_random_uuid()), %(name)s, %(user_id)s, %(agent_id)s, %(session_id)s,
        %(type)s, %(metadata)s, now() + %(ttl)s::int * interval '1 second', %(max_messages)s, %(max_bytes)s,
        %(encrypted)s, %(key_name)s)
ON CONFLICT (tenant_id, id) DO NOTHING
RETURNING {CONTEXT_COLUMNS}"""
INSERT_DOCUMENT = """
INSERT INTO documents (tenant_id, document_id, source, kind, content_hash, chunk_count, metadata)
VALUES (%(tenant)s, %(document_id)s, 'context', 'conversation', %(document_id)s, 0, %(metadata)s)"""
GET_MESSAGES = """
SELECT idx, role, content, sealed, name, tool_name, tool_arguments, created_at FROM context_messages
WHERE tenant_id = %(tenant)s AND context_id = %(id)s AND idx >= %(offset)s ORDER BY idx LIMIT %(limit)s"""
LIST_CONTEXTS = "SELECT {columns} FROM contexts WHERE tenant_id = %(tenant)s {filters} {keyset} " \
                "ORDER BY created_at DESC, id DESC LIMIT %(limit)s OFFSET %(offset)s"
COUNT_CONTEXTS = "SELECT count(*) FROM contexts WHERE tenant_id = %(tenant)s {filters}"
# The context's size (messages + metadata, as compact JSON) stays within max_bytes; octet_length of jsonb::text
# counts the ", " and ": " separators PostgreSQL prints, so it is never below what metadata_bytes counts.
UPDATE_METADATA = f"""
UPDATE contexts SET metadata = CASE WHEN %(replace)s THEN %(metadata)s ELSE metadata || %(metadata)s END,
  updated_at = now()
WHERE tenant_id = %(tenant)s AND id = %(id)s AND (expires_at IS NULL OR expires_at > now())
  AND byte_count + octet_length((CASE WHEN %(replace)s THEN %(metadata)s ELSE metadata || %(metadata)s END)::text)
      <= max_bytes
RETURNING {CONTEXT_COLUMNS}"""
RESTAMP_CHUNKS = """
UPDATE chunks SET metadata = jsonb_set(metadata, '{metadata}', %(metadata)s)
WHERE tenant_id = %(tenant)s AND document_id = %(document_id)s"""
RESTAMP_DOCUMENT = """
UPDATE documents SET metadata = jsonb_set(metadata, '{metadata}', %(metadata)s), updated_at = now()
WHERE tenant_id = %(tenant)s AND document_id = %(document_id)s"""
EMBEDDINGS = """
SELECT c.id, c.seq, m.name, m.dimensions, c.token_count, c.content_hash{vector}
FROM chunks c JOIN embeddings e ON e.chunk_id = c.id JOIN embedding_models m ON m.id = e.model_id
WHERE c.tenant_id = %(tenant)s AND c.document_id = %(document_id)s
ORDER BY c.seq, m.name LIMIT %(limit)s OFFSET %(offset)s"""
DELETE_CONTEXT = "DELETE FROM contexts WHERE tenant_id = %(tenant)s AND id = %(id)s RETURNING id"
DELETE_DOCUMENTS = """
DELETE FROM documents d USING unnest(%(tenants)s::text[], %(ids)s::text[]) AS x(tenant_id, document_id)
WHERE d.tenant_id = x.tenant_id AND d.document_id = x.document_id"""
ROLE_COUNTS = "SELECT role, count(*) FROM context_messages WHERE tenant_id = %(tenant)s AND context_id = %(id)s GROUP BY role"
# SKIP LOCKED: an expiry run never waits behind (or deadlocks with) an appender holding a context's row.
DELETE_EXPIRED = """
WITH doomed AS (
  SELECT tenant_id, id FROM contexts WHERE expires_at <= now() AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
  ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
DELETE FROM contexts c USING doomed d WHERE c.tenant_id = d.tenant_id AND c.id = d.id
RETURNING c.tenant_id, c.id, c.message_count, c.chunk_count"""
CENTROID = """
SELECT avg(e.embedding::vector({dims})) FROM chunks c JOIN embeddings e ON e.chunk_id = c.id AND e.model_id = {model_id}
WHERE c.tenant_id = %(tenant)s AND c.document_id = %(document_id)s"""
# Same shape as tasks.search.VECTOR_RANKING, so the model's partial HNSW index (and iterative scans) serve it.
SIMILAR_CONTEXTS = """
WITH nearest AS MATERIALIZED (
  SELECT c.document_id, (e.embedding::vector({dims}) <=> %(q)s::vector({dims})) AS distance
  FROM embeddings e JOIN chunks c ON c.id = e.chunk_id
  WHERE e.model_id = {model_id} AND e.tenant_id = %(tenant)s AND starts_with(c.document_id, 'context:')
    AND c.document_id <> %(document_id)s {filters}
  ORDER BY distance LIMIT %(n)s)
SELECT x.id, max(1 - n.distance) AS score, count(*) FROM nearest n
JOIN contexts x ON x.tenant_id = %(tenant)s AND x.id = substr(n.document_id, 9)::uuid
WHERE x.expires_at IS NULL OR x.expires_at > now()
GROUP BY x.id ORDER BY score DESC, x.id LIMIT %(limit)s"""


def create_context(pool: ConnectionPool, tenant: str, request: ContextCreate | dict, *,
                   cipher: ContextCipher | None = None, defaults: ContextSettings | None = None) -> Context:
    """Create a context and its (empty) document; an encrypted one needs its key to exist now. `defaults` fill
    what the request leaves unset: max_bytes, encryption and its key (settings.contexts). A chosen `name` that
    the tenant already uses is ContextExists."""
    if defaults is not None:
        given = request.model_dump(exclude_unset=True) if isinstance(request, ContextCreate) else dict(request)
        request = {"max_bytes": defaults.max_bytes, "encrypted": defaults.encrypt, "key_name": defaults.key_name,
                   **given}
    request = parse_input(ContextCreate, request, "context")
    if request.encrypted and cipher is None:
        load_cipher(request.key_name)
    cid = context_uuid(request.name) if request.name is not None else None
    name = request.name if cid is not None and getattr(cid, "given", None) else None  # a uuid given as name: the id
    with pool.connection() as conn, conn.transaction():
        row = conn.execute(INSERT_CONTEXT, {
            "tenant": tenant,
            **request.model_dump(exclude={"ttl_seconds", "encrypted", "key_name", "metadata", "name"}),
            "id": cid, "name": name, "metadata": Jsonb(request.metadata), "ttl": request.ttl_seconds,
            "encrypted": request.encrypted, "key_name": request.key_name if request.encrypted else None,
        }).fetchone()
        if row is None:
            raise ContextExists("a context with this id exists in the tenant; choose another id",
                                item=request.name)
        context = context_from_row(row)
        conn.execute(INSERT_DOCUMENT, {"tenant": tenant, "document_id": context.document_id,
                                       "metadata": Jsonb(chunk_fields(context.id, *row[2:7], name=context.name))})
    return context


def get_context(pool: ConnectionPool, tenant: str, context_id, *, offset: int = 0, limit: int = 100,
                cipher: ContextCipher | None = None) -> ContextPage:
    """A context with messages [offset, offset + limit) (a negative offset counts from the end)."""
    cid = context_uuid(context_id)
    if not 0 <= limit <= 10_000:
        raise InputError(f"expected a limit between 0 and 10000, got {limit}", item=str(cid))
    with pool.connection() as conn:
        context = live_context(conn, tenant, cid)
        offset = max(context.message_count + offset, 0) if offset < 0 else offset
        rows = conn.execute(GET_MESSAGES, {"tenant": tenant, "id": cid, "offset": offset, "limit": limit}).fetchall() \
            if limit else []
    cipher = resolve_cipher(context, cipher)
    messages = [Message(idx=r[0], role=r[1], name=r[4], tool_name=r[5], created_at=r[7],
                        **open_message(cipher, r[2], r[3], r[6])) for r in rows]
    end = offset + len(messages)
    return ContextPage(context=context, messages=messages, offset=offset,
                       next_offset=end if limit and end < context.message_count else None)


def list_contexts(pool: ConnectionPool, tenant: str, request: ListContextsRequest | dict | None = None) -> ContextList:
    """Contexts of the tenant matching the filters, newest first, one page at a time."""
    request = parse_input(ListContextsRequest, request or {}, "list")
    parts, params = [], {"tenant": tenant, "limit": request.limit, "offset": request.offset}
    for field in ("user_id", "agent_id", "session_id", "type"):
        if getattr(request, field) is not None:
            parts.append(sql.SQL("AND {} = {}").format(sql.Identifier(field), sql.Placeholder(field)))
            params[field] = getattr(request, field)
    if request.metadata is not None:
        parts.append(sql.SQL("AND metadata @> %(metadata)s"))
        params["metadata"] = Jsonb(request.metadata)
    if not request.include_expired:
        parts.append(sql.SQL("AND (expires_at IS NULL OR expires_at > now())"))
    filters, keyset = sql.SQL(" ").join(parts), sql.SQL("")
    if request.cursor:
        params["after_at"], params["after_id"] = decode_cursor(request.cursor)
        keyset = sql.SQL("AND (created_at, id) < (%(after_at)s, %(after_id)s)")
    query = sql.SQL(LIST_CONTEXTS).format(columns=sql.SQL(CONTEXT_COLUMNS), filters=filters, keyset=keyset)
    with pool.connection() as conn:
        items = [context_from_row(r) for r in conn.execute(query, params)]
        total = conn.execute(sql.SQL(COUNT_CONTEXTS).format(filters=filters), params).fetchone()[0] \
            if request.with_total else None
    more = len(items) == request.limit and (total is None or request.offset + len(items) < total)
    cursor = encode_cursor(items[-1]) if items and more else None
    return ContextList(items=items, total=total, next_cursor=cursor)


def update_context_metadata(pool: ConnectionPool, tenant: str, context_id, metadata: dict, *,
                            replace: bool = False) -> Context:
    """Merge `metadata` into the context's (shallow), or replace it; its chunks carry the new value too."""
    cid = context_uuid(context_id)
    if not isinstance(metadata, dict):
        raise InputError(f"expected a JSON object as metadata, got {type(metadata).__name__}", item=str(cid))
    problem = unstorable(metadata, "metadata")
    if problem:
        raise InputError(f"{problem}, which cannot be stored", item=str(cid))
    with pool.connection() as conn, conn.transaction():
        row = conn.execute(UPDATE_METADATA, {"tenant": tenant, "id": cid, "metadata": Jsonb(metadata),
                                             "replace": replace}).fetchone()
        if row is None:
            context = live_context(conn, tenant, cid)  # raises the reason, unless it is the size
            merged = metadata if replace else {**context.metadata, **metadata}
            raise ContextLimitExceeded(
                f"the metadata would take {metadata_bytes(merged)} bytes beside {context.byte_count} bytes of "
                f"messages; max_bytes is {context.max_bytes} (performance.max_context_size_mb)",
                item=context_label(cid))
        context = context_from_row(row)
        params = {"tenant": tenant, "document_id": context.document_id,
                  "metadata": Jsonb(searchable_metadata(context.metadata))}
        conn.execute(RESTAMP_CHUNKS, params)
        conn.execute(RESTAMP_DOCUMENT, params)
    return context


def context_embeddings(pool: ConnectionPool, tenant: str, document_id: str, *, limit: int, offset: int,
                       include_vectors: bool = False) -> list[dict]:
    """A page of the context document's chunks with each model they are embedded with, in order: chunk_id, seq,
    model, dimensions, token_count, content_hash and (only when asked) the vector."""
    query = EMBEDDINGS.format(vector=", e.embedding" if include_vectors else "")
    with pool.connection() as conn:
        rows = conn.execute(query, {"tenant": tenant, "document_id": document_id, "limit": limit,
                                    "offset": offset}).fetchall()
    return [{"chunk_id": r[0], "seq": r[1], "model": r[2], "dimensions": r[3], "token_count": r[4],
             "content_hash": r[5], "vector": [float(x) for x in r[6]] if include_vectors else None} for r in rows]


def delete_context(pool: ConnectionPool, tenant: str, context_id) -> bool:
    """Delete a context, its messages, chunks and embeddings; False when it did not exist."""
    cid = context_uuid(context_id)
    with pool.connection() as conn, conn.transaction():
        existed = conn.execute(DELETE_CONTEXT, {"tenant": tenant, "id": cid}).fetchone() is not None
        conn.execute(DELETE_DOCUMENTS, {"tenants": [tenant], "ids": [document_id(cid)]})
    return existed


def context_summary(pool: ConnectionPool, tenant: str, context_id) -> ContextSummary:
    """Message, token and chunk counts, time span and messages per role."""
    cid = context_uuid(context_id)
    with pool.connection() as conn:
        context = live_context(conn, tenant, cid)
        roles = dict(conn.execute(ROLE_COUNTS, {"tenant": tenant, "id": cid}).fetchall())
    first, last = context.first_message_at, context.last_message_at
    return ContextSummary(
        context_id=cid, message_count=context.message_count, token_estimate=context.token_estimate,
        byte_count=context.byte_count, chunk_count=context.chunk_count, roles=roles, first_message_at=first,
        last_message_at=last, span_seconds=(last - first).total_seconds() if first and last else None,
        expires_at=context.expires_at,
    )


def find_similar(pool: ConnectionPool, tenant: str, context_id, *, model: tuple[int, int], limit: int = 10,
                 metadata: dict | None = None, candidates: int = 200,
                 settings: SearchSettings | None = None) -> list[SimilarContext]:
    """Contexts whose chunks lie nearest the reference context's chunks, best first, the reference excluded.

    One HNSW query with the mean of the reference's chunk vectors: for unit vectors, the dot product with the
    mean is the mean of the dot products, so ranking chunks by cosine to the centroid ranks them by their
    summed similarity to all of the reference's chunks, at the cost of one index scan instead of one per
    reference chunk. Per candidate context the best chunk counts (max): a long context is not penalised for
    its other topics, and a short one competes on equal terms.
    """
    cid = context_uuid(context_id)
    settings = settings or SearchSettings()
    model_id, dims = model
    literals = {"dims": sql.Literal(dims), "model_id": sql.Literal(model_id)}
    filters = sql.SQL("AND c.metadata @> %(metadata)s") if metadata else sql.SQL("")
    with search_deadline(settings.timeout_s), pool.connection() as conn:
        live_context(conn, tenant, cid)
        centroid = conn.execute(sql.SQL(CENTROID).format(**literals),
                                {"tenant": tenant, "document_id": document_id(cid)}).fetchone()[0]
        if centroid is None or not np.any(np.asarray(centroid)):
            return []
        n = max(candidates, limit)
        configure_hnsw(conn, n, settings)
        rows = conn.execute(sql.SQL(SIMILAR_CONTEXTS).format(filters=filters, **literals), {
            "q": centroid, "tenant": tenant, "document_id": document_id(cid), "n": n, "limit": limit,
            "metadata": Jsonb(metadata) if metadata else None,
        }).fetchall()
    return [SimilarContext(context_id=r[0], score=float(r[1]), chunks=r[2]) for r in rows]


def delete_expired(pool: ConnectionPool, *, tenant: str | None = None, batch: int = 500) -> ExpireResult:
    """Delete up to `batch` expired contexts (all tenants unless one is given) with their chunks, in one transaction."""
    with pool.connection() as conn, conn.transaction():
        rows = conn.execute(DELETE_EXPIRED, {"tenant": tenant, "limit": batch}).fetchall()
        if rows:
            conn.execute(DELETE_DOCUMENTS, {"tenants": [r[0] for r in rows], "ids": [document_id(r[1]) for r in rows]})
    return ExpireResult(contexts=len(rows), messages=sum(r[2] for r in rows), chunks=sum(r[3] for r in rows))


@task(name="expire-batch", task_run_name="expire-batch-{label}", cache_policy=NONE)
def expire_batch(store: PgVectorStore, tenant: str | None, batch: int, label: str = "0") -> ExpireResult:
    """Delete one batch of expired contexts with their messages, chunks and embeddings."""
    return delete_expired(store.pool(), tenant=tenant, batch=batch)


def context_scope(tenant: str, context_id, query: str, **options) -> SearchRequest:
    """A search within one context."""
    return SearchRequest(query=query, tenant=tenant, document_ids=[document_id(context_uuid(context_id))], **options)


def user_scope(tenant: str, user_id: str, query: str, *, type: str | None = "conversation", **options) -> SearchRequest:
    """A search across all of a user's contexts (of one type, unless type is None)."""
    wanted = {"user_id": user_id, **({"type": type} if type else {})}
    return SearchRequest(query=query, tenant=tenant, metadata=wanted, **options)


def contexts_scope(tenant: str, query: str, *, type: str = "conversation", agent_id: str | None = None,
                   metadata: dict | None = None, **options) -> SearchRequest:
    """A search across the tenant's contexts of a type, optionally one agent's, whose metadata contains `metadata`."""
    wanted = {"type": type, **({"agent_id": agent_id} if agent_id else {}), **({"metadata": metadata} if metadata else {})}
    return SearchRequest(query=query, tenant=tenant, metadata=wanted, **options)


def search_contexts(pool: ConnectionPool, request: SearchRequest, *, embedder: Embedder | None = None,
                    settings: SearchSettings | None = None, cipher: ContextCipher | None = None) -> list[SearchHit]:
    """Run a scoped search; hits from encrypted contexts come back with their text decrypted."""
    settings = settings or SearchSettings()
    if request.mode == "keyword":
        hits = run_search(pool, request, settings=settings)
    else:
        if embedder is None:
            raise InputError(f"{request.mode} search needs an embedder", item="search")
        model = resolve_model(pool, request.model or embedder.model_id)
        hits = run_search(pool, request, settings=settings, model=model,
                          vector=embed_search_query(embedder, request.query, request.mode))
    for hit in hits:
        if "sealed" in hit.metadata:
            key = cipher or load_cipher(hit.metadata["key_name"])
            hit.text = key.decrypt(hit.metadata.pop("sealed"))
    return hits
