"""Conversation contexts on the real database: CRUD, atomic incremental appends, search, limits, encryption."""

from __future__ import annotations

import hashlib
import threading
import uuid

import numpy as np
import pytest
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.cipher import ContextCipher, register_cipher
from blocks.errors import (
    ConfigError, ContextExpired, ContextLimitExceeded, ContextNotFound, InputError, ProviderError,
)
from blocks.settings import ChunkSettings
from tasks import context_index
from tasks import contexts as C
from tasks.context_index import render
from tasks.chunk import Message as Turn
from tasks.embed import EmbedStats
from tasks.search import SearchRequest
from tasks.registry import resolve_model
from tests.ranking import wrong_document_frequencies

CHUNK = ChunkSettings(size=40, overlap=12)
WINDOWS = ChunkSettings(size=40, overlap=12, conversation="windows")


def _append(pool, tenant, cid, embedder, *messages, **kw):
    return C.append_messages(pool, tenant, cid, list(messages), embedder=embedder, chunk=kw.pop("chunk", CHUNK), **kw)


def _msg(role, content, **kw):
    return {"role": role, "content": content, **kw}


def _rows(pool, tenant, cid=None):
    """(message_count column, message rows, chunk rows, embedding rows) of a tenant (or one context)."""
    doc = [C.document_id(cid)] if cid else None
    with pool.connection() as conn:
        count = conn.execute("SELECT coalesce(sum(message_count), 0) FROM contexts WHERE tenant_id = %s"
                             + (" AND id = %s" if cid else ""), [tenant, *([cid] if cid else [])]).fetchone()[0]
        msgs = conn.execute("SELECT count(*) FROM context_messages WHERE tenant_id = %s"
                            + (" AND context_id = %s" if cid else ""), [tenant, *([cid] if cid else [])]).fetchone()[0]
        chunks = conn.execute("SELECT count(*) FROM chunks WHERE tenant_id = %s"
                              + (" AND document_id = ANY(%s)" if doc else ""), [tenant, *([doc] if doc else [])]).fetchone()[0]
        embs = conn.execute("SELECT count(*) FROM embeddings WHERE tenant_id = %s", [tenant]).fetchone()[0]
    return count, msgs, chunks, embs


def _chunks(pool, tenant, cid):
    with pool.connection() as conn:
        return conn.execute("SELECT id, seq, content, content_hash, metadata FROM chunks WHERE tenant_id = %s"
                            " AND document_id = %s ORDER BY seq", [tenant, C.document_id(cid)]).fetchall()


def _conversation(n, topic="deploy"):
    return [_msg("user" if i % 2 == 0 else "assistant", f"turn {i} about {topic} step{i} of the rollout plan")
            for i in range(n)]


def test_create_get_update_delete_round_trip(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {"user_id": "u1", "agent_id": "a1", "session_id": "s1",
                                          "metadata": {"project": "payments", "env": "prod"}})
    assert ctx.message_count == 0 and ctx.type == "conversation" and not ctx.encrypted
    _append(pool, tenant, ctx.id, fake_embedder, _msg("system", "you are a deploy bot"),
            _msg("user", "deploy payments"), _msg("assistant", "running kubectl", tool_name="kubectl",
                                                  tool_arguments={"args": ["rollout", "status"]}),
            _msg("tool", "deployment rolled out", tool_name="kubectl"))
    page = C.get_context(pool, tenant, str(ctx.id), offset=1, limit=2)
    assert [m.idx for m in page.messages] == [1, 2] and page.next_offset == 3
    assert page.messages[1].tool_arguments == {"args": ["rollout", "status"]}
    assert [m.content for m in C.get_context(pool, tenant, ctx.id, offset=-1).messages] == ["deployment rolled out"]
    merged = C.update_context_metadata(pool, tenant, ctx.id, {"env": "staging", "ticket": 7})
    assert merged.metadata == {"project": "payments", "env": "staging", "ticket": 7}
    replaced = C.update_context_metadata(pool, tenant, ctx.id, {"only": True}, replace=True)
    assert replaced.metadata == {"only": True}
    assert all(row[4]["metadata"] == {"only": True} for row in _chunks(pool, tenant, ctx.id))
    assert C.delete_context(pool, tenant, ctx.id) is True
    assert C.delete_context(pool, tenant, ctx.id) is False
    assert _rows(pool, tenant) == (0, 0, 0, 0)
    with pytest.raises(ContextNotFound, match=str(ctx.id)):
        C.get_context(pool, tenant, ctx.id)


def test_summary_counts_roles_tokens_chunks_and_time_span(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {})
    _append(pool, tenant, ctx.id, fake_embedder,
            _msg("user", "first question here", created_at="2025-01-01T10:00:00Z"),
            _msg("assistant", "an answer", created_at="2025-01-01T10:05:00Z"),
            _msg("user", "thanks", created_at="2025-01-01T11:00:00Z"))
    s = C.context_summary(pool, tenant, ctx.id)
    assert s.message_count == 3 and s.roles == {"user": 2, "assistant": 1}
    assert s.token_estimate == sum(fake_embedder.count_tokens(x) for x in
                                   ["user: first question here", "assistant: an answer", "user: thanks"])
    assert s.span_seconds == 3600 and s.chunk_count == len(_chunks(pool, tenant, ctx.id)) >= 1
    assert s.byte_count == len("first question here") + len("an answer") + len("thanks")


def test_list_filters_and_paginates_by_keyset_and_offset(pool, tenant):
    made = [C.create_context(pool, tenant, {"user_id": f"u{i % 2}", "agent_id": "a", "type": "conversation" if i < 5
                                            else "task", "metadata": {"n": i, "team": "sre" if i % 3 == 0 else "dev"}})
            for i in range(7)]
    C.create_context(pool, "other-tenant-" + tenant, {"user_id": "u0"})
    everything = C.list_contexts(pool, tenant, {"limit": 3})
    assert everything.total == 7 and [c.id for c in everything.items] == [c.id for c in made[::-1][:3]]
    second = C.list_contexts(pool, tenant, {"limit": 3, "cursor": everything.next_cursor})
    third = C.list_contexts(pool, tenant, {"limit": 3, "cursor": second.next_cursor})
    assert [c.id for c in everything.items + second.items + third.items] == [c.id for c in made[::-1]]
    assert third.next_cursor is None
    assert [c.id for c in C.list_contexts(pool, tenant, {"limit": 2, "offset": 4}).items] == [made[2].id, made[1].id]
    u0 = C.list_contexts(pool, tenant, {"user_id": "u0", "type": "conversation"})
    assert {c.id for c in u0.items} == {made[0].id, made[2].id, made[4].id} and u0.total == 3
    sre = C.list_contexts(pool, tenant, {"metadata": {"team": "sre"}})
    assert {c.metadata["n"] for c in sre.items} == {0, 3, 6}
    with pytest.raises(InputError, match="cursor or offset"):
        C.list_contexts(pool, tenant, {"cursor": everything.next_cursor, "offset": 1})
    with pytest.raises(InputError, match="(?i)extra"):
        C.list_contexts(pool, tenant, {"user": "u0"})


def test_append_indexes_only_new_messages_with_overlap(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {"user_id": "u1"})
    first = _append(pool, tenant, ctx.id, fake_embedder, *_conversation(6), chunk=WINDOWS)
    before = _chunks(pool, tenant, ctx.id)
    EmbedStats.reset()
    new = [_msg("user", "now scale the payments deployment to five replicas please")]
    result = _append(pool, tenant, ctx.id, fake_embedder, *new, chunk=WINDOWS)
    after = _chunks(pool, tenant, ctx.id)
    assert after[: len(before)] == before  # earlier chunks untouched (same ids, text, seq)
    assert result.first_idx == 6 and result.chunks_added == 1 and result.texts_embedded == EmbedStats.texts == 1
    last = after[-1]
    assert last[1] == first.chunks_added and last[4]["message_range"][1] == 6
    lo = last[4]["message_range"][0]
    assert 0 < result.carried == 6 - lo  # the previous turn(s) travel with the new one, within the overlap
    turns = [Turn(m["role"], m["content"]) for m in _conversation(6)[lo:] + new]
    assert last[2] == "\n\n".join(render(t) for t in turns)
    assert fake_embedder.count_tokens("\n\n".join(render(t) for t in turns[:-1])) <= CHUNK.overlap
    assert [r[1] for r in after] == list(range(len(after)))
    assert last[4]["user_id"] == "u1" and last[4]["context_id"] == str(ctx.id)


def test_append_reads_a_bounded_tail_of_a_long_conversation(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {})
    _append(pool, tenant, ctx.id, fake_embedder, *[_msg("user", f"short {i}") for i in range(3000)], chunk=WINDOWS)
    k = CHUNK.overlap + 1
    with pool.connection() as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + context_index.TAIL_MESSAGES,
                            {"tenant": tenant, "id": ctx.id, "end": 3000, "k": k, "overlap": CHUNK.overlap}).fetchone()[0]

    def rows(node):  # rows each table scan read, over all its loops
        if "Relation Name" in node:
            yield node["Actual Rows"] * node["Actual Loops"]
        for child in node.get("Plans", []):
            yield from rows(child)

    assert 0 < max(rows(plan[0]["Plan"])) <= k  # never a scan of the 3,000 messages
    EmbedStats.reset()
    result = _append(pool, tenant, ctx.id, fake_embedder, _msg("assistant", "done"), chunk=WINDOWS)
    assert result.carried == CHUNK.overlap // 3 and EmbedStats.texts == 1  # "user: short N" is 3 tokens


def test_append_reuses_vectors_of_identical_chunks(pool, tenant, fake_embedder):
    a, b = C.create_context(pool, tenant, {}), C.create_context(pool, tenant, {})
    _append(pool, tenant, a.id, fake_embedder, _msg("user", "restart the ingress controller"))
    EmbedStats.reset()
    result = _append(pool, tenant, b.id, fake_embedder, _msg("user", "restart the ingress controller"))
    assert result.chunks_added == 1 and result.texts_embedded == 0 and EmbedStats.calls == 0


def test_concurrent_appenders_lose_nothing_and_keep_their_order(pool, tenant, fake_embedder):
    writers, per_call, calls = 20, 2, 5
    ctx = C.create_context(pool, tenant, {})
    wide = ConnectionPool(pool.conninfo, min_size=writers, max_size=writers + 4, configure=register_vector, open=True)
    barrier, errors, results = threading.Barrier(writers), [], []

    def work(w):
        try:
            barrier.wait()
            for c in range(calls):
                msgs = [_msg("user", f"writer {w} message {c * per_call + k} says hello") for k in range(per_call)]
                results.append(_append(wide, tenant, ctx.id, fake_embedder, *msgs))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        wide.close()
    assert errors == []
    total = writers * per_call * calls
    page = C.get_context(pool, tenant, ctx.id, limit=1000)
    assert page.context.message_count == total and [m.idx for m in page.messages] == list(range(total))
    for w in range(writers):
        mine = [int(m.content.split()[3]) for m in page.messages if m.content.startswith(f"writer {w} ")]
        assert mine == list(range(per_call * calls))
    for r in results:  # each append's messages are contiguous
        texts = [m.content for m in page.messages[r.first_idx : r.last_idx + 1]]
        assert len({t.split()[1] for t in texts}) == 1
    assert any(r.contended for r in results)
    chunks = _chunks(pool, tenant, ctx.id)
    assert [c[1] for c in chunks] == list(range(len(chunks))) and len(chunks) == page.context.chunk_count
    turns = [Turn(m.role, m.content) for m in page.messages]
    for _, _, text, _, meta in chunks:  # chunks redone under contention still match the stored order
        lo, hi = meta["message_range"]
        assert text == "\n\n".join(render(t) for t in turns[lo : hi + 1])
    assert _rows(pool, tenant)[1:] == (total, len(chunks), len(chunks))


def test_failure_inside_the_transaction_leaves_nothing(pool, tenant, fake_embedder, monkeypatch):
    ctx = C.create_context(pool, tenant, {})
    _append(pool, tenant, ctx.id, fake_embedder, *_conversation(3))
    before = _rows(pool, tenant)

    def copy_then_fail(*args, **kwargs):
        context_index_append(*args, **kwargs)
        raise RuntimeError("disk full")

    context_index_append = context_index.append_chunks
    monkeypatch.setattr(context_index, "append_chunks", copy_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "this must not stay"))
    assert _rows(pool, tenant) == before
    assert C.get_context(pool, tenant, ctx.id).context.chunk_count == len(_chunks(pool, tenant, ctx.id))


class _WrongDimensions:
    """A provider that answers with one dimension too few."""

    model_id, dimensions, max_batch = "broken-64", 64, 16

    def embed(self, texts):
        return np.ones((len(texts), self.dimensions - 1), dtype=np.float32)

    def count_tokens(self, text):
        return len(text.split())


def test_bad_input_is_refused_with_nothing_written(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {"max_messages": 4, "max_bytes": 200})
    _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "hello there"))
    before = _rows(pool, tenant)
    with pytest.raises(ContextNotFound, match="no such context"):
        _append(pool, tenant, uuid.uuid4(), fake_embedder, _msg("user", "hi"))
    with pytest.raises(ContextNotFound, match="not-a-uuid"):
        _append(pool, tenant, "not-a-uuid", fake_embedder, _msg("user", "hi"))
    with pytest.raises(ContextNotFound):
        _append(pool, "someone-else", ctx.id, fake_embedder, _msg("user", "hi"))
    with pytest.raises(InputError, match=r"message 0: content: .*10485760 bytes.*limit is 1048576"):
        _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "x" * 10 * 1024 * 1024))
    with pytest.raises(InputError, match=r"message 1: role: .*'system', 'user', 'assistant' or 'tool'"):
        _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "ok"), _msg("robot", "beep"))
    with pytest.raises(InputError, match="NUL"):
        _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "a\x00b"))
    with pytest.raises(ContextLimitExceeded, match="would make 5; max_messages is 4"):
        _append(pool, tenant, ctx.id, fake_embedder, *_conversation(4))
    with pytest.raises(ContextLimitExceeded, match="max_bytes is 200"):
        _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "y" * 190))
    with pytest.raises(ProviderError, match="expected 1 vectors of 64 dimensions, got shape"):
        _append(pool, tenant, ctx.id, _WrongDimensions(), _msg("user", "fine text"))
    with pytest.raises(InputError, match="1 to 10000 messages"):
        _append(pool, tenant, ctx.id, fake_embedder)
    assert _rows(pool, tenant) == before
    assert C.get_context(pool, tenant, ctx.id).context.byte_count == len("hello there")


def _nest(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_metadata_stored_deep_before_the_check_still_reads_and_new_input_is_checked(pool, tenant):
    """Only inputs are checked for storability: a context whose metadata is nested deeper than MAX_DEPTH (stored
    before the limit existed) still reads, lists and serializes; a new update of that depth is refused."""
    ctx = C.create_context(pool, tenant, {"metadata": {"project": "payments"}})
    with pool.connection() as conn:
        conn.execute("UPDATE contexts SET metadata = %s WHERE id = %s", [Jsonb({"deep": _nest(120)}), ctx.id])
    page = C.get_context(pool, tenant, ctx.id)
    assert page.context.metadata == {"deep": _nest(120)}
    assert '"leaf"' in page.model_dump_json()
    assert [c.id for c in C.list_contexts(pool, tenant, {}).items] == [ctx.id]
    with pytest.raises(InputError, match=r"metadata\.x\.a\.a.* is nested more than 64 levels deep, which cannot be stored"):
        C.update_context_metadata(pool, tenant, ctx.id, {"x": _nest(100)})
    with pytest.raises(InputError, match=r"a key of metadata contains a NUL character"):
        C.update_context_metadata(pool, tenant, ctx.id, {"a\x00b": 1})
    with pytest.raises(InputError, match=r"metadata\.deep.* nested more than 64"):
        C.create_context(pool, tenant, {"metadata": {"deep": _nest(100)}})
    assert C.get_context(pool, tenant, ctx.id).context.metadata == {"deep": _nest(120)}


def test_expired_context_refuses_reads_and_appends(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {"ttl_seconds": 3600})
    assert ctx.expires_at is not None and (ctx.expires_at - ctx.created_at).total_seconds() == 3600
    _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "remember the vault token rotation"))
    with pool.connection() as conn:
        conn.execute("UPDATE contexts SET expires_at = now() - interval '1 second' WHERE id = %s", [ctx.id])
    before = _rows(pool, tenant)
    for call in (lambda: C.get_context(pool, tenant, ctx.id), lambda: C.context_summary(pool, tenant, ctx.id),
                 lambda: _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "more")),
                 lambda: C.update_context_metadata(pool, tenant, ctx.id, {"a": 1})):
        with pytest.raises(ContextExpired, match=f"{ctx.id}: the context expired at"):
            call()
    assert _rows(pool, tenant) == before
    assert C.list_contexts(pool, tenant).total == 0
    assert C.list_contexts(pool, tenant, {"include_expired": True}).total == 1
    done = C.delete_expired(pool, tenant=tenant)
    assert (done.contexts, done.messages, done.chunks) == (1, 1, before[2])
    assert _rows(pool, tenant) == (0, 0, 0, 0)


def test_search_scopes_context_user_and_metadata(pool, tenant, fake_embedder):
    a = C.create_context(pool, tenant, {"user_id": "alice", "metadata": {"project": "payments"}})
    b = C.create_context(pool, tenant, {"user_id": "alice", "metadata": {"project": "search"}})
    c = C.create_context(pool, tenant, {"user_id": "bob", "metadata": {"project": "payments"}})
    for ctx, text in ((a, "the postgres failover drill finished"), (b, "postgres vacuum tuning for the index"),
                      (c, "postgres replica lag alert fired")):
        _append(pool, tenant, ctx.id, fake_embedder, _msg("user", text))

    def docs(request):
        return {h.document_id for h in C.search_contexts(pool, request, embedder=fake_embedder)}

    assert docs(C.context_scope(tenant, a.id, "postgres")) == {C.document_id(a.id)}
    assert docs(C.user_scope(tenant, "alice", "postgres")) == {C.document_id(a.id), C.document_id(b.id)}
    assert docs(C.contexts_scope(tenant, "postgres", metadata={"project": "payments"}, mode="keyword")) == \
        {C.document_id(a.id), C.document_id(c.id)}
    assert docs(C.user_scope(tenant, "alice", "postgres", mode="vector")) == {C.document_id(a.id), C.document_id(b.id)}
    assert docs(C.user_scope(tenant + "-x", "alice", "postgres")) == set()
    C.update_context_metadata(pool, tenant, b.id, {"project": "payments"})
    assert docs(C.contexts_scope(tenant, "postgres", metadata={"project": "payments"})) == \
        {C.document_id(x.id) for x in (a, b, c)}


def test_deleting_contexts_keeps_bm25_statistics_exact(pool, tenant, fake_embedder):
    ids = []
    for i in range(3):
        ctx = C.create_context(pool, tenant, {})
        _append(pool, tenant, ctx.id, fake_embedder, *_conversation(8, topic=f"topic{i}"))
        ids.append(ctx.id)
    C.delete_context(pool, tenant, ids[1])
    with pool.connection() as conn:
        stats = conn.execute("SELECT sum(n_chunks), sum(total_len) FROM tenant_stats WHERE tenant_id = %s",
                             [tenant]).fetchone()
        real = conn.execute("SELECT count(*), sum(token_count) FROM chunks WHERE tenant_id = %s", [tenant]).fetchone()
    assert stats == real and wrong_document_frequencies(pool, tenant) == 0
    hits = C.search_contexts(pool, SearchRequest(query="topic1", tenant=tenant, mode="keyword"))
    assert hits == []


def test_find_similar_ranks_contexts_by_their_chunks(pool, tenant, fake_embedder):
    def make(text_words, t=tenant):
        ctx = C.create_context(pool, t, {"user_id": "u"})
        _append(pool, t, ctx.id, fake_embedder, *[_msg("user", f"{text_words} {i}") for i in range(4)])
        return ctx.id

    ref = make("kubernetes deployment rollout replicas pods")
    near = make("kubernetes deployment rollout pods restart")
    far = make("banana bread recipe flour sugar oven")
    make("kubernetes deployment rollout replicas pods", t=tenant + "-other")
    model = resolve_model(pool, fake_embedder.model_id)
    similar = C.find_similar(pool, tenant, ref, model=model, limit=5)
    assert [s.context_id for s in similar] == [near, far]
    assert similar[0].score > similar[1].score and similar[0].score > 0.5
    assert C.find_similar(pool, tenant, ref, model=model, metadata={"user_id": "nobody"}) == []
    empty = C.create_context(pool, tenant, {})
    assert C.find_similar(pool, tenant, empty.id, model=model) == []


def test_encrypted_context_stores_ciphertext_and_still_searches(pool, tenant, fake_embedder):
    cipher = ContextCipher(ContextCipher.generate_key())
    register_cipher("test-context-key", cipher)
    secret = "the database password is hunter2 and the rotation runbook lives in vault"
    ctx = C.create_context(pool, tenant, {"user_id": "u", "encrypted": True, "key_name": "test-context-key"})
    _append(pool, tenant, ctx.id, fake_embedder, _msg("user", secret),
            _msg("assistant", "calling vault", tool_name="vault", tool_arguments={"path": "secret/db/hunter2"}))
    with pool.connection() as conn:
        rows = conn.execute("SELECT content, sealed, tool_arguments FROM context_messages WHERE context_id = %s",
                            [ctx.id]).fetchall()
        chunk_text, chunk_hash = conn.execute("SELECT content, content_hash FROM chunks WHERE tenant_id = %s"
                                              " ORDER BY seq LIMIT 1", [tenant]).fetchone()  # the secret's turn
    assert all(r[0] is None and r[2] is None and b"hunter2" not in bytes(r[1]) for r in rows)
    assert "password is hunter2" not in chunk_text and "hunter2" in chunk_text.split()  # lexemes, sorted
    assert chunk_hash != hashlib.sha256(render(Turn("user", secret)).encode()).hexdigest()
    page = C.get_context(pool, tenant, ctx.id)
    assert page.messages[0].content == secret and page.messages[1].tool_arguments == {"path": "secret/db/hunter2"}
    for mode in ("keyword", "vector", "hybrid"):
        hits = C.search_contexts(pool, C.user_scope(tenant, "u", "hunter2 password rotation", mode=mode),
                                 embedder=fake_embedder)
        assert hits and secret in hits[0].text and "sealed" not in hits[0].metadata
    wrong = ContextCipher(ContextCipher.generate_key())
    with pytest.raises(ConfigError, match="wrong key"):
        C.get_context(pool, tenant, ctx.id, cipher=wrong)
    _append(pool, tenant, ctx.id, fake_embedder, _msg("user", "and rotate it monthly"))  # carries decrypted overlap
    assert C.get_context(pool, tenant, ctx.id).context.message_count == 3


def test_cipher_rotation_and_bad_keys():
    old, new = ContextCipher.generate_key(), ContextCipher.generate_key()
    token = ContextCipher(old).encrypt("text")
    rotated = ContextCipher(f"{new},{old}")
    assert rotated.decrypt(token) == "text" and ContextCipher(new).decrypt(rotated.encrypt("t")) == "t"
    with pytest.raises(ConfigError, match="not a Fernet key"):
        ContextCipher("short")
    with pytest.raises(ConfigError, match="empty"):
        ContextCipher(" , ")
