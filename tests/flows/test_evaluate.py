"""The BEIR evaluation end to end on the real database: a tiny dataset, and SciFact when it is present."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blocks.embedders import register_embedder
from blocks.embedders.local import MODEL_ID as LOCAL_MODEL_ID
from blocks.settings import Settings
from flows.evaluate import BeirEvalRequest, evaluate_beir, run_beir_eval
from tasks.embed import EmbedStats
from tests.conftest import shared_testdata
from tests.factories import FakeEmbedder

DOCS = {
    "d1": ("Kubernetes rollback", "Roll back a failed deployment with kubectl rollout undo."),
    "d2": ("TLS certificates", "Rotate expired TLS certificates before they break the ingress."),
    "d3": ("Postgres backups", "Nightly pg_dump backups of Postgres are copied to the storage bucket."),
    "d4": ("Disk pressure", "Nodes under disk pressure evict pods; prune images to recover."),
    "d5": ("Certificate monitoring", "Alert thirty days before certificates expire."),
    "d6": ("Database restore", "Restore Postgres from the latest backup with pg_restore."),
}
QUERIES = {
    "q1": "roll back a failed kubectl deployment",
    "q2": "expired TLS certificates",
    "q3": "restore Postgres from a backup",
    "q4": "a query nobody judged",
}
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d5", 1), ("q3", "d6", 1), ("q3", "d3", 1)]


def _tiny_beir(root, layout="flat"):
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x, "metadata": {}}) + "\n" for i, (t, x) in DOCS.items())
    )
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS)
    if layout == "flat":
        (root / "qrels-test.tsv").write_text(qrels)
    else:
        (root / "qrels").mkdir()
        (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def test_tiny_dataset_scores_sanely_and_rerun_embeds_nothing(settings, tmp_path, tenant):
    root = _tiny_beir(tmp_path / "tiny")
    result = run_beir_eval(root, settings=settings, tenant=tenant)
    assert (result["dataset"], result["tenant"], result["documents"], result["queries"]) == ("tiny", tenant, 6, 3)
    assert result["embeddings"] == "computed"  # the fake model is not the one the npz was made with
    assert result["ingest"]["texts_embedded"] == 6
    assert set(result["modes"]) == {"vector", "keyword", "hybrid"}
    for mode, m in result["modes"].items():
        assert 0.7 <= m["ndcg@10"] <= 1.0, mode
        assert m["recall@100"] == 1.0, mode
        assert m["p50_ms"] > 0
    assert result["settings"]["bm25_k1"] == settings.search.bm25_k1
    assert result["settings"]["rrf_k"] == settings.search.rrf_k

    EmbedStats.reset()
    again = run_beir_eval(root, settings=settings, tenant=tenant)
    assert again["ingest"]["documents_unchanged"] == 6
    assert again["ingest"]["documents_written"] == 0
    assert EmbedStats.texts == 0  # query vectors are memoised per process, documents are unchanged
    for mode, m in result["modes"].items():
        assert (again["modes"][mode]["ndcg@10"], again["modes"][mode]["recall@100"]) == (m["ndcg@10"], m["recall@100"])


def test_default_tenant_is_named_after_the_folder(settings, tmp_path):
    result = run_beir_eval(_tiny_beir(tmp_path / "mini", layout="beir"), settings=settings)
    assert result["tenant"] == "beir-mini"
    assert result["queries"] == 3


def test_precomputed_vectors_are_used_for_the_local_model(pg_home, pool, tmp_path, tenant):
    # Stand-in for the local model: same model id and dimensions, vectors written to the npz beside the data.
    stand_in = FakeEmbedder(dims=384, model_name=LOCAL_MODEL_ID)
    register_embedder("fake-local", stand_in)
    root = _tiny_beir(tmp_path / "pre")
    texts = [f"{t}. {x}" for t, x in DOCS.values()]
    np.savez(root / "minilm-int8-embeddings.npz", doc_ids=np.array(list(DOCS)), docs=stand_in.embed(texts),
             query_ids=np.array(list(QUERIES)), queries=stand_in.embed(list(QUERIES.values())))
    settings = Settings(home=pg_home, embedder="fake-local")
    EmbedStats.reset()
    result = run_beir_eval(root, settings=settings, tenant=tenant)
    assert EmbedStats.calls == 0
    assert result["embeddings"] == "precomputed minilm-int8-embeddings.npz"
    assert result["ingest"]["vectors_from_file"] == 6
    assert result["modes"]["vector"]["recall@100"] == 1.0

    computed = run_beir_eval(root, settings=settings, use_precomputed=False, tenant=tenant + "-c")
    assert computed["embeddings"] == "computed"
    assert computed["ingest"]["texts_embedded"] == 6  # --embed: the npz is ignored


def test_missing_qrels_is_a_clear_error(settings, tmp_path):
    root = _tiny_beir(tmp_path / "broken")
    (root / "qrels-test.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="qrels-test.tsv"):
        run_beir_eval(root, settings=settings)


def test_flow_run_completes_with_artifact(prefect_harness, settings, tmp_path, tenant):
    root = _tiny_beir(tmp_path / "flowdata")
    state = evaluate_beir(BeirEvalRequest(directory=str(root), tenant=tenant), return_state=True)
    assert state.is_completed()
    assert state.result()["modes"]["hybrid"]["recall@100"] == 1.0


@pytest.mark.slow
def test_scifact_reaches_published_quality(pg_home, pool):
    scifact = shared_testdata("scifact")
    result = run_beir_eval(scifact, settings=Settings(home=pg_home, embedder="local"), use_precomputed=True)
    modes = {mode: m["ndcg@10"] for mode, m in result["modes"].items()}
    print("SciFact nDCG@10:", modes, "recall@100:", {k: v["recall@100"] for k, v in result["modes"].items()})
    assert (result["documents"], result["queries"]) == (5183, 300)
    assert result["embeddings"] == "precomputed minilm-int8-embeddings.npz"
    assert modes["hybrid"] >= 0.66
    assert modes["keyword"] >= 0.64
    assert modes["vector"] >= 0.62
