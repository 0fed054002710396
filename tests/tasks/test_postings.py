"""The postings path of keyword search (tasks/postings.py, tasks/sql/019_bm25_postings.sql): exact BM25 against
the GIN path whatever the history of the tenant's chunks — many small inserts, deletions, compaction, a bulk load
that deferred them and the document frequencies (034_postings_deferred.sql, 035_bulk_term_stats.sql) — and no tenant's postings reach another tenant's search."""

from __future__ import annotations

import random
import threading

import psycopg

from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tasks.gin_keyword import QUERY_TERMS
from tasks.indexes import bulk_load
from tasks.postings import compact_postings, postings_ranking, tenants_to_compact
from tasks.registry import ensure_model
from tasks.search import SearchRequest, gin_keyword_ranking, keyword_ranking
from tasks.store import delete_documents
from tests.ranking import same_ranking as _same_ranking, wrong_document_frequencies


def _docs(rng: random.Random, prefix: str, count: int) -> list[DocumentSpec]:
    vocab = [f"w{i}" for i in range(150)]
    weights = [1 / (i + 1) for i in range(150)]  # Zipf: a few very common words, many rare ones
    return [DocumentSpec(document_id=f"{prefix}{i}", text=" ".join(rng.choices(vocab, weights, k=rng.randint(3, 50))))
            for i in range(count)]


def _queries(rng: random.Random, count: int) -> list[str]:
    return [" ".join(f"w{rng.randint(0, 149)}" for _ in range(rng.randint(1, 6))) for _ in range(count)]


def _assert_same_as_gin(pool, settings, tenant: str, queries: list[str]) -> int:
    """Every query ranks alike on both paths, at 10 and 50 hits; returns how many queries found something."""
    found = 0
    for text in queries:
        request = SearchRequest(query=text, mode="keyword", tenant=tenant)
        for n in (10, 50):
            exact = gin_keyword_ranking(pool, request, n, settings.search)
            got = keyword_ranking(pool, request, n, settings.search)
            assert _same_ranking(got, exact), (text, n, got[:3], exact[:3])
            assert len(got) == len(exact)
        found += bool(exact)
    return found


def _live_df(pool, tenant: str) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT coalesce(sum(df), 0) FROM term_stats WHERE tenant_id = %s", [tenant]).fetchone()[0]


def _deferred(pool, tenant: str) -> bool:
    with pool.connection() as conn:
        return conn.execute("SELECT EXISTS (SELECT FROM postings_deferred WHERE tenant_id = %s)", [tenant]).fetchone()[0]


def _segments(pool, tenant: str) -> tuple[int, int, int]:
    """(rows, lexemes, entries) of the tenant's postings."""
    with pool.connection() as conn:
        return conn.execute("SELECT count(*), count(DISTINCT lexeme), coalesce(sum(n), 0) FROM chunk_postings"
                            " WHERE tenant_id = %s", [tenant]).fetchone()


def test_postings_rank_like_gin_through_small_inserts_deletes_and_compaction(settings, tenant, pool):
    rng = random.Random(3)
    ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "bulk", 300)), settings)
    for i in range(12):  # one small ingest at a time: a segment per lexeme each
        ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, f"small{i}-", 2)), settings)
    queries = _queries(rng, 25)
    rows, lexemes, _ = _segments(pool, tenant)
    assert rows > lexemes  # several segments for some lexemes
    assert _assert_same_as_gin(pool, settings, tenant, queries) >= 20

    # deleted chunks leave their entries behind until compaction; search must not return them nor miss the rest
    delete_documents(pool, tenant, [f"bulk{i}" for i in range(0, 300, 2)])
    assert tenant in tenants_to_compact(pool)
    _, _, stale_entries = _segments(pool, tenant)
    _assert_same_as_gin(pool, settings, tenant, queries)

    written = compact_postings(pool, tenant)
    rows, lexemes, entries = _segments(pool, tenant)
    assert written == rows == lexemes  # one segment per lexeme
    with pool.connection() as conn:
        live = conn.execute("SELECT sum(df) FROM term_stats WHERE tenant_id = %s", [tenant]).fetchone()[0]
    assert entries == live < stale_entries
    assert tenant not in tenants_to_compact(pool)
    _assert_same_as_gin(pool, settings, tenant, queries)


def test_a_deleted_top_hit_is_replaced_by_the_next_best(settings, tenant, pool):
    # 30 chunks hold the rare word; deleting the best 25 leaves fewer live hits than the spare the search scores
    docs = [DocumentSpec(document_id=f"d{i}", text=("zymurgy " * (30 - i)) + "filler words here") for i in range(30)]
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    delete_documents(pool, tenant, [f"d{i}" for i in range(25)])
    request = SearchRequest(query="zymurgy", mode="keyword", tenant=tenant)
    got = keyword_ranking(pool, request, 5, settings.search)
    assert got == gin_keyword_ranking(pool, request, 5, settings.search)
    assert len(got) == 5


def test_no_tenant_reads_another_tenants_postings(settings, tenant, pool):
    other = f"{tenant}-other"
    ingest_documents(IngestRequest(tenant=other, documents=[DocumentSpec(document_id="secret",
                                                                         text="quokkazebra launch codes")]), settings)
    ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="mine", text="launch plan")]),
                     settings)
    assert keyword_ranking(pool, SearchRequest(query="quokkazebra", tenant=tenant), 10, settings.search) == []
    hits = keyword_ranking(pool, SearchRequest(query="launch codes quokkazebra", tenant=tenant), 10, settings.search)
    assert len(hits) == 1
    compact_postings(pool, tenant)  # a compaction rebuilds only its own tenant
    assert _segments(pool, other)[0] == 3


def test_compaction_loses_no_chunk_written_while_it_runs(settings, tenant, pool):
    rng = random.Random(9)
    ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "base", 200)), settings)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            for i in range(8):
                ingest_documents(IngestRequest(tenant=tenant, documents=_docs(random.Random(i), f"live{i}-", 5)),
                                 settings)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        compact_postings(pool, tenant)
    thread.join()
    assert not errors
    with pool.connection() as conn:
        live = conn.execute("SELECT sum(df) FROM term_stats WHERE tenant_id = %s", [tenant]).fetchone()[0]
    assert _segments(pool, tenant)[2] == live  # every live chunk's entries, none twice
    _assert_same_as_gin(pool, settings, tenant, _queries(rng, 15))


def test_a_bulk_load_defers_its_tenants_postings_and_rebuilds_them(settings, tenant, pool, fake_embedder):
    rng = random.Random(5)
    other = f"{tenant}-other"
    ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "before", 60)), settings)
    ingest_documents(IngestRequest(tenant=other, documents=_docs(rng, "other", 20)), settings)
    queries = _queries(rng, 15)
    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    with bulk_load(pool, model_id, fake_embedder.dimensions, new_rows=10**9, tenant=tenant) as bulk:
        assert bulk and _deferred(pool, tenant) and not _deferred(pool, other)
        entries_before, df_before = _segments(pool, tenant)[2], _live_df(pool, tenant)
        ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "loaded", 80)), settings)
        delete_documents(pool, tenant, [f"before{i}" for i in range(0, 60, 3)])
        ingest_documents(IngestRequest(tenant=other, documents=_docs(rng, "other-more", 5)), settings)
        assert _segments(pool, tenant)[2] == entries_before  # the load wrote no postings for its tenant,
        assert _live_df(pool, tenant) == df_before  # nor document frequencies, for its inserts or its deletes...
        assert _segments(pool, other)[2] == _live_df(pool, other)  # ...and every other tenant's as before
        assert wrong_document_frequencies(pool, other) == 0
        request = SearchRequest(query=queries[0], mode="keyword", tenant=tenant)
        with pool.connection() as conn:
            assert postings_ranking(conn, request.query, tenant, 10, settings.search) is None
        # meanwhile the tenant's searches take the GIN path: the loaded chunks are found, with the frequencies
        # counted in its chunks, the very scores the rebuilt statistics give below
        assert _assert_same_as_gin(pool, settings, tenant, queries) >= 10
        during = [keyword_ranking(pool, SearchRequest(query=q, mode="keyword", tenant=tenant), 20, settings.search)
                  for q in queries]
        assert any(tenant == t for t in tenants_to_compact(pool))
    assert not _deferred(pool, tenant)
    assert wrong_document_frequencies(pool, tenant) == 0  # rebuilt from the chunks
    assert _segments(pool, tenant)[2] == _live_df(pool, tenant)  # rebuilt: every live chunk's entries once
    with pool.connection() as conn:
        assert postings_ranking(conn, queries[0], tenant, 10, settings.search) is not None
    assert _assert_same_as_gin(pool, settings, tenant, queries) >= 10
    for text, ranked in zip(queries, during):
        after = keyword_ranking(pool, SearchRequest(query=text, mode="keyword", tenant=tenant), 20, settings.search)
        assert _same_ranking(ranked, after), (text, ranked[:3], after[:3])
    assert tenant not in tenants_to_compact(pool)


def test_a_new_tenants_first_bulk_load_is_searchable_while_it_runs(settings, tenant, pool, fake_embedder):
    # no term_stats row at all while the first load runs: the postings read must still see the deferral
    rng = random.Random(8)
    queries = _queries(rng, 10)
    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    with bulk_load(pool, model_id, fake_embedder.dimensions, new_rows=10**9, tenant=tenant):
        ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "first", 40)), settings)
        assert _live_df(pool, tenant) == 0
        during = [keyword_ranking(pool, SearchRequest(query=q, mode="keyword", tenant=tenant), 10, settings.search)
                  for q in queries]
    assert sum(bool(r) for r in during) >= 5
    for text, ranked in zip(queries, during):
        after = keyword_ranking(pool, SearchRequest(query=text, mode="keyword", tenant=tenant), 10, settings.search)
        assert _same_ranking(ranked, after), (text, ranked[:3], after[:3])


def test_a_search_during_a_load_reads_frequencies_and_totals_in_one_snapshot(settings, tenant, pool, fake_embedder):
    # a batch of the load commits between the search's first read (the tenant's totals) and its count of the
    # frequencies in the chunks: both must come from one snapshot, or common words get more chunks than the
    # tenant has (a negative idf) and the ranking is not BM25's
    rng = random.Random(11)
    later = _docs(rng, "late", 60)
    request = SearchRequest(query="w0 w1 w2 w7", mode="keyword", tenant=tenant)
    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    fired = []

    class CommittingMeanwhile(psycopg.Connection):
        def execute(self, query, params=None, **kwargs):
            cursor = super().execute(query, params, **kwargs)
            if query is QUERY_TERMS and not fired:
                fired.append(True)
                ingest_documents(IngestRequest(tenant=tenant, documents=later), settings)
            return cursor

    with bulk_load(pool, model_id, fake_embedder.dimensions, new_rows=10**9, tenant=tenant):
        ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "loaded", 20)), settings)
        with CommittingMeanwhile.connect(pool.conninfo) as conn:
            during = gin_keyword_ranking(conn, request, 20, settings.search)
        assert fired
        after = gin_keyword_ranking(pool, request, 20, settings.search)
    assert during and all(score > 0 for _, score in during)
    assert _same_ranking(during, after), (during[:3], after[:3])
    assert _same_ranking(keyword_ranking(pool, request, 20, settings.search), after)  # and the rebuilt postings


def test_outside_read_committed_a_deferred_tenants_writes_keep_their_statistics(tenant, pool):
    # such a transaction reads the deferral in a snapshot older than the lock: a rebuild committed meanwhile would
    # miss its chunks, so it always writes its postings and counts (a rebuild replaces them anyway)
    with pool.connection() as conn:
        conn.execute("INSERT INTO postings_deferred (tenant_id) VALUES (%s)", [tenant])
    with pool.connection() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("INSERT INTO documents (tenant_id, document_id, kind, content_hash, chunk_count)"
                     " VALUES (%s, 'rr', 'text', 'h', 1)", [tenant])
        conn.execute("INSERT INTO chunks (tenant_id, document_id, seq, content, content_hash, token_count)"
                     " VALUES (%s, 'rr', 0, 'quokka zebra', 'h0', 2)", [tenant])
    assert _live_df(pool, tenant) == 2 and _segments(pool, tenant)[2] == 2
    with pool.connection() as conn:  # and its deletes take their counts back
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        conn.execute("DELETE FROM chunks WHERE tenant_id = %s", [tenant])
    assert _live_df(pool, tenant) == 0
    with pool.connection() as conn:  # under READ COMMITTED the deferral holds
        conn.execute("INSERT INTO chunks (tenant_id, document_id, seq, content, content_hash, token_count)"
                     " VALUES (%s, 'rr', 0, 'quokka', 'h1', 1)", [tenant])
    assert _live_df(pool, tenant) == 0
    compact_postings(pool, tenant)
    assert _live_df(pool, tenant) == 1 and wrong_document_frequencies(pool, tenant) == 0


def test_postings_a_cut_short_load_left_deferred_are_rebuilt_by_compaction(settings, tenant, pool):
    rng = random.Random(6)
    with pool.connection() as conn:  # what a bulk load killed between its start and its rebuild leaves
        conn.execute("INSERT INTO postings_deferred (tenant_id) VALUES (%s)", [tenant])
    ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "orphan", 50)), settings)
    assert _segments(pool, tenant)[2] == 0
    queries = _queries(rng, 10)
    assert _assert_same_as_gin(pool, settings, tenant, queries) >= 5  # exact meanwhile, on the GIN path
    assert tenant in tenants_to_compact(pool)
    compact_postings(pool, tenant)
    assert not _deferred(pool, tenant) and _segments(pool, tenant)[2] == _live_df(pool, tenant)
    assert _assert_same_as_gin(pool, settings, tenant, queries) >= 5


def test_the_postings_cache_serves_only_rows_that_are_still_there(settings, tenant, pool, monkeypatch):
    """A search keeps the postings rows it read (tasks.postings' LRU, keyed by each row's ctid and xmin): a repeated
    search reads no postings bytes, and after deletes, small inserts and a compaction every search still ranks like
    the GIN path (new and rewritten rows have new ctids, so the cache cannot answer for them)."""
    import psycopg

    from tasks import postings

    rng = random.Random(11)
    ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "doc", 200)), settings)
    queries = _queries(rng, 15)
    assert settings.search.postings_cache_mb > 0
    _assert_same_as_gin(pool, settings, tenant, queries)  # fills the cache
    real_entries = postings.ENTRIES
    monkeypatch.setattr(postings, "ENTRIES", "SELECT no_such_function()")  # any read of postings bytes fails
    _assert_same_as_gin(pool, settings, tenant, queries)
    assert any(key[0] == tenant for key in postings._cache)

    delete_documents(pool, tenant, [f"doc{i}" for i in range(0, 200, 3)])
    ingest_documents(IngestRequest(tenant=tenant, documents=_docs(rng, "late", 5)), settings)
    compact_postings(pool, tenant)
    try:
        _assert_same_as_gin(pool, settings, tenant, queries)
        raise AssertionError("the compacted rows were answered from the cache")
    except psycopg.errors.UndefinedFunction:
        pass
    monkeypatch.setattr(postings, "ENTRIES", real_entries)
    _assert_same_as_gin(pool, settings, tenant, queries)

    # a row gone between the two reads (a compaction committed in between): the search reads the postings again
    monkeypatch.setattr(postings, "_cached_entries", lambda *args: None)
    _assert_same_as_gin(pool, settings, tenant, queries)
    # and with no cache at all
    monkeypatch.setattr(settings.search, "postings_cache_mb", 0)
    monkeypatch.setattr(postings, "ENTRIES", "SELECT no_such_function()")
    _assert_same_as_gin(pool, settings, tenant, queries)


def test_the_postings_cache_never_answers_one_tenant_with_anothers_rows(settings, tenant, pool):
    """The cache is the process's, shared by every tenant it serves: another tenant's search of the same words fills
    it first, and this tenant still ranks only its own chunks, exactly."""
    other = f"{tenant}-cached"
    words = "quokka rollout canary"
    ingest_documents(IngestRequest(tenant=other, documents=[
        DocumentSpec(document_id=f"theirs{i}", text=f"{words} theirs {i}") for i in range(5)]), settings)
    ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="mine", text="canary only")]),
                     settings)
    assert len(keyword_ranking(pool, SearchRequest(query=words, tenant=other), 10, settings.search)) == 5
    _assert_same_as_gin(pool, settings, tenant, [words, "quokka", "canary rollout"])
    hits = keyword_ranking(pool, SearchRequest(query=words, tenant=tenant), 10, settings.search)
    with pool.connection() as conn:
        mine = {r[0] for r in conn.execute("SELECT id FROM chunks WHERE tenant_id = %s", [tenant])}
    assert len(hits) == 1 and hits[0][0] in mine
