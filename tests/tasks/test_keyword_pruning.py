"""Exactness of the pruned BM25 ranking (tasks.gin_keyword.gin_keyword_ranking, the filtered path) and of the postings
path (tasks.search.keyword_ranking without filters): the same top n as plain BM25 over every chunk holding a query term, on generated data always and on every SciFact test query where ../shared exists."""

from __future__ import annotations

import hashlib
import itertools
import random

import numpy as np
import pytest

import tasks.gin_keyword as gin_module
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tasks.chunk import Chunk
from tasks.evaluate import document_text, load_beir
from tasks.search import SearchRequest, keyword_ranking
from tasks.registry import ensure_model
from tasks.store import DocumentIn, write_documents
from tests.conftest import shared_testdata
from tests.ranking import same_ranking as _same_ranking


def _both(pool, request, n, settings, monkeypatch, budget):
    """(plain BM25: every term a candidate term, pruned with this first budget)."""
    monkeypatch.setattr(gin_module, "_DF_BUDGET", 10**12)
    exact = gin_module.gin_keyword_ranking(pool, request, n, settings.search)
    monkeypatch.setattr(gin_module, "_DF_BUDGET", budget)
    return exact, gin_module.gin_keyword_ranking(pool, request, n, settings.search)


# cap 1: the threshold tsquery is cut to its loosest form; first/rounds: the descending threshold starting high
# with few rounds (the last one jumps to the n-th score found), starting near 0, and one round (the old two passes).
@pytest.mark.parametrize("cap, first, rounds", [(256, 0.25, 6), (1, 0.25, 6), (256, 0.9, 2), (256, 0.02, 6),
                                                (256, 0.25, 1)])
def test_pruned_ranking_equals_plain_bm25_on_generated_text(settings, tenant, pool, monkeypatch, cap, first, rounds):
    monkeypatch.setattr(gin_module, "_MAX_QUERY_TERMS", cap)
    monkeypatch.setattr(gin_module, "_FIRST_THRESHOLD", first)
    monkeypatch.setattr(gin_module, "_MAX_ROUNDS", rounds)
    rng = random.Random(11)
    vocab = [f"w{i}" for i in range(200)]
    weights = [1 / (i + 1) for i in range(200)]  # Zipf: a few very common words, many rare ones
    docs = [DocumentSpec(document_id=f"g{i}", text=" ".join(rng.choices(vocab, weights, k=rng.randint(3, 60))))
            for i in range(500)]
    docs += [DocumentSpec(document_id=f"dup{i}", text="w1 w2 w150") for i in range(30)]  # exact ties
    ingest_documents(IngestRequest(tenant=tenant, documents=docs), settings)
    pruned_somewhere = 0
    for q in range(30):
        terms = rng.sample(vocab[:20], rng.randint(1, 6)) + rng.sample(vocab[20:], rng.randint(0, 3))
        if q % 5 == 0:
            terms = ["w1", "w2", "w150"]
        request = SearchRequest(query=" ".join(terms), mode="keyword", tenant=tenant, limit=10)
        for n, budget in ((10, 1), (50, 1), (10, 60)):
            exact, pruned = _both(pool, request, n, settings, monkeypatch, budget)
            assert _same_ranking(pruned, exact), (terms, n, budget)
            pruned_somewhere += len(exact) == n
    assert pruned_somewhere > 20  # most cases had a full top n, so the threshold pass ran


def test_threshold_query_matches_exactly_the_subsets_that_reach_the_threshold():
    rng = random.Random(3)
    for _ in range(200):
        m = rng.randint(1, 7)
        bounds = sorted((rng.uniform(0.2, 5) for _ in range(m)), reverse=True)
        literals = [f"'t{i}'" for i in range(m)]
        need = rng.uniform(-1, sum(bounds) * 1.2)
        formula = gin_module._threshold_query(literals, bounds, need)
        for held in itertools.product([False, True], repeat=m):
            reaches = any(held) and sum(b for b, h in zip(bounds, held) if h) >= need
            if formula is None:
                assert not reaches
                continue
            env = {f"t{i}": h for i, h in enumerate(held)}
            expr = formula.replace("&", " and ").replace("|", " or ").replace("!", " not ").replace("'", "")
            assert eval(expr, {}, env) == reaches, (bounds, need, held, formula)  # noqa: S307 - our own formula


def test_threshold_query_cut_short_is_a_superset(monkeypatch):
    monkeypatch.setattr(gin_module, "_MAX_QUERY_TERMS", 3)
    rng = random.Random(5)
    for _ in range(100):
        m = rng.randint(4, 9)
        bounds = sorted((rng.uniform(0.2, 5) for _ in range(m)), reverse=True)
        literals = [f"'t{i}'" for i in range(m)]
        need = rng.uniform(0.1, sum(bounds))
        formula = gin_module._threshold_query(literals, bounds, need)
        expr = formula.replace("&", " and ").replace("|", " or ").replace("'", "")
        for held in itertools.product([False, True], repeat=m):
            if sum(b for b, h in zip(bounds, held) if h) >= need:
                assert eval(expr, {}, {f"t{i}": h for i, h in enumerate(held)})  # noqa: S307


def test_pruned_ranking_equals_plain_bm25_on_every_scifact_query(pool, tenant, monkeypatch, settings):
    directory = shared_testdata("scifact")
    data = load_beir(directory)
    model_id = ensure_model(pool, "scifact-keyword-test", 4)
    docs, vectors = [], {}
    for doc_id, (title, text) in data.corpus.items():
        passage = document_text(title, text)
        if not passage:
            continue
        h = hashlib.sha256(passage.encode("utf-8")).hexdigest()
        vectors[h] = np.ones(4, dtype=np.float32)  # keyword search reads no vector
        docs.append(DocumentIn(document_id=doc_id, content_hash=h, chunks=[
            Chunk(seq=0, text=passage, token_count=len(passage.split()), content_hash=h)]))
    for i in range(0, len(docs), 500):
        batch = docs[i : i + 500]
        write_documents(pool, tenant, model_id, 4, batch, {d.content_hash: vectors[d.content_hash] for d in batch})
    queries = [text for qid, text in data.queries.items() if qid in data.qrels]
    assert len(queries) == 300
    for text in queries:
        request = SearchRequest(query=text, mode="keyword", tenant=tenant, limit=10)
        monkeypatch.setattr(gin_module, "_DF_BUDGET", 10**12)  # plain BM25: every term a candidate term
        exact = gin_module.gin_keyword_ranking(pool, request, 50, settings.search)
        for n, budget in ((10, 2000), (10, 0), (50, 0)):
            monkeypatch.setattr(gin_module, "_DF_BUDGET", budget)
            pruned = gin_module.gin_keyword_ranking(pool, request, n, settings.search)
            assert _same_ranking(pruned, exact[:n]), (text, n, budget)
        for n in (10, 50):  # the postings path (no filters): every chunk holding a term, scored in numpy
            assert _same_ranking(keyword_ranking(pool, request, n, settings.search), exact[:n]), (text, n, "postings")
