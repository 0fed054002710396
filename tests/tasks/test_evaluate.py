"""BEIR loading and the retrieval metrics, on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from blocks.errors import InputError
from tasks.evaluate import (
    document_text, evaluate_rankings, load_beir, load_precomputed, ndcg_at_k, qrels_path, recall_at_k,
)


def test_ideal_ranking_scores_one():
    assert ndcg_at_k(["a", "b", "c"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b", "x"], {"a": 2, "b": 1}) == pytest.approx(1.0)


def test_single_relevant_at_rank_two_scores_inverse_log2_of_three():
    assert ndcg_at_k(["x", "a", "y"], {"a": 1}) == pytest.approx(1 / math.log2(3))


def test_graded_gains_are_linear_as_in_trec_eval():
    # DCG = 1/log2(2) + 2/log2(3); ideal = 2/log2(2) + 1/log2(3)
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}) == pytest.approx(expected)


def test_ideal_comes_from_all_judgements_not_only_retrieved_ones():
    # Two relevant documents, only one retrieved at rank 1: DCG 1, ideal 1 + 1/log2(3).
    assert ndcg_at_k(["a", "x"], {"a": 1, "b": 1}) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_only_the_first_k_ranks_count():
    ranking = [f"x{i}" for i in range(10)] + ["a"]
    assert ndcg_at_k(ranking, {"a": 1}, k=10) == 0.0
    assert ndcg_at_k(ranking, {"a": 1}, k=11) == pytest.approx(1 / math.log2(12))


def test_zero_and_negative_levels_are_not_relevant():
    assert ndcg_at_k(["n", "z", "a"], {"a": 1, "z": 0, "n": -1}) == pytest.approx(1 / math.log2(4))
    assert recall_at_k(["z", "n"], {"a": 1, "z": 0, "n": -1}) == 0.0
    assert ndcg_at_k(["z"], {"z": 0}) == 0.0


def test_repeated_ids_count_once():
    assert ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert recall_at_k(["a"] * 200 + ["b"], {"a": 1, "b": 1}, k=100) == pytest.approx(1.0)


def test_recall_counts_relevant_found_in_the_first_k():
    ranking = [f"x{i}" for i in range(100)]
    assert recall_at_k(["a", *ranking], {"a": 1, "b": 1}) == pytest.approx(0.5)
    assert recall_at_k([*ranking, "a"], {"a": 1}) == 0.0
    assert recall_at_k([*ranking[:99], "a"], {"a": 1}) == 1.0


def test_mean_over_judged_queries_and_missing_ranking_scores_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    scores = evaluate_rankings({"q1": ["a"]}, qrels)
    assert scores["ndcg@10"] == pytest.approx(0.5)
    assert scores["recall@100"] == pytest.approx(0.5)


def test_document_text_follows_beir_title_convention():
    assert document_text("Title", "Body text.") == "Title. Body text."
    assert document_text("", "Body text.") == "Body text."


def _write_beir(root, qrels_layout="flat"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": d, "title": f"T{d}", "text": f"text {d}", "metadata": {}}) for d in "abc") + "\n"
    )
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": f"query {q}"}) for q in ("1", "2", "3")) + "\n"
    )
    qrels = "query-id\tcorpus-id\tscore\n1\ta\t1\n2\tb\t2\n2\tc\t0\n"
    if qrels_layout == "flat":
        (root / "qrels-test.tsv").write_text(qrels)
    else:
        (root / "qrels").mkdir()
        (root / "qrels" / "test.tsv").write_text(qrels)
    return root


@pytest.mark.parametrize("layout", ["flat", "beir"])
def test_load_beir_reads_both_qrels_layouts_and_keeps_judged_queries(tmp_path, layout):
    data = load_beir(_write_beir(tmp_path / "tiny", layout))
    assert data.name == "tiny"
    assert data.corpus["a"] == ("Ta", "text a")
    assert set(data.queries) == {"1", "2"}  # query 3 has no judgement
    assert data.qrels == {"1": {"a": 1}, "2": {"b": 2, "c": 0}}


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_beir(tmp_path / "nowhere")
    root = _write_beir(tmp_path / "d")
    (root / "qrels-test.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="qrels-test.tsv"):
        qrels_path(root)
    with pytest.raises(FileNotFoundError, match="qrels-test.tsv or .*qrels/test.tsv"):
        load_beir(root)
    root = _write_beir(tmp_path / "e")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(root)
    root = _write_beir(tmp_path / "f")
    (root / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="queries.jsonl"):
        load_beir(root)


def test_malformed_lines_name_the_file_and_line(tmp_path):
    root = _write_beir(tmp_path / "bad")
    with (root / "corpus.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(InputError, match=r"corpus.jsonl: line 4 is not JSON"):
        load_beir(root)
    root = _write_beir(tmp_path / "bad2")
    (root / "qrels-test.tsv").write_text("query-id\tcorpus-id\tscore\n1\ta\tyes\n")
    with pytest.raises(InputError, match=r"qrels-test.tsv: line 2: score 'yes'"):
        load_beir(root)
    root = _write_beir(tmp_path / "bad3")
    (root / "qrels-test.tsv").write_text("query-id\tcorpus-id\tscore\n99\ta\t1\n")
    with pytest.raises(InputError, match="not in queries.jsonl"):
        load_beir(root)


def test_precomputed_vectors_are_optional_and_checked(tmp_path):
    root = _write_beir(tmp_path / "p")
    assert load_precomputed(root, 4) is None
    np.savez(root / "minilm-int8-embeddings.npz", doc_ids=np.array(["a", "b"]), docs=np.eye(2, 4, dtype=np.float32),
             query_ids=np.array(["1"]), queries=np.ones((1, 4), dtype=np.float32))
    vectors = load_precomputed(root, 4)
    assert set(vectors.documents) == {"a", "b"} and vectors.queries["1"].shape == (4,)
    with pytest.raises(InputError, match="expected 2 vectors of 8 dimensions"):
        load_precomputed(root, 8)
