"""The BEIR evaluation flow: load a dataset into its own tenant, search every test query in each mode, score."""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from blocks.embedders import load_embedder
from blocks.embedders.local import MODEL_ID as LOCAL_MODEL_ID
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.chunk import Chunk
from tasks.embed import embed_batch, embed_query
from tasks.evaluate import BeirDataset, PrecomputedVectors, document_text, evaluate_rankings, load_beir, load_precomputed
from tasks.runtime import Runtime, call
from tasks.search import SearchRequest, run_search
from tasks.store import (
    DocumentIn, StoreResult, document_hash, hashes_needing_embedding, unchanged_documents, write_batch,
)
from tasks.indexes import bulk_load
from tasks.registry import ensure_model

__all__ = ["BeirEvalRequest", "evaluate_beir", "run_beir_eval", "MODES"]

MODES = ("vector", "keyword", "hybrid")
DOCS_PER_WRITE = 2000  # one chunk per document, so also chunks per write transaction
LIMIT = 100  # deep enough for recall@100
# Bump when the passage text or its chunking changes, so stored passages are rewritten.
PASSAGE_VERSION = 1


class BeirEvalRequest(BaseModel):
    """Which BEIR folder to evaluate and where to load it."""

    model_config = ConfigDict(extra="forbid")
    directory: str = Field(..., description="BEIR folder: corpus.jsonl, queries.jsonl, qrels-test.tsv.")
    use_precomputed: bool = Field(True, description="Use minilm-int8-embeddings.npz beside the data if it fits.")
    tenant: str | None = Field(None, description="Tenant to load the corpus into (default: beir-<folder name>).")


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _passages(dataset: BeirDataset, source: str) -> tuple[list[DocumentIn], dict[str, str]]:
    """One DocumentIn per corpus document (its chunk is made later, only if it changed) and the passage texts."""
    docs, texts = [], {}
    for doc_id, (title, text) in dataset.corpus.items():
        passage = document_text(title, text)
        if not passage:
            continue
        texts[doc_id] = passage
        docs.append(DocumentIn(document_id=doc_id, content_hash=document_hash(passage, "beir", PASSAGE_VERSION),
                               chunks=[], kind="text", source=source))
    return docs, texts


def _one_chunk(text: str, embedder) -> Chunk:
    """The single chunk of a passage (BEIR scores whole documents)."""
    return Chunk(seq=0, text=text, token_count=embedder.count_tokens(text),
                 content_hash=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _load_corpus(store: PgVectorStore, tenant: str, model_id: int, embedder, docs: list[DocumentIn],
                 texts: dict[str, str], precomputed: PrecomputedVectors | None) -> dict:
    """Write the documents that changed, embedding only chunk texts no stored chunk has a vector for."""
    pool = store.pool()
    todo: list[DocumentIn] = []
    for batch in _batches(docs, DOCS_PER_WRITE):
        unchanged = unchanged_documents(pool, tenant, model_id, batch)
        todo += [d for d in batch if d.document_id not in unchanged]
    for doc in todo:
        doc.chunks = [_one_chunk(texts[doc.document_id], embedder)]
    needed: set[str] = set()
    for batch in _batches(todo, DOCS_PER_WRITE):
        needed |= hashes_needing_embedding(pool, tenant, model_id, [d.chunks[0].content_hash for d in batch])
    total, from_file, embedded = StoreResult(), 0, 0
    with bulk_load(pool, model_id, embedder.dimensions, len(needed), tenant=tenant) as bulk:
        for i, batch in enumerate(_batches(todo, DOCS_PER_WRITE)):
            vectors, missing = {}, {}
            for doc in batch:
                chunk = doc.chunks[0]
                if chunk.content_hash not in needed or chunk.content_hash in vectors:
                    continue
                vector = precomputed.documents.get(doc.document_id) if precomputed else None
                if vector is not None:
                    vectors[chunk.content_hash] = vector
                    from_file += 1
                else:
                    missing[chunk.content_hash] = chunk.text
            if missing:
                hashes = list(missing)
                vectors.update(zip(hashes, call(embed_batch, embedder, list(missing.values()), label=f"beir-{i}")))
                embedded += len(hashes)
            needed -= set(vectors)
            total.add(call(write_batch, store, tenant, model_id, embedder.dimensions, batch, vectors, label=f"beir-{i}"))
    return {"documents_written": len(todo), "documents_unchanged": len(docs) - len(todo),
            "chunks_inserted": total.chunks_inserted, "vectors_from_file": from_file, "texts_embedded": embedded,
            "bulk_index_rebuild": bulk}


def _query_vector(embedder, precomputed: PrecomputedVectors | None, query_id: str, text: str,
                  embed_ms: list[float]):
    vector = precomputed.queries.get(query_id) if precomputed else None
    if vector is None:
        start = time.perf_counter()
        vector = embed_query(embedder, text)
        embed_ms.append((time.perf_counter() - start) * 1000)
    return vector


def run_beir_eval(directory: Path, settings: Settings, use_precomputed: bool = True, tenant: str | None = None) -> dict:
    """Load a BEIR dataset (once; re-runs skip unchanged documents), then score vector, keyword and hybrid."""
    dataset = load_beir(Path(directory))
    tenant = tenant or f"beir-{dataset.name}"
    runtime = Runtime(settings)
    store, pool = runtime.store, runtime.pool()
    embedder = load_embedder(settings.embedder)
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)
    precomputed = None
    if use_precomputed and embedder.model_id == LOCAL_MODEL_ID:
        precomputed = load_precomputed(dataset.directory, embedder.dimensions)

    started = time.perf_counter()
    docs, texts = _passages(dataset, str(dataset.directory / "corpus.jsonl"))
    loaded = _load_corpus(store, tenant, model_id, embedder, docs, texts, precomputed)
    loaded["seconds"] = round(time.perf_counter() - started, 2)

    model = (model_id, embedder.dimensions)
    rankings: dict[str, dict[str, list[str]]] = {mode: {} for mode in MODES}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    embed_ms: list[float] = []
    for query_id, text in dataset.queries.items():
        vector = _query_vector(embedder, precomputed, query_id, text, embed_ms)
        for mode in MODES:
            request = SearchRequest(query=text, mode=mode, limit=LIMIT, tenant=tenant)
            start = time.perf_counter()
            hits = run_search(pool, request, settings=settings.search, model=model, vector=vector)
            latencies[mode].append((time.perf_counter() - start) * 1000)
            rankings[mode][query_id] = list(dict.fromkeys(h.document_id for h in hits))

    modes = {}
    for mode in MODES:
        scores = evaluate_rankings(rankings[mode], dataset.qrels)
        modes[mode] = {"ndcg@10": round(scores["ndcg@10"], 4), "recall@100": round(scores["recall@100"], 4),
                       "p50_ms": round(statistics.median(latencies[mode]), 2)}
    search = settings.search
    used_file = precomputed is not None and loaded["texts_embedded"] == 0 and not embed_ms
    return {
        "dataset": dataset.name,
        "tenant": tenant,
        "documents": len(docs),
        "queries": len(dataset.queries),
        "embeddings": f"precomputed {precomputed.path.name}" if used_file else "computed",
        "model": embedder.model_id,
        "settings": {"fusion": search.fusion, "rrf_k": search.rrf_k, "vector_weight": search.vector_weight,
                     "keyword_weight": search.keyword_weight, "bm25_k1": search.bm25_k1, "bm25_b": search.bm25_b,
                     "ef_search": search.ef_search, "candidates": search.candidates, "limit": LIMIT},
        "ingest": loaded,
        "query_embed_p50_ms": round(statistics.median(embed_ms), 2) if embed_ms else None,
        "modes": modes,
    }


@flow(name="evaluate-beir", task_runner=ThreadPoolTaskRunner(max_workers=2))
def evaluate_beir(request: BeirEvalRequest) -> dict:
    """nDCG@10, recall@100 and median latency of vector, keyword and hybrid search on a BEIR dataset."""
    result = run_beir_eval(Path(request.directory), Settings(), request.use_precomputed, request.tenant)
    rows = "\n".join(f"| {mode} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['p50_ms']:.1f} |"
                     for mode, m in result["modes"].items())
    create_markdown_artifact(
        key="beir-evaluation",
        markdown=(f"## BEIR {result['dataset']}: {result['queries']} queries, {result['documents']} documents\n\n"
                  f"Model `{result['model']}`, embeddings {result['embeddings']}.\n\n"
                  f"| mode | nDCG@10 | recall@100 | p50 ms |\n|---|---|---|---|\n{rows}\n"),
        description="Retrieval quality on a BEIR dataset.",
    )
    get_run_logger().info("BEIR %s: %s", result["dataset"],
                          ", ".join(f"{m} nDCG@10 {v['ndcg@10']:.4f}" for m, v in result["modes"].items()))
    return result
