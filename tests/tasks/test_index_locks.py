"""The search indexes' advisory locks: a bulk load holds them from the drop to the rebuild, so that a concurrent
small ingest (which finds the indexes missing) neither rebuilds them mid-load nor waits for the load."""

from __future__ import annotations

import threading

import tasks.indexes as indexes_module
from flows.ingest import DocumentSpec, IngestRequest, IngestResult, ingest_documents
from tasks.indexes import bulk_load, index_lock, keyword_index_exists, model_index_exists, rebuild_indexes
from tasks.registry import ensure_model


def _indexes(pool, model_id) -> tuple[bool, bool]:
    with pool.connection() as conn:
        return model_index_exists(conn, model_id), keyword_index_exists(conn)


def _small_ingest(settings, tenant, n: int = 3) -> IngestResult:
    docs = [DocumentSpec(document_id=f"small{i}", text=f"a small document number {i} about caches") for i in range(n)]
    return ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)


def _in_thread(fn, timeout: float = 60.0):
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(result=fn()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"blocked for more than {timeout} s"
    return out["result"]


def test_a_small_ingest_during_a_bulk_load_neither_rebuilds_nor_waits(settings, tenant, pool, fake_embedder):
    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    assert _indexes(pool, model_id) == (True, True)
    # Ingest A, a bulk load (more new rows than the model holds, above the threshold): drops both indexes and holds
    # their locks on a connection of its own until it has rebuilt them.
    with bulk_load(pool, model_id, fake_embedder.dimensions, new_rows=10**9) as bulk:
        assert bulk is True and _indexes(pool, model_id) == (False, False)
        # Ingest B, small, meanwhile: finds them missing, cannot take the locks, so leaves them to A.
        summary = _in_thread(lambda: _small_ingest(settings, tenant))
        assert summary.chunks_inserted == 3 and summary.bulk_index_rebuild is False
        assert _indexes(pool, model_id) == (False, False)
    # A rebuilt them at its end (and released the locks).
    assert _indexes(pool, model_id) == (True, True)
    lock = index_lock(pool, model_id)
    assert lock is not None
    lock.close()


def test_a_bulk_load_whose_locks_are_held_elsewhere_drops_nothing(pool, fake_embedder):
    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    held = index_lock(pool, model_id)  # another process's load (or a backfill) of this model
    try:
        with bulk_load(pool, model_id, fake_embedder.dimensions, new_rows=10**9) as bulk:
            assert bulk is False and _indexes(pool, model_id) == (True, True)
        assert rebuild_indexes(pool, model_id, fake_embedder.dimensions, wait=False) is False
    finally:
        held.close()
    assert _indexes(pool, model_id) == (True, True)


def test_indexes_left_missing_by_a_load_cut_short_are_rebuilt_by_the_next_ingest(settings, tenant, pool,
                                                                                  fake_embedder):
    model_id = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    with pool.connection() as conn:
        indexes_module.drop_model_index(conn, model_id)
        indexes_module.drop_keyword_index(conn)
        conn.execute("INSERT INTO postings_deferred (tenant_id) VALUES (%s)", [tenant])  # the load's deferral too
    summary = _small_ingest(settings, tenant)  # nobody holds the locks: the crashed loader's session is gone
    assert summary.bulk_index_rebuild is True
    assert _indexes(pool, model_id) == (True, True)
    with pool.connection() as conn:  # and the deferral it left ends with them: postings and frequencies rebuilt
        assert conn.execute("SELECT count(*) FROM postings_deferred WHERE tenant_id = %s", [tenant]).fetchone()[0] == 0
        postings, df = conn.execute(
            "SELECT (SELECT sum(n) FROM chunk_postings WHERE tenant_id = %(t)s),"
            " (SELECT sum(df) FROM term_stats WHERE tenant_id = %(t)s)", {"t": tenant}).fetchone()
        counted = conn.execute("SELECT count(*) FROM chunks, unnest(tsvector_to_array(tsv))"
                               " WHERE tenant_id = %s", [tenant]).fetchone()[0]
    assert postings == df == counted > 0
