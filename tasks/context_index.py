"""The append path of a context: atomic, gap-free appends that chunk and embed only the new messages."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from datetime import datetime

import numpy as np
from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.cipher import ContextCipher, load_cipher
from blocks.embedders.base import Embedder
from blocks.embedders.hosted import collect_usage
from blocks.errors import ContextExpired, ContextLimitExceeded, ContextNotFound, InputError, StoreError
from blocks.settings import ChunkSettings
from tasks.chunk import Chunk, Message, chunk_conversation, chunk_turns
from tasks.context_models import (
    CONTEXT_COLUMNS, MAX_APPEND, AppendResult, Context, MessageIn, chunk_fields, context_from_row, context_label,
    context_uuid, document_id, open_message, parse_input,
)
from tasks.embed import embed_texts
from tasks.registry import ensure_model
from tasks.usage import record_usage
from tasks.store import COPY_CHUNKS, COPY_EMBEDDINGS, NEXT_IDS, check_vector

__all__ = ["append_messages", "append_chunks", "live_context", "resolve_cipher", "render", "carried_messages",
           "plan_chunks", "finish_chunks", "cached_vectors", "embed_chunks", "seal_chunks"]

GET_CONTEXT = f"SELECT {CONTEXT_COLUMNS}, expires_at <= now() FROM contexts WHERE tenant_id = %(tenant)s AND id = %(id)s"
# The trailing messages that fit in `overlap` tokens: token counts of at most k rows first, then the content of
# the carried ones only. Every scan is bounded to idx in [end - k, end), whatever plan the planner picks.
TAIL_MESSAGES = """
WITH kept AS MATERIALIZED (
  SELECT idx FROM (
    SELECT idx, sum(token_count) OVER (ORDER BY idx DESC) AS running FROM context_messages
    WHERE tenant_id = %(tenant)s AND context_id = %(id)s AND idx >= %(end)s - %(k)s AND idx < %(end)s) AS r
  WHERE running <= %(overlap)s)
SELECT m.idx, m.role, m.content, m.sealed, m.name, m.tool_name FROM context_messages m
WHERE m.tenant_id = %(tenant)s AND m.context_id = %(id)s AND m.idx >= %(end)s - %(k)s AND m.idx < %(end)s
  AND m.idx IN (SELECT idx FROM kept)
ORDER BY m.idx"""
# The row lock taken here serialises appenders; positions come from the counter, so they are gap-free.
LOCK_APPEND = """
UPDATE contexts SET message_count = message_count + %(n)s, byte_count = byte_count + %(bytes)s,
  token_estimate = token_estimate + %(tokens)s, chunk_count = chunk_count + %(chunks)s,
  first_message_at = least(first_message_at, %(first_at)s, CASE WHEN %(any_now)s THEN now() END),
  last_message_at = greatest(last_message_at, %(last_at)s, CASE WHEN %(any_now)s THEN now() END), updated_at = now()
WHERE tenant_id = %(tenant)s AND id = %(id)s AND (expires_at IS NULL OR expires_at > now())
  AND message_count + %(n)s <= max_messages AND byte_count + %(bytes)s <= max_bytes
RETURNING message_count - %(n)s, chunk_count - %(chunks)s, user_id, agent_id, session_id, type, metadata, name, now()"""
ADJUST_CHUNKS = "UPDATE contexts SET chunk_count = chunk_count + %(delta)s WHERE tenant_id = %(tenant)s AND id = %(id)s"
INSERT_MESSAGES = """
INSERT INTO context_messages (tenant_id, context_id, idx, role, content, sealed, name, tool_name, tool_arguments,
                              byte_size, token_count, created_at)
SELECT %(tenant)s, %(id)s, %(start)s + m.n - 1, m.role, m.content, m.sealed, m.name, m.tool_name, m.args, m.size,
       m.tokens, coalesce(m.at, now())
FROM unnest(%(roles)s::text[], %(contents)s::text[], %(sealed)s::bytea[], %(names)s::text[], %(tools)s::text[],
            %(args)s::jsonb[], %(sizes)s::int[], %(tokens)s::int[], %(ats)s::timestamptz[])
     WITH ORDINALITY AS m(role, content, sealed, name, tool_name, args, size, tokens, at, n)"""
# One index probe per hash (LIMIT 1), so a hash shared by thousands of chunks costs no more than a rare one.
CACHED_VECTOR = """
SELECT h.hash, v.embedding FROM unnest(%(hashes)s::text[]) AS h(hash)
CROSS JOIN LATERAL (
  SELECT e.embedding FROM chunks c JOIN embeddings e ON e.chunk_id = c.id AND e.model_id = %(model_id)s
  WHERE c.tenant_id = %(tenant)s AND c.content_hash = h.hash LIMIT 1) AS v"""
# The chunk's english lexemes, sorted, each repeated as often as it occurs: to_tsvector of this text gives
# (nearly) the same lexemes and counts as the plaintext, so BM25 works on encrypted contexts.
LEXEME_BAGS = """
SELECT coalesce((SELECT rtrim(string_agg(repeat(l.lexeme || ' ', coalesce(array_length(l.positions, 1), 1)), ''
                                         ORDER BY l.lexeme))
                 FROM unnest(to_tsvector('english', t.text)) AS l), '')
FROM unnest(%(texts)s::text[]) WITH ORDINALITY AS t(text, n) ORDER BY t.n"""
BUMP_DOCUMENT = """
UPDATE documents SET chunk_count = chunk_count + %(n)s, updated_at = now()
WHERE tenant_id = %(tenant)s AND document_id = %(document_id)s"""
COPY_TIMED_CHUNKS = ("COPY chunks (id, tenant_id, document_id, seq, content, content_hash, token_count, metadata,"
                     " created_at) FROM STDIN WITH (FORMAT BINARY)")
_SEPARATOR = "\n\n"  # tasks.chunk joins turns with it


def append_messages(pool: ConnectionPool, tenant: str, context_id, messages: list[MessageIn | dict], *,
                    embedder: Embedder, chunk: ChunkSettings | None = None, model_id: int | None = None,
                    cipher: ContextCipher | None = None, max_messages: int = MAX_APPEND,
                    max_bytes: int | None = None) -> AppendResult:
    """Append messages and their new chunks in one transaction; tokens and cost of hosted embedders recorded.
    `max_messages` / `max_bytes` cap one append (the entry points pass Settings.contexts'), checked before any
    work: an append is embedded while its request waits."""
    if len(messages) > max_messages:
        raise InputError(f"at most {max_messages} messages per append (DEVMESH_CONTEXTS__MAX_APPEND_MESSAGES), got "
                         f"{len(messages)}: split it into several appends", item="messages")
    if max_bytes is not None:
        size = sum(m.byte_size if isinstance(m, MessageIn) else _content_bytes(m) for m in messages)
        if size > max_bytes:
            raise InputError(f"at most {max_bytes} bytes of message content per append (DEVMESH_CONTEXTS__"
                             f"MAX_APPEND_BYTES), got {size}: split it into several appends", item="messages")
    with collect_usage() as usages:
        try:
            return _append_messages(pool, tenant, context_id, messages, embedder=embedder, chunk=chunk,
                                    model_id=model_id, cipher=cipher)
        finally:
            record_usage(pool, tenant, usages)


def _content_bytes(message) -> int:
    """UTF-8 bytes of a not yet validated message's content (0 when it has none: validation refuses it later)."""
    content = message.get("content") if isinstance(message, dict) else None
    return len(content.encode("utf-8", "surrogatepass")) if isinstance(content, str) else 0


def _append_messages(pool: ConnectionPool, tenant: str, context_id, messages: list[MessageIn | dict], *,
                     embedder: Embedder, chunk: ChunkSettings | None = None, model_id: int | None = None,
                     cipher: ContextCipher | None = None) -> AppendResult:
    """Append messages and their new chunks in one transaction; chunk and embed only them (plus overlap).

    Chunks are planned and embedded before the transaction, from the tail read then. If another append
    landed in between (the locked counter says where ours start), they are redone under the row lock.
    """
    cid = context_uuid(context_id)
    chunk = chunk or ChunkSettings()
    new = [parse_input(MessageIn, m, f"message {i}") for i, m in enumerate(messages)]
    if not 1 <= len(new) <= MAX_APPEND:
        raise InputError(f"expected 1 to {MAX_APPEND} messages per append, got {len(new)}", item=context_label(cid))
    model_id = model_id if model_id is not None else ensure_model(pool, embedder.model_id, embedder.dimensions)
    turns = [Message(m.role, m.content, m.name or m.tool_name) for m in new]
    count = functools.lru_cache(maxsize=4096)(embedder.count_tokens)  # the chunker re-counts the same texts
    tokens = [count(render(t)) for t in turns]
    size = sum(m.byte_size for m in new)
    plan = dict(size=chunk.size, overlap=chunk.overlap, count_tokens=count, unit=chunk.conversation)
    with pool.connection() as conn:
        context = live_context(conn, tenant, cid)
        _check_limits(context, len(new), size)
        cipher = resolve_cipher(context, cipher)
        carried = _carried(conn, tenant, cid, context.message_count, chunk, count, cipher)
        chunks = plan_chunks(carried, turns, context.message_count, cipher=cipher, **plan)
        vectors = cached_vectors(conn, tenant, model_id, [c.content_hash for c in chunks])
    embedded = embed_chunks(embedder, chunks, vectors)  # outside any transaction, holding no connection
    stamps = [m.created_at for m in new if m.created_at is not None]
    with pool.connection() as conn, conn.transaction():
        row = conn.execute(LOCK_APPEND, {
            "tenant": tenant, "id": cid, "n": len(new), "bytes": size, "tokens": sum(tokens), "chunks": len(chunks),
            "first_at": min(stamps, default=None), "last_at": max(stamps, default=None),
            "any_now": len(stamps) < len(new),
        }).fetchone()
        if row is None:  # deleted, expired or filled since the first read: say which
            _check_limits(live_context(conn, tenant, cid), len(new), size)
            raise StoreError(f"{cid}: the append was refused for a reason that has since passed; retry")
        start, first_seq, *fields, now = row
        contended = start != context.message_count
        if contended:
            carried = _carried(conn, tenant, cid, start, chunk, count, cipher)
            planned, chunks = len(chunks), plan_chunks(carried, turns, start, cipher=cipher, **plan)
            vectors.update(cached_vectors(conn, tenant, model_id, [c.content_hash for c in chunks
                                                                   if c.content_hash not in vectors]))
            embedded += embed_chunks(embedder, chunks, vectors)
            if len(chunks) != planned:
                conn.execute(ADJUST_CHUNKS, {"tenant": tenant, "id": cid, "delta": len(chunks) - planned})
        conn.execute(INSERT_MESSAGES, _message_params(tenant, cid, start, new, tokens, cipher))
        stored = finish_chunks(chunks, first_seq, chunk_fields(cid, *fields))
        if cipher is not None:
            stored = seal_chunks(conn, cipher, context.key_name, stored)
        said = [m.created_at or now for m in new]  # a chunk's time is its last message's
        append_chunks(conn, tenant, model_id, embedder.dimensions, document_id(cid), stored,
                      [vectors[c.content_hash] for c in chunks],
                      times=[said[c.metadata["message_range"][1] - start] for c in chunks])
    return AppendResult(context_id=cid, first_idx=start, last_idx=start + len(new) - 1,
                        message_count=start + len(new), chunks_added=len(chunks), texts_embedded=embedded,
                        carried=len(carried), contended=contended)


def live_context(conn: Connection, tenant: str, cid) -> Context:
    """The context, or ContextNotFound / ContextExpired naming it."""
    row = conn.execute(GET_CONTEXT, {"tenant": tenant, "id": cid}).fetchone()
    if row is None:
        raise ContextNotFound(f"no such context in tenant {tenant!r}", item=context_label(cid))
    if row[-1]:
        raise ContextExpired(f"the context expired at {row[13].isoformat()}", item=context_label(cid))
    return context_from_row(row[:-1])


def resolve_cipher(context: Context, cipher: ContextCipher | None) -> ContextCipher | None:
    """None for a plaintext context; else the given cipher, or the one its key_name names."""
    if not context.encrypted:
        return None
    return cipher or load_cipher(context.key_name)


def render(message: Message) -> str:
    """A message as tasks.chunk renders it into chunk text ("role (name): content")."""
    speaker = f"{message.role} ({message.name})" if message.name else message.role
    return f"{speaker}: {message.content}"


def carried_messages(tail: list[Message], overlap: int, count_tokens) -> list[Message]:
    """The longest run of trailing messages of `tail` that together count at most `overlap` tokens."""
    start = len(tail)
    while start > 0 and count_tokens(_SEPARATOR.join(render(m) for m in tail[start - 1 :])) <= overlap:
        start -= 1
    return tail[start:]


def plan_chunks(carried: list[Message], new: list[Message], first_new_idx: int, *, size: int, overlap: int,
                count_tokens, cipher: ContextCipher | None = None, unit: str = "windows") -> list[Chunk]:
    """Chunks covering the new messages, the first ones led by the carried messages; seq from 0.

    A chunk made of carried messages only is already stored (it ended an earlier append) and is dropped.
    With a cipher, content hashes are HMAC fingerprints rather than sha256 of the text. With unit "turns"
    each message is its own chunk and nothing is carried.
    """
    if unit == "turns":
        carried = []
    chunker = chunk_turns if unit == "turns" else chunk_conversation
    chunks = chunker([*carried, *new], size=size, overlap=overlap, count_tokens=count_tokens,
                     first_index=first_new_idx - len(carried))
    kept = [c for c in chunks if c.metadata["message_range"][1] >= first_new_idx]
    return [
        dataclasses.replace(c, seq=i, content_hash=cipher.fingerprint(c.text) if cipher else c.content_hash)
        for i, c in enumerate(kept)
    ]


def finish_chunks(chunks: list[Chunk], first_seq: int, metadata: dict) -> list[Chunk]:
    """The planned chunks numbered from the context's next seq, with the context's fields in their metadata."""
    return [dataclasses.replace(c, seq=first_seq + i, metadata={**c.metadata, **metadata}) for i, c in enumerate(chunks)]


def cached_vectors(conn: Connection, tenant: str, model_id: int, hashes: Sequence[str]) -> dict[str, np.ndarray]:
    """Stored vectors of this model for any of `hashes` (the content-hash cache), one probe per hash."""
    if not hashes:
        return {}
    rows = conn.execute(CACHED_VECTOR, {"tenant": tenant, "model_id": model_id, "hashes": sorted(set(hashes))})
    return {h: np.asarray(v, dtype=np.float32) for h, v in rows}


def embed_chunks(embedder: Embedder, chunks: list[Chunk], known: dict[str, np.ndarray]) -> int:
    """Embed the chunks whose hash is not in `known`, adding them to it; returns the texts embedded."""
    todo = {c.content_hash: c.text for c in chunks if c.content_hash not in known}
    if todo:
        known.update(zip(todo, embed_texts(embedder, list(todo.values()))))
    return len(todo)


def seal_chunks(conn: Connection, cipher: ContextCipher, key_name: str, chunks: list[Chunk]) -> list[Chunk]:
    """Encrypted-context chunks: text becomes its lexeme bag, the Fernet token of the text goes in metadata."""
    if not chunks:
        return []
    bags = [r[0] for r in conn.execute(LEXEME_BAGS, {"texts": [c.text for c in chunks]})]
    return [
        dataclasses.replace(c, text=bag, metadata={**c.metadata, "sealed": cipher.encrypt(c.text).decode(),
                                                   "key_name": key_name})
        for c, bag in zip(chunks, bags)
    ]


def append_chunks(conn: Connection, tenant: str, model_id: int, dimensions: int, document_id: str,
                  chunks: list[Chunk], vectors: Sequence[np.ndarray], times: Sequence[datetime] | None = None) -> int:
    """COPY new chunks (seq already final) and their vectors into the caller's transaction; returns the count.

    `times` gives each chunk its created_at (what time filters of search compare); default: now.
    Unlike tasks.store.write_documents it never reads the document's existing chunks: the append path's cost
    depends on the new chunks only.
    """
    if len(chunks) != len(vectors) or (times is not None and len(times) != len(chunks)):
        raise InputError(f"expected one vector (and time) per chunk, got {len(vectors)} for {len(chunks)}",
                         item=document_id)
    if not chunks:
        return 0
    checked = [check_vector(v, dimensions, f"{document_id}#{c.seq}") for c, v in zip(chunks, vectors)]
    if conn.execute(BUMP_DOCUMENT, {"tenant": tenant, "document_id": document_id, "n": len(chunks)}).rowcount != 1:
        raise StoreError(f"{document_id}: no documents row to append chunks to")
    ids = [r[0] for r in conn.execute(NEXT_IDS, {"n": len(chunks)})]
    with conn.cursor() as cur:
        if times is None:
            with cur.copy(COPY_CHUNKS) as copy:
                copy.set_types(["int8", "text", "text", "int4", "text", "text", "int4", "jsonb"])
                for cid, c in zip(ids, chunks):
                    copy.write_row((cid, tenant, document_id, c.seq, c.text, c.content_hash, c.token_count,
                                    Jsonb(c.metadata)))
        else:
            with cur.copy(COPY_TIMED_CHUNKS) as copy:
                copy.set_types(["int8", "text", "text", "int4", "text", "text", "int4", "jsonb", "timestamptz"])
                for cid, c, at in zip(ids, chunks, times):
                    copy.write_row((cid, tenant, document_id, c.seq, c.text, c.content_hash, c.token_count,
                                    Jsonb(c.metadata), at))
        with cur.copy(COPY_EMBEDDINGS) as copy:
            copy.set_types(["int8", "int4", "text", "vector"])
            for cid, vector in zip(ids, checked):
                copy.write_row((cid, model_id, tenant, vector))
    return len(chunks)


def _check_limits(context: Context, n: int, size: int) -> None:
    if context.message_count + n > context.max_messages:
        raise ContextLimitExceeded(
            f"appending {n} messages would make {context.message_count + n}; max_messages is {context.max_messages}",
            item=str(context.id))
    if context.byte_count + size > context.max_bytes:
        raise ContextLimitExceeded(
            f"appending {size} bytes would make {context.byte_count + size}; max_bytes is {context.max_bytes}",
            item=str(context.id))


def _carried(conn: Connection, tenant: str, cid, end: int, chunk: ChunkSettings, count_tokens, cipher) -> list[Message]:
    """The earlier messages that lead the first new window (up to `overlap` tokens), read by primary key."""
    overlap = chunk.overlap
    if overlap <= 0 or end == 0 or chunk.conversation == "turns":
        return []
    rows = conn.execute(TAIL_MESSAGES, {"tenant": tenant, "id": cid, "end": end, "k": min(overlap + 1, 512),
                                        "overlap": overlap}).fetchall()
    tail = [Message(r[1], open_message(cipher, r[2], r[3], None)["content"], r[4] or r[5]) for r in rows]
    return carried_messages(tail, overlap, count_tokens)


def _message_params(tenant: str, cid, start: int, new: list[MessageIn], tokens: list[int], cipher) -> dict:
    sealed = [cipher.encrypt(json.dumps({"content": m.content, "tool_arguments": m.tool_arguments}))
              if cipher else None for m in new]
    return {
        "tenant": tenant, "id": cid, "start": start, "roles": [m.role for m in new],
        "contents": [None if cipher else m.content for m in new], "sealed": sealed,
        "names": [m.name for m in new], "tools": [m.tool_name for m in new],
        "args": [None if cipher or m.tool_arguments is None else Jsonb(m.tool_arguments) for m in new],
        "sizes": [m.byte_size for m in new], "tokens": tokens, "ats": [m.created_at for m in new],
    }
