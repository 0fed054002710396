"""Conversation turns as the retrieval unit, on the real database: one chunk per message, the message's time on
its chunk, time filters, and hybrid search that lets a turn's neighbours and speaker speak for it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from blocks.settings import ChunkSettings, SearchSettings
from tasks import contexts as C
from tasks import search
from tasks.embed import EmbedStats
from tasks.search import SearchRequest

TURNS = ChunkSettings(size=40, overlap=12)  # conversation="turns" is the default
T0 = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)


def _append(pool, tenant, cid, embedder, messages, chunk=TURNS):
    return C.append_messages(pool, tenant, cid, messages, embedder=embedder, chunk=chunk)


def _chunk_rows(pool, tenant, cid):
    with pool.connection() as conn:
        return conn.execute("SELECT seq, content, metadata->'message_range', created_at FROM chunks"
                            " WHERE tenant_id = %s AND document_id = %s ORDER BY seq",
                            [tenant, C.document_id(cid)]).fetchall()


def test_each_message_is_one_chunk_with_its_speaker_and_time(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {"user_id": "ana"})
    first = _append(pool, tenant, ctx.id, fake_embedder, [
        {"role": "user", "name": "Ana", "content": "I went to the support group yesterday", "created_at": T0},
        {"role": "assistant", "name": "Ben", "content": "How was it?", "created_at": T0 + timedelta(minutes=1)},
    ])
    EmbedStats.reset()
    second = _append(pool, tenant, ctx.id, fake_embedder, [{"role": "user", "content": "it was powerful"}])
    assert (first.chunks_added, first.carried, second.chunks_added, second.carried) == (2, 0, 1, 0)
    assert second.texts_embedded == EmbedStats.texts == 1  # only the new message, nothing carried
    rows = _chunk_rows(pool, tenant, ctx.id)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (0, "Ana: I went to the support group yesterday", [0, 0]), (1, "Ben: How was it?", [1, 1]),
        (2, "user: it was powerful", [2, 2])]
    assert rows[0][3] == T0 and rows[1][3] == T0 + timedelta(minutes=1)
    stored = C.get_context(pool, tenant, ctx.id).messages[2].created_at
    assert rows[2][3] == stored  # no time given: the append's, as on the message itself


def test_unchanged_turn_text_costs_no_embedding(pool, tenant, fake_embedder):
    a, b = C.create_context(pool, tenant, {}), C.create_context(pool, tenant, {})
    turn = {"role": "user", "name": "Ana", "content": "restart the ingress controller"}
    _append(pool, tenant, a.id, fake_embedder, [turn])
    EmbedStats.reset()
    again = _append(pool, tenant, b.id, fake_embedder, [turn, turn])
    assert again.chunks_added == 2 and again.texts_embedded == 0 and EmbedStats.calls == 0


def test_time_filters_keep_only_turns_said_in_the_window(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {})
    _append(pool, tenant, ctx.id, fake_embedder, [
        {"role": "user", "content": f"postgres failover drill number {i}", "created_at": T0 + timedelta(days=i)}
        for i in range(5)])
    window = {"created_after": T0 + timedelta(days=1), "created_before": T0 + timedelta(days=3)}
    for mode in ("vector", "keyword", "hybrid"):
        hits = C.search_contexts(pool, C.context_scope(tenant, ctx.id, "postgres failover drill", mode=mode,
                                                       limit=10, **window), embedder=fake_embedder)
        assert sorted(h.metadata["message_range"][0] for h in hits) == [1, 2], mode
        assert all(window["created_after"] <= h.created_at < window["created_before"] for h in hits)
    with pytest.raises(ValidationError, match="created_after must be before created_before"):
        SearchRequest(query="x", created_after=T0, created_before=T0)
    with pytest.raises(ValidationError, match="time zone"):
        SearchRequest(query="x", created_after=datetime(2023, 5, 8))


def _dialogue(pool, tenant, embedder):
    ctx = C.create_context(pool, tenant, {})
    said = [
        ("Ana", "any other brands you are dreaming of working with"),
        ("Ben", "under armour would be really cool"),            # the answer: no word of the question below
        ("Ana", "my garden has tomatoes and basil this year"),
        ("Ben", "the brands of garden hoses are all the same"),  # shares "brands" only
        ("Ana", "I painted a sunrise over the lake"),
        ("Ben", "the lake sounds lovely"),
    ]
    _append(pool, tenant, ctx.id, embedder, [{"role": "user" if n == "Ana" else "assistant", "name": n, "content": c}
                                             for n, c in said])
    return ctx


def test_hybrid_turn_hits_keep_message_range_and_rank_the_answer_by_its_question(pool, tenant, fake_embedder):
    ctx = _dialogue(pool, tenant, fake_embedder)
    query = "which brands are you dreaming of working with"
    plain = SearchSettings(turn_neighbour_weight=0, turn_window_weight=0, speaker_boost=0)

    def ranked(settings):
        hits = C.search_contexts(pool, C.context_scope(tenant, ctx.id, query, limit=6), embedder=fake_embedder,
                                 settings=settings)
        assert all(h.metadata["message_range"][0] == h.metadata["message_range"][1] for h in hits)
        return [h.metadata["message_range"][0] for h in hits]

    without, with_context = ranked(plain), ranked(SearchSettings())
    assert without[0] == 0 and with_context[0] == 0
    assert 1 not in without[:2]  # alone, the answer shares no word with the query
    assert with_context[1] == 1  # its question's score lifts it above the "garden hoses" turn


def test_a_turn_no_ranking_found_joins_through_its_neighbour_within_the_filters(pool, tenant, fake_embedder):
    ctx = _dialogue(pool, tenant, fake_embedder)
    ids = {r[2][0]: r for r in _chunk_rows(pool, tenant, ctx.id)}
    with pool.connection() as conn:
        by_turn = dict(conn.execute("SELECT (metadata->'message_range'->>0)::int, id FROM chunks WHERE tenant_id = %s"
                                    " AND document_id = %s", [tenant, C.document_id(ctx.id)]).fetchall())
    assert set(by_turn) == set(ids) == set(range(6))
    request = C.context_scope(tenant, ctx.id, "dreaming of working with")
    settings = SearchSettings(turn_window=1)
    # Both rankings returned turn 0 only: turn 1, its neighbour, competes on turn 0's score.
    with pool.connection() as conn:
        fused = dict(search._fuse(conn, request, settings, {by_turn[0]: 0.9}, {by_turn[0]: 3.0}))
    assert set(fused) == {by_turn[0], by_turn[1]}
    assert fused[by_turn[1]] == pytest.approx(settings.turn_neighbour_weight * 1.0 + settings.turn_window_weight / 3)
    later = request.model_copy(update={"created_after": datetime.now(timezone.utc) + timedelta(days=1)})
    with pool.connection() as conn:
        assert set(dict(search._fuse(conn, later, settings, {by_turn[0]: 0.9}, {by_turn[0]: 3.0}))) == {by_turn[0]}


def test_the_speaker_a_query_names_is_favoured(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {})
    _append(pool, tenant, ctx.id, fake_embedder, [
        {"role": "user", "name": "Ana", "content": "the hike was long"},
        {"role": "assistant", "name": "Ben", "content": "the hike up the steep ridge was long and cold"},
        {"role": "user", "name": "Ana", "content": "we bought a cold drink after"},
        {"role": "assistant", "name": "Ben", "content": "the next hike is in june"},
    ])
    query = "what did Ana say about the long cold hike up the steep ridge"

    def first(boost):
        settings = SearchSettings(turn_window_weight=0, turn_neighbour_weight=0, speaker_boost=boost)
        hits = C.search_contexts(pool, C.context_scope(tenant, ctx.id, query, limit=2), embedder=fake_embedder,
                                 settings=settings)
        return hits[0].metadata["speakers"]

    assert first(0.0) == ["assistant (Ben)"]  # more of the query's words
    assert first(SearchSettings().speaker_boost) == ["user (Ana)"]


def test_windows_remain_available_and_searchable(pool, tenant, fake_embedder):
    ctx = C.create_context(pool, tenant, {})
    windows = ChunkSettings(size=40, overlap=12, conversation="windows")
    _append(pool, tenant, ctx.id, fake_embedder, [{"role": "user", "content": f"step {i} of the rollout"}
                                                  for i in range(6)], chunk=windows)
    rows = _chunk_rows(pool, tenant, ctx.id)
    assert len(rows) < 6 and rows[0][2][1] > rows[0][2][0]  # several messages per chunk
    hits = C.search_contexts(pool, C.context_scope(tenant, ctx.id, "rollout step"), embedder=fake_embedder)
    assert hits and all("message_range" in h.metadata for h in hits)
