"""The ingest pipeline end to end on the real database, with the fake embedder (plain calls)."""

from __future__ import annotations

from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks.search import SearchRequest
from tests.factories import paragraphs


def _ingest(settings, tenant, docs, **kw):
    return ingest_documents(IngestRequest(tenant=tenant, documents=docs, **kw), settings)


def test_reingest_unchanged_makes_zero_embedding_calls(settings, tenant):
    docs = [DocumentSpec(document_id=f"doc{i}", text=paragraphs(12, f"topic{i}")) for i in range(3)]
    first = _ingest(settings, tenant, docs, chunk_size=40, chunk_overlap=8)
    assert first.chunks_inserted == first.chunks > 3
    assert first.texts_embedded == first.chunks
    second = _ingest(settings, tenant, docs, chunk_size=40, chunk_overlap=8)
    assert second.embedding_calls == 0
    assert second.documents_unchanged == 3
    assert second.chunks_inserted == 0


def test_editing_one_paragraph_reembeds_only_its_chunks(settings, tenant):
    text = paragraphs(30, "ingest")
    first = _ingest(settings, tenant, [DocumentSpec(document_id="a.txt", text=text)], chunk_size=40, chunk_overlap=0)
    edited = text.replace("Paragraph 15 about ingest", "Paragraph fifteen, rewritten, about ingest")
    second = _ingest(settings, tenant, [DocumentSpec(document_id="a.txt", text=edited)], chunk_size=40, chunk_overlap=0)
    assert 1 <= second.texts_embedded <= 2
    assert second.texts_embedded < first.chunks / 4
    assert second.chunks_inserted == second.texts_embedded
    assert second.chunks_deleted >= 1
    hits = search_now(SearchRequest(query="fifteen rewritten", mode="keyword", tenant=tenant), settings)
    assert hits and "fifteen" in hits[0].text


def test_removed_chunks_are_deleted(settings, tenant, pool):
    _ingest(settings, tenant, [DocumentSpec(document_id="d", text=paragraphs(20))], chunk_size=40, chunk_overlap=0)
    result = _ingest(settings, tenant, [DocumentSpec(document_id="d", text=paragraphs(5))], chunk_size=40, chunk_overlap=0)
    assert result.chunks_deleted > 0
    assert result.texts_embedded <= 1  # only the chunk at the new end of the text can differ
    with pool.connection() as conn:
        n = conn.execute("SELECT count(*) FROM chunks WHERE tenant_id = %s", [tenant]).fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM embeddings e LEFT JOIN chunks c ON c.id = e.chunk_id WHERE c.id IS NULL"
        ).fetchone()[0]
    assert n == result.chunks
    assert orphans == 0


def test_bad_items_fail_alone_and_are_named(settings, tenant, pool, tmp_path):
    good = tmp_path / "good.md"
    good.write_text("# Runbook\n\nRestart the payment service with kubectl rollout restart.")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "nul.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * 1024)
    settings.ingest.max_file_bytes = 512
    paths = [str(p) for p in (good, tmp_path / "empty.txt", tmp_path / "nul.txt", tmp_path / "latin1.txt", big,
                              tmp_path / "missing.txt")]
    summary = ingest_documents(IngestRequest(tenant=tenant, paths=paths), settings)
    errors = {e.item.rsplit("/", 1)[-1]: e.error for e in summary.errors}
    assert set(errors) == {"empty.txt", "nul.txt", "latin1.txt", "big.txt", "missing.txt"}
    assert "empty" in errors["empty.txt"]
    assert "binary" in errors["nul.txt"]
    assert "invalid UTF-8 at byte 3" in errors["latin1.txt"]
    assert "limit" in errors["big.txt"]
    with pool.connection() as conn:
        stored = [r[0] for r in conn.execute("SELECT document_id FROM documents WHERE tenant_id = %s", [tenant])]
    assert len(stored) == 1 and stored[0].endswith("good.md")


def test_metadata_flows_into_chunks_and_filters(settings, tenant):
    docs = [
        DocumentSpec(document_id="k8s", text="Scale the deployment to three replicas.", metadata={"team": "platform"}),
        DocumentSpec(document_id="db", text="Scale the database replicas carefully.", metadata={"team": "data"}),
    ]
    _ingest(settings, tenant, docs)
    hits = search_now(SearchRequest(query="scale replicas", tenant=tenant, metadata={"team": "data"}), settings)
    assert [h.document_id for h in hits] == ["db"]
    assert hits[0].metadata["team"] == "data"


def test_bulk_load_drops_and_rebuilds_both_indexes(settings, tenant, pool, monkeypatch, fake_embedder):
    import tasks.indexes as indexes_module

    monkeypatch.setattr(indexes_module, "BULK_THRESHOLD", 10)
    docs = [DocumentSpec(document_id=f"bulk{i}", text=f"bulk loaded chunk number {i} about queues") for i in range(40)]
    with pool.connection() as conn:
        conn.execute("DELETE FROM embeddings")  # the model must hold fewer rows than the load for the bulk path
    summary = _ingest(settings, tenant, docs)
    assert summary.bulk_index_rebuild is True and summary.chunks_inserted == 40
    with pool.connection() as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename IN ('chunks', 'embeddings')")}
    assert "chunks_tsv" in indexes and any(name.startswith("embeddings_hnsw_m") for name in indexes)
    assert search_now(SearchRequest(query="chunk number 7 queues", tenant=tenant, mode="keyword"), settings)


def test_the_typed_result_counts_each_documents_chunks_as_stored(settings, tenant, pool):
    docs = [DocumentSpec(document_id="long", text=paragraphs(12, "long")), DocumentSpec(document_id="short", text="one line"),
            DocumentSpec(document_id="blank", text="   ")]
    first = ingest_documents(IngestRequest(tenant=tenant, documents=docs, chunk_size=40, chunk_overlap=0), settings)
    docs.append(DocumentSpec(document_id="new", text="a document added later"))
    again = ingest_documents(IngestRequest(tenant=tenant, documents=docs, chunk_size=40, chunk_overlap=0), settings)
    with pool.connection() as conn:
        stored = dict(conn.execute("SELECT document_id, chunk_count FROM documents WHERE tenant_id = %s", [tenant]))
    assert [e.item for e in first.errors] == ["blank"] and "blank" not in first.document_chunks
    assert first.document_chunks == {"long": stored["long"], "short": 1} and stored["long"] > 3
    assert again.documents_unchanged == 2 and again.document_chunks == stored  # unchanged ones counted too
    assert list(again.summary()) == [
        "tenant", "model", "documents", "documents_unchanged", "chunks", "chunks_inserted", "chunks_kept",
        "chunks_deleted", "embedding_calls", "texts_embedded", "bulk_index_rebuild", "skipped", "errors", "where"]
    assert again.summary()["errors"] == [{"item": "blank", "error": again.errors[0].error}]
