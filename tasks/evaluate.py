"""Retrieval evaluation: read a BEIR dataset folder, score rankings with nDCG@k and recall@k.

The metrics follow trec_eval as pytrec_eval runs it for BEIR (`ndcg_cut.10`, `recall.100`): linear gains
(the judged relevance level), a log2(rank + 1) discount, the ideal ranking built from all of the query's
judgements, and recall over the documents judged relevant (level > 0).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blocks.errors import InputError

__all__ = [
    "BeirDataset",
    "load_beir",
    "qrels_path",
    "document_text",
    "ndcg_at_k",
    "recall_at_k",
    "evaluate_rankings",
    "PRECOMPUTED_FILE",
    "PrecomputedVectors",
    "load_precomputed",
]

QRELS_CANDIDATES = ("qrels-test.tsv", "qrels/test.tsv")


@dataclass
class BeirDataset:
    """A BEIR folder in memory: corpus {id: (title, text)}, test queries {id: text}, qrels {qid: {docid: level}}."""

    name: str
    directory: Path
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    extra: dict = field(default_factory=dict)


def document_text(title: str, text: str) -> str:
    """The BEIR convention for one passage: title + ". " + text (just the text when there is no title)."""
    title, text = (title or "").strip(), (text or "").strip()
    return f"{title}. {text}" if title else text


def qrels_path(directory: Path) -> Path:
    """The test qrels file of a BEIR folder: qrels-test.tsv, or BEIR's own qrels/test.tsv layout."""
    for name in QRELS_CANDIDATES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{directory}: no test qrels; expected {' or '.join(str(directory / n) for n in QRELS_CANDIDATES)}"
    )


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing BEIR file {path.name}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"line {number} is not JSON ({exc.msg})", item=str(path)) from None
            if not isinstance(row, dict) or "_id" not in row:
                raise InputError(f"line {number} has no \"_id\"", item=str(path))
            rows.append(row)
    return rows


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for number, row in enumerate(reader, start=1):
            if not row or not "".join(row).strip():
                continue
            if number == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue  # BEIR's header: query-id corpus-id score
            if len(row) < 3:
                raise InputError(f"line {number}: expected 3 tab-separated columns (query-id, corpus-id, score)",
                                 item=str(path))
            try:
                level = int(float(row[2]))
            except ValueError:
                raise InputError(f"line {number}: score {row[2]!r} is not a number", item=str(path)) from None
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = level
    return qrels


def load_beir(directory: Path) -> BeirDataset:
    """Read corpus.jsonl, queries.jsonl and the test qrels; keep the queries that have judgements."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory (expected a BEIR dataset folder)")
    qrels_file = qrels_path(directory)
    corpus_rows = _jsonl(directory / "corpus.jsonl")
    query_rows = _jsonl(directory / "queries.jsonl")
    qrels = _qrels(qrels_file)
    corpus: dict[str, tuple[str, str]] = {}
    for row in corpus_rows:
        doc_id = str(row["_id"])
        if doc_id in corpus:
            raise InputError(f"document id {doc_id!r} appears twice", item=str(directory / "corpus.jsonl"))
        corpus[doc_id] = (str(row.get("title") or ""), str(row.get("text") or ""))
    all_queries = {str(r["_id"]): str(r.get("text") or "") for r in query_rows}
    missing = sorted(q for q in qrels if q not in all_queries)
    if missing:
        raise InputError(f"{len(missing)} judged queries are not in queries.jsonl (first: {missing[0]!r})",
                         item=str(qrels_file))
    queries = {q: t for q, t in all_queries.items() if q in qrels and t.strip()}
    if not queries:
        raise InputError("no query has both a text and a judgement", item=str(qrels_file))
    if not corpus:
        raise InputError("the corpus is empty", item=str(directory / "corpus.jsonl"))
    return BeirDataset(name=directory.name, directory=directory, corpus=corpus, queries=queries,
                       qrels={q: qrels[q] for q in queries})


def ndcg_at_k(ranking: list[str], judged: dict[str, int], k: int = 10) -> float:
    """nDCG@k of one ranked list of ids: linear gains, 1/log2(rank + 1) discount, ideal from the judgements."""
    ideal_gains = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(ideal_gains))
    if ideal == 0:
        return 0.0
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(_unique(ranking)[:k]))
    return dcg / ideal


def recall_at_k(ranking: list[str], judged: dict[str, int], k: int = 100) -> float:
    """Share of the relevant (level > 0) ids found in the first k of the ranking."""
    relevant = {doc for doc, g in judged.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_unique(ranking)[:k])) / len(relevant)


def evaluate_rankings(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10 and recall@100 over every judged query (a query without a ranking scores 0)."""
    if not qrels:
        raise InputError("no judged queries to evaluate")
    ndcg = [ndcg_at_k(rankings.get(q, []), judged, 10) for q, judged in qrels.items()]
    recall = [recall_at_k(rankings.get(q, []), judged, 100) for q, judged in qrels.items()]
    return {"ndcg@10": sum(ndcg) / len(ndcg), "recall@100": sum(recall) / len(recall)}


def _unique(ranking: list[str]) -> list[str]:
    """The ranking with repeated ids dropped (first, best-ranked occurrence kept)."""
    return list(dict.fromkeys(ranking))


PRECOMPUTED_FILE = "minilm-int8-embeddings.npz"


@dataclass
class PrecomputedVectors:
    """Vectors made beside a dataset: {document id: vector} and {query id: vector}, and the file they came from."""

    path: Path
    documents: dict
    queries: dict


def load_precomputed(directory: Path, dimensions: int) -> PrecomputedVectors | None:
    """The dataset's minilm-int8-embeddings.npz (doc_ids, docs, query_ids, queries), or None if absent."""
    path = Path(directory) / PRECOMPUTED_FILE
    if not path.is_file():
        return None
    with np.load(path) as npz:
        missing = [k for k in ("doc_ids", "docs", "query_ids", "queries") if k not in npz.files]
        if missing:
            raise InputError(f"missing arrays {missing}; expected doc_ids, docs, query_ids, queries", item=str(path))
        doc_ids, docs = npz["doc_ids"], np.asarray(npz["docs"], dtype=np.float32)
        query_ids, queries = npz["query_ids"], np.asarray(npz["queries"], dtype=np.float32)
    for name, ids, array in (("docs", doc_ids, docs), ("queries", query_ids, queries)):
        if array.ndim != 2 or array.shape[1] != dimensions or array.shape[0] != len(ids):
            raise InputError(f"{name}: expected {len(ids)} vectors of {dimensions} dimensions, got shape "
                             f"{array.shape}", item=str(path))
    return PrecomputedVectors(
        path=path,
        documents={str(i): v for i, v in zip(doc_ids, docs)},
        queries={str(i): v for i, v in zip(query_ids, queries)},
    )
