"""How the hybrid fusion and turn re-scoring defaults were chosen on the LoCoMo development half (issue 14).

    python -m bench.locomo_tune [--home DIR]     # ~10 min on 2 cores; prints the table of docs/locomo.md

Loads the five development conversations through the product's append path (as `devmesh eval locomo` does),
reads each question's vector and BM25 candidates once from the database, then scores a grid of fusion settings
offline with the product's own functions (tasks.fusion.convex and rescore_turns, the neighbour turns joining
as tasks.search._fuse adds them). Parameters are chosen leave-one-conversation-out (each conversation scored
with the setting best on the other four) and, separately, on three conversations and checked on the other two.
The held-back five conversations are never read.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from bench.locomo import LOCOMO
from tasks.fusion import NEIGHBOUR_SEEDS, Candidate, convex, rescore_turns
from tasks.locomo import KS, load_locomo, score_question, summarise

GRID = {"vector_weight": (0.2, 0.3, 0.4), "turn_neighbour_weight": (0.2, 0.4, 0.6), "turn_window": (2, 3, 4),
        "turn_window_weight": (1.0, 2.0, 3.0), "speaker_boost": (0.2, 0.4, 0.6)}


def candidates(home: Path, tenant: str = "locomo-tune", n: int = 50) -> list[dict]:
    """Per question: its conversation, category, evidence, and the top-n vector and BM25 turns with scores."""
    from blocks.embedders import load_embedder
    from blocks.postgres import PgVectorStore
    from blocks.settings import Settings
    from flows.evaluate_locomo import load_conversation
    from tasks.contexts import context_scope
    from tasks.embed import embed_query
    from tasks.migrate import ensure_schema
    from tasks.search import keyword_ranking, vector_ranking
    from tasks.registry import ensure_model

    settings = Settings(home=home, database_url=None, embedder="local")
    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    embedder = load_embedder("local")
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)
    out = []
    for conv in load_locomo(LOCOMO):
        cid, _ = load_conversation(pool, tenant, embedder, settings, conv, model_id)
        with pool.connection() as conn:
            turn_of = {r[0]: r[1] for r in conn.execute(
                "SELECT id, (metadata->'message_range'->>0)::int FROM chunks WHERE tenant_id = %s AND document_id = %s",
                [tenant, f"context:{cid}"])}
        for q in conv.questions:
            request = context_scope(tenant, cid, q.question, limit=n)
            vec = vector_ranking(pool, (model_id, embedder.dimensions), embed_query(embedder, q.question), request, n,
                                 settings.search)
            kw = keyword_ranking(pool, request, n, settings.search)
            out.append({"conv": conv.sample_id, "category": q.category, "evidence": q.evidence, "query": q.question,
                        "speakers": [t.speaker for t in conv.turns],
                        "vector": {turn_of[c]: s for c, s in vec}, "keyword": {turn_of[c]: s for c, s in kw}})
    return out


def rank(row: dict, p: dict) -> list[tuple[int, int]]:
    """The question's hybrid ranking of turns under setting p, as search would return it."""
    fused = convex(row["vector"], row["keyword"], p["vector_weight"], 1 - p["vector_weight"])
    known, seeds = {t for t, _ in fused}, [t for t, _ in fused[:NEIGHBOUR_SEEDS]]
    last = len(row["speakers"]) - 1
    fused += [(t, 0.0) for t in sorted({t + d for t in seeds for d in range(-p["turn_window"], p["turn_window"] + 1)
                                        if 0 <= t + d <= last} - known)]
    cands = {t: Candidate(t, "c", t, row["speakers"][t]) for t, _ in fused}
    ranked = rescore_turns(fused, cands, row["query"], neighbour_weight=p["turn_neighbour_weight"],
                           window=p["turn_window"], window_weight=p["turn_window_weight"],
                           speaker_boost=p["speaker_boost"])
    return [(t, t) for t, _ in ranked]


def _objective(summary: dict) -> float:
    return sum(summary["all"][f"recall@{k}"] for k in KS)


def _line(name: str, s: dict) -> str:
    def recalls(group: str, digits: int, sep: str) -> str:
        return sep.join(format(s[group]["recall@" + str(k)], f".{digits}f") for k in KS)

    cats = " ".join(f"{c} {recalls(c, 0, '/')}" for c in ("single-hop", "multi-hop", "temporal", "open-domain"))
    return f"{name:34s} {recalls('all', 1, ' / ')}   {cats}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.locomo_tune", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("bench/.data/locomo-tune"))
    args = parser.parse_args(argv)
    rows = candidates(args.home)
    convs = sorted({r["conv"] for r in rows})
    combos = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    scored = [{c: [(r["category"], score_question(rank(r, p), r["evidence"])) for r in rows if r["conv"] == c]
               for c in convs} for p in combos]

    def summary(i: int, on: list[str]) -> dict:
        return summarise([x for c in on for x in scored[i][c]])

    best = max(range(len(combos)), key=lambda i: _objective(summary(i, convs)))
    print(_line("chosen on all five (in-sample)", summary(best, convs)), combos[best])
    held = []
    for c in convs:
        i = max(range(len(combos)), key=lambda j: _objective(summary(j, [x for x in convs if x != c])))
        print(f"  fold {c}: {combos[i]}")
        held += scored[i][c]
    print(_line("leave one conversation out", summarise(held)))
    for train in (convs[:3], convs[2:]):
        test = [c for c in convs if c not in train]
        i = max(range(len(combos)), key=lambda j: _objective(summary(j, train)))
        print(_line(f"chosen on {'+'.join(train)}", summary(i, train)), combos[i])
        print(_line(f"  checked on {'+'.join(test)}", summary(i, test)))


if __name__ == "__main__":
    main()
