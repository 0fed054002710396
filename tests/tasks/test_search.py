"""Vector, keyword and hybrid search on the real database."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pydantic import ValidationError

from blocks.errors import ConfigError, InputError
from blocks.settings import SearchSettings
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from flows.search import search_now
from tasks.search import SearchRequest, rrf, run_search, vector_ranking
from tasks.registry import resolve_model

CORPUS = {
    "rollback": "Roll back a failed Kubernetes deployment with kubectl rollout undo.",
    "scale": "Scale the web deployment to five replicas when traffic grows.",
    "s3": "Upload build artifacts to the S3 bucket with the AWS CLI.",
    "issue": "Open a GitHub issue when the nightly build fails.",
    "pg": "PostgreSQL with pgvector stores embeddings and answers nearest neighbour queries.",
}


@pytest.fixture
def corpus(settings, tenant):
    docs = [DocumentSpec(document_id=k, text=v, metadata={"topic": k}) for k, v in CORPUS.items()]
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    return tenant


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_each_mode_finds_the_matching_document_first(settings, corpus, mode):
    hits = search_now(SearchRequest(query="kubectl rollout undo deployment", mode=mode, tenant=corpus), settings)
    assert hits[0].document_id == "rollback"
    assert hits[0].text == CORPUS["rollback"]
    assert hits[0].relevance in {"high", "medium", "low"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_hit_carries_both_scores(settings, corpus):
    hit = search_now(SearchRequest(query="S3 bucket artifacts", tenant=corpus), settings)[0]
    assert hit.document_id == "s3"
    assert hit.similarity is not None and 0 < hit.similarity <= 1.0001
    assert hit.keyword_score is not None and hit.keyword_score > 0


def test_hybrid_ranks_by_keyword_while_the_query_embeds(settings, corpus, pool, fake_embedder, monkeypatch):
    """search_now embeds a hybrid query on a worker thread while the keyword ranking runs: here the embedder waits
    for the keyword ranking to start, so a search that embedded first would wait out the 10 s and fail."""
    import tasks.search as search_module
    from tests.factories import FakeEmbedder

    started = threading.Event()
    ranking, embed = search_module.keyword_ranking, FakeEmbedder.embed
    overlapped = []

    def keyword_ranking(*args, **kwargs):
        started.set()
        return ranking(*args, **kwargs)

    def embed_after_keyword(self, texts):
        overlapped.append(started.wait(10))
        return embed(self, texts)

    monkeypatch.setattr(search_module, "keyword_ranking", keyword_ranking)
    monkeypatch.setattr(FakeEmbedder, "embed", embed_after_keyword)
    request = SearchRequest(query="kubectl rollout undo, ranked while embedding", tenant=corpus)
    hits = search_now(request, settings)
    assert overlapped == [True]
    assert hits[0].document_id == "rollback" and hits[0].similarity is not None
    vector = embed(fake_embedder, [request.query])[0]
    direct = run_search(pool, request, settings=settings.search, model=resolve_model(pool, fake_embedder.model_id),
                        vector=vector)
    assert [(h.chunk_id, round(h.score, 9)) for h in hits] == [(h.chunk_id, round(h.score, 9)) for h in direct]


def test_a_failing_query_embedding_fails_the_hybrid_search_with_its_own_error(settings, corpus, monkeypatch):
    from tests.factories import FakeEmbedder

    def broken(self, texts):
        raise InputError("the embedder refused this query", item="query")

    monkeypatch.setattr(FakeEmbedder, "embed", broken)
    with pytest.raises(InputError, match="refused this query"):
        search_now(SearchRequest(query="a query nobody embedded before", tenant=corpus), settings)


def test_keyword_search_needs_a_shared_term(settings, corpus):
    assert search_now(SearchRequest(query="zebra giraffe", mode="keyword", tenant=corpus), settings) == []
    # stop words only: nothing to match, no error
    assert search_now(SearchRequest(query="the and of", mode="keyword", tenant=corpus), settings) == []


def test_bm25_prefers_rare_terms(settings, tenant):
    docs = [DocumentSpec(document_id=f"common{i}", text=f"deployment deployment note {i}") for i in range(8)]
    docs.append(DocumentSpec(document_id="rare", text="deployment of the canary"))
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    hits = search_now(SearchRequest(query="canary deployment", mode="keyword", tenant=tenant), settings)
    assert hits[0].document_id == "rare"


def test_filters_limit_by_document_and_metadata(settings, corpus):
    by_doc = search_now(SearchRequest(query="deployment", tenant=corpus, document_ids=["scale"]), settings)
    assert {h.document_id for h in by_doc} == {"scale"}
    by_meta = search_now(SearchRequest(query="deployment", tenant=corpus, metadata={"topic": "issue"}), settings)
    assert {h.document_id for h in by_meta} == {"issue"}


def test_min_similarity_drops_weak_hits(settings, corpus):
    every = search_now(SearchRequest(query="kubectl rollout undo", mode="vector", tenant=corpus), settings)
    strict = search_now(SearchRequest(query="kubectl rollout undo", mode="vector", tenant=corpus,
                                      min_similarity=every[0].similarity - 1e-6), settings)
    assert len(every) == len(CORPUS)
    assert [h.document_id for h in strict] == ["rollback"]


def test_tenants_do_not_see_each_other(settings, corpus):
    assert search_now(SearchRequest(query="kubectl rollout", tenant="someone-else"), settings) == []


def test_filtered_vector_search_still_returns_limit_rows(settings, tenant, pool, fake_embedder):
    """Iterative index scans: a selective filter must not starve the top-k."""
    docs = [DocumentSpec(document_id=f"d{i}", text=f"service {i} log line alpha beta {i % 7}",
                         metadata={"shard": "rare" if i % 50 == 0 else "common"}) for i in range(1000)]
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    model = resolve_model(pool, fake_embedder.model_id)
    q = fake_embedder.embed(["service log line"])[0]
    request = SearchRequest(query="x", mode="vector", tenant=tenant, metadata={"shard": "rare"}, limit=10)
    hits = vector_ranking(pool, model, q, request, 10, SearchSettings(ef_search=10))
    assert len(hits) == 10  # 20 rare rows of 1000: a plain HNSW scan with ef_search 10 would return ~0


def test_unknown_model_is_named(pool):
    with pytest.raises(ConfigError, match="unknown embedding model 'nope'"):
        resolve_model(pool, "nope")


def test_wrong_dimension_query_vector_is_refused(settings, corpus, pool, fake_embedder):
    model = resolve_model(pool, fake_embedder.model_id)
    with pytest.raises(InputError, match="expected a query vector of 64 dimensions, got shape \\(3,\\)"):
        run_search(pool, SearchRequest(query="q", mode="vector", tenant=corpus), settings=SearchSettings(),
                   model=model, vector=np.ones(3))


def test_unknown_filter_key_is_refused():
    with pytest.raises(ValidationError, match="colour"):
        SearchRequest(query="q", colour="red")
    with pytest.raises(ValidationError, match="NUL"):
        SearchRequest(query="a\x00b")


def test_rrf_fuses_ranks_with_weights():
    fused = rrf([[1, 2, 3], [3, 1]], [1.0, 1.0], k=60)
    assert [d for d, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    keyword_heavy = rrf([[1, 2, 3], [3, 1]], [0.1, 5.0], k=60)
    assert keyword_heavy[0][0] == 3


def test_maxscore_pruning_returns_the_exact_bm25_top_n(settings, tenant, pool, monkeypatch):
    import random

    import tasks.gin_keyword as gin_module

    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(300)]  # Zipf: a few very common words, many rare ones
    docs = [DocumentSpec(document_id=f"z{i}", text=" ".join(rng.choices(vocab, weights, k=rng.randint(5, 40))))
            for i in range(400)]
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    for q in range(25):
        request = SearchRequest(query=" ".join(rng.sample(vocab[:60], 3) + rng.sample(vocab[60:], 2)),
                                mode="keyword", tenant=tenant, limit=10)
        monkeypatch.setattr(gin_module, "_DF_BUDGET", 10**9)  # every term a candidate term: plain BM25
        exact = gin_module.gin_keyword_ranking(pool, request, 10, settings.search)
        monkeypatch.setattr(gin_module, "_DF_BUDGET", 1)  # prune as hard as possible
        pruned = gin_module.gin_keyword_ranking(pool, request, 10, settings.search)
        assert [round(s, 9) for _, s in pruned] == [round(s, 9) for _, s in exact]
        assert [c for c, _ in pruned] == [c for c, _ in exact]
