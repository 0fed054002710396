"""LoCoMo evidence recall (issue 14): the current defaults against the indexing and fusion they replaced, in one run.

Both go through `flows.evaluate_locomo.run_locomo_eval` (each conversation one context, each turn one message
appended through the product's append path, questions of categories 1-4 searched within their context), each
in its own tenant of the same database, so the figures are comparable.
"""

from __future__ import annotations

from pathlib import Path

from bench.report import _table
from tasks.locomo import CATEGORIES, KS

__all__ = ["LOCOMO", "BEFORE", "measure_locomo", "markdown", "goal_rows"]

LOCOMO = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "locomo-dev"
# What devmesh did before issue 14: messages packed into 256-token windows, RRF k=60 with equal weights.
BEFORE = {"chunk": {"conversation": "windows"},
          "search": {"fusion": "rrf", "vector_weight": 1.0, "keyword_weight": 1.0}}
GOAL = {5: 65.0, 10: 75.0, 25: 85.0}
# LoCoMo paper, Table 3 (DRAGON over dialog turns, all ten conversations, categories 1-4), from the dataset README.
PUBLISHED = {"all": (60.4, 69.6, 79.7), "single-hop": (68.0, 77.7, 87.1), "multi-hop": (35.4, 46.6, 62.5),
             "temporal": (70.4, 77.3, 83.5), "open-domain": (33.1, 40.8, 52.6)}


def measure_locomo(settings, path: Path = LOCOMO, log=print) -> dict:
    """run_locomo_eval with `settings`, then with the pre-issue-14 indexing and fusion (BEFORE)."""
    from flows.evaluate_locomo import run_locomo_eval

    log("LoCoMo: current defaults")
    now = run_locomo_eval(path, settings, tenant="bench-locomo-now")
    before_settings = settings.model_copy(update={
        "chunk": settings.chunk.model_copy(update=BEFORE["chunk"]),
        "search": settings.search.model_copy(update=BEFORE["search"]),
    })
    log("LoCoMo: before issue 14 (windows, RRF 1:1)")
    before = run_locomo_eval(path, before_settings, tenant="bench-locomo-before")
    return {"now": now, "before": before}


def _recalls(group: dict) -> list[str]:
    return [f"{group[f'recall@{k}']:.1f}" if group["questions"] else "-" for k in KS]


def markdown(r: dict, title: str) -> str:
    """The section: recall per mode (now and before), per category, hit-all / hit-any, ingest cost."""
    now, before = r["now"], r["before"]
    rows = [[f"devmesh {mode}", *(f"**{x}**" if mode == "hybrid" else x for x in _recalls(m["all"])),
             f"{m['p50_ms']:.1f}", f"{m['turns_per_hit']}"] for mode, m in now["modes"].items()]
    rows += [[f"before issue 14: {mode}", *_recalls(m["all"]), f"{m['p50_ms']:.1f}", f"{m['turns_per_hit']}"]
             for mode, m in before["modes"].items()]
    rows.append(["published: DRAGON over dialog turns (all ten conversations)", *map(str, PUBLISHED["all"]), "-", "1"])
    hybrid = now["modes"]["hybrid"]
    cats = [[name, str(hybrid[name]["questions"]), *_recalls(hybrid[name]),
             *(f"{hybrid[name][f'hit_all@{k}']:.1f} / {hybrid[name][f'hit_any@{k}']:.1f}" if hybrid[name]["questions"]
               else "-" for k in KS), " / ".join(map(str, PUBLISHED[name]))]
            for name in ("all", *CATEGORIES.values())]
    ingest, old = now["ingest"], before["ingest"]
    s = now["settings"]
    return "\n".join([
        f"## {title}", "",
        f"`devmesh eval locomo` on `{now['dataset']}` ({', '.join(now['conversations'])}: {now['turns']:,} turns, "
        f"{now['questions']} questions of categories 1-4; evidence ids naming no turn, dropped: {now['evidence_dropped']}), "
        f"model `{now['model']}`. Each conversation is one context, each session one append of its turns (one message "
        "each, the session date as created_at); questions are asked within their context; hits are expanded into "
        "the turns they cover, in rank order, and cut at k turns. The other five LoCoMo conversations are held back "
        "and were never used here. Before issue 14 = 256-token windows of whole turns and RRF (k 60, weights 1:1), "
        "measured in the same run.", "",
        _table(["system", *(f"recall@{k}" for k in KS), "p50 ms", "turns per hit"], rows), "",
        f"Hybrid by category (`{s['fusion']}` fusion, weights vector {s['vector_weight']} / BM25 "
        f"{s['keyword_weight']}; turn re-scoring: neighbour {s['turn_neighbour_weight']}, window ±{s['turn_window']} "
        f"× {s['turn_window_weight']}, named speaker +{s['speaker_boost']}):", "",
        _table(["category", "questions", *(f"recall@{k}" for k in KS), *(f"hit-all / hit-any @{k}" for k in KS),
                "published DRAGON @5/10/25"], cats), "",
        f"- Ingest through the append path: {ingest['messages']:,} messages in {ingest['appends']} appends, "
        f"{ingest['chunks']:,} chunks, {ingest['texts_embedded']:,} texts embedded, {ingest['seconds']} s, append p50 "
        f"{ingest['append_p50_ms']} ms (a whole session per append). Before: {old['chunks']:,} chunks, "
        f"{old['texts_embedded']:,} texts embedded, {old['seconds']} s, append p50 {old['append_p50_ms']} ms.",
        "- Parameters were chosen on these five conversations by leave-one-conversation-out (docs/locomo.md); "
        "the held-back half is the real test.", "",
    ])


def goal_rows(r: dict) -> list[list[str]]:
    """Rows of the benchmark's goal table."""
    hybrid = r["now"]["modes"]["hybrid"]["all"]
    got = " / ".join(f"{hybrid[f'recall@{k}']:.1f}" for k in KS)
    met = all(hybrid[f"recall@{k}"] >= GOAL[k] for k in KS)
    goal = "LoCoMo (development half) hybrid evidence recall@5/10/25 ≥ 65 / 75 / 85"
    return [[goal, got, "yes" if met else "**no**"]]
