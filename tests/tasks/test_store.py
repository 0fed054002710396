"""Schema migrations, models side by side, and the external-URL path, on real PostgreSQL."""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg
import pytest

from blocks.errors import ConfigError, InputError, StoreError
from blocks.postgres import PgVectorStore, close_pools, start_embedded
from blocks.settings import Settings
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks import migrate
from tasks.chunk import Chunk
from tasks.registry import ensure_model, resolve_model
from tasks.search import SearchRequest, run_search
from tasks.store import DocumentIn, write_documents


def _chunk(seq: int, text: str) -> Chunk:
    return Chunk(seq=seq, text=text, token_count=len(text.split()), content_hash=hashlib.sha256(text.encode()).hexdigest())


def test_migrations_apply_once_and_refuse_edits(session_pool, monkeypatch):
    migrate._done.clear()
    assert migrate.ensure_schema(session_pool) == []  # already applied by the fixture: idempotent
    version, name, sql = migrate.migrations()[0]
    monkeypatch.setattr(migrate, "migrations", lambda: [(version, name, sql + "\n-- edited")])
    migrate._done.clear()
    with pytest.raises(StoreError, match="differs from the one applied"):
        migrate.ensure_schema(session_pool)
    migrate._done.clear()


def test_two_models_of_different_sizes_live_side_by_side(pool, tenant):
    small = ensure_model(pool, "test-model-3d", 3)
    large = ensure_model(pool, "test-model-5d", 5)
    doc = DocumentIn(document_id="d", content_hash="h", chunks=[_chunk(0, "alpha beta"), _chunk(1, "gamma delta")])
    v3 = {c.content_hash: np.array(v, np.float32) for c, v in zip(doc.chunks, ([1, 0, 0], [0, 1, 0]))}
    v5 = {c.content_hash: np.array(v, np.float32) for c, v in zip(doc.chunks, ([0, 0, 0, 0, 1], [0, 0, 0, 1, 0]))}
    write_documents(pool, tenant, small, 3, [doc], v3)
    result = write_documents(pool, tenant, large, 5, [doc], v5)
    assert result.chunks_kept == 2 and result.embeddings_inserted == 2 and result.chunks_inserted == 0
    with pool.connection() as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings'")}
    assert {f"embeddings_hnsw_m{small}", f"embeddings_hnsw_m{large}"} <= indexes
    from blocks.settings import SearchSettings

    for model, vec, expected in ((small, [0, 1, 0], 1), (large, [0, 0, 0, 0, 1], 0)):
        dims = len(vec)
        hits = run_search(pool, SearchRequest(query="q", mode="vector", tenant=tenant, limit=1),
                          settings=SearchSettings(), model=(model, dims), vector=np.array(vec, np.float32))
        assert hits[0].seq == expected


def test_model_dimension_mismatch_is_refused(pool):
    ensure_model(pool, "test-model-4d", 4)
    with pytest.raises(ConfigError, match="registered with 4 dimensions, the embedder gives 8"):
        ensure_model(pool, "test-model-4d", 8)


def test_wrong_dimension_vector_stores_nothing(pool, tenant):
    model = ensure_model(pool, "test-model-3d", 3)
    doc = DocumentIn(document_id="bad", content_hash="h", chunks=[_chunk(0, "one"), _chunk(1, "two")])
    vectors = {doc.chunks[0].content_hash: np.ones(3, np.float32), doc.chunks[1].content_hash: np.ones(4, np.float32)}
    with pytest.raises(InputError, match="bad#1: expected a vector of 3 dimensions"):
        write_documents(pool, tenant, model, 3, [doc], vectors)
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM documents WHERE tenant_id = %s", [tenant]).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM chunks WHERE tenant_id = %s", [tenant]).fetchone()[0] == 0


def test_bm25_statistics_follow_inserts_and_deletes(pool, tenant, settings):
    ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="a", text="kubernetes pods crash"),
                                                       DocumentSpec(document_id="b", text="kubernetes nodes")]), settings)
    with pool.connection() as conn:
        df = dict(conn.execute("SELECT lexeme, sum(df) FROM term_stats WHERE tenant_id = %s GROUP BY lexeme",
                               [tenant]).fetchall())
        stats = conn.execute("SELECT sum(n_chunks), sum(total_len) FROM tenant_stats WHERE tenant_id = %s",
                             [tenant]).fetchone()
    assert df["kubernet"] == 2 and df["pod"] == 1 and stats == (2, 5)
    ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="a", text="kubernetes services")]), settings)
    with pool.connection() as conn:
        df = dict(conn.execute("SELECT lexeme, sum(df) FROM term_stats WHERE tenant_id = %s GROUP BY lexeme",
                               [tenant]).fetchall())
    assert df["kubernet"] == 2 and df["pod"] == 0 and df["servic"] == 1


def test_concurrent_writers_of_one_tenant_do_not_wait_on_bm25_statistics(pool, tenant):
    """Two open transactions store and delete chunks sharing terms in one tenant: the second never waits for the
    first's statistics rows (018: each writes its own shard; lock_timeout turns a wait into an error, which the
    one-row-per-term schema before it raised here), and once both commit the sums are exact."""
    model = ensure_model(pool, "test-model-3d", 3)
    for doc_id in ("old-a", "old-b"):
        doc = DocumentIn(document_id=doc_id, content_hash="h", chunks=[_chunk(0, "kubernetes pods restart")])
        write_documents(pool, tenant, model, 3, [doc], {doc.chunks[0].content_hash: np.ones(3, np.float32)})
    insert = """
        WITH d AS (INSERT INTO documents (tenant_id, document_id, kind, content_hash) VALUES (%(t)s, %(d)s, 'text', 'h'))
        INSERT INTO chunks (tenant_id, document_id, seq, content, content_hash, token_count)
        VALUES (%(t)s, %(d)s, 0, %(text)s, 'h', 3)"""
    with psycopg.connect(pool.conninfo) as first, psycopg.connect(pool.conninfo) as second:
        second.execute("SET lock_timeout = '5s'")
        first.execute(insert, {"t": tenant, "d": "w1", "text": "kubernetes pods crash"})
        first.execute("DELETE FROM documents WHERE tenant_id = %s AND document_id = 'old-a'", [tenant])
        second.execute(insert, {"t": tenant, "d": "w2", "text": "kubernetes nodes crash"})
        second.execute("DELETE FROM documents WHERE tenant_id = %s AND document_id = 'old-b'", [tenant])
        first.commit()
        second.commit()
    with pool.connection() as conn:
        df = dict(conn.execute("SELECT lexeme, sum(df) FROM term_stats WHERE tenant_id = %s GROUP BY lexeme",
                               [tenant]).fetchall())
        stats = conn.execute("SELECT sum(n_chunks), sum(total_len), count(*) FROM tenant_stats WHERE tenant_id = %s",
                             [tenant]).fetchone()
    assert (df["kubernet"], df["crash"], df["pod"], df["node"], df["restart"]) == (2, 2, 1, 1, 0)
    assert stats[:2] == (2, 6) and stats[2] >= 2  # two writers, two shards
    hits = run_search(pool, SearchRequest(query="pods crash", tenant=tenant, mode="keyword"),
                      settings=Settings().search)
    assert [h.document_id for h in hits] == ["w1", "w2"]


def test_database_url_points_at_another_server(tmp_path, monkeypatch, fake_embedder):
    """DEVMESH_DATABASE_URL: a separately started server is used, and the default home stays untouched."""
    url = start_embedded(tmp_path / "other")
    monkeypatch.setenv("DEVMESH_DATABASE_URL", url)
    monkeypatch.setenv("DEVMESH_HOME", str(tmp_path / "unused-home"))
    settings = Settings(embedder="fake")
    assert settings.database_url == url
    summary = ingest_documents(IngestRequest(documents=[DocumentSpec(document_id="x", text="external server works")]), settings)
    assert summary.chunks_inserted == 1
    assert "PostgreSQL at" in summary.where and "host=" not in summary.where
    hits = search_now(SearchRequest(query="external server", mode="keyword"), settings)
    assert hits[0].document_id == "x"
    assert not (tmp_path / "unused-home").exists()
    store = PgVectorStore.from_settings(settings)
    with store.pool().connection() as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1


def test_second_process_reuses_the_running_embedded_server(tmp_path):
    import subprocess
    import sys

    url = start_embedded(tmp_path / "shared")
    pid = (tmp_path / "shared" / "pgdata" / "postmaster.pid").read_text().split()[0]
    code = ("from blocks.postgres import start_embedded; import sys, pathlib; "
            f"print(start_embedded(pathlib.Path({str(tmp_path / 'shared')!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == url
    # still the same postmaster after the second process exited: it joined, it did not stop ours
    assert (tmp_path / "shared" / "pgdata" / "postmaster.pid").read_text().split()[0] == pid
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_empty_database_url_is_a_config_error(monkeypatch):
    monkeypatch.setenv("DEVMESH_DATABASE_URL", " ")
    with pytest.raises(ConfigError, match="empty"):
        PgVectorStore.from_settings(Settings())
