"""The hostile-input corpus (tests/reliability/hostile.py) outside pytest: every case against a fresh embedded
PostgreSQL, counted per surface × category (tried / refused / handled / stored-bad / 5xx / mismatched), plus
100 MB bodies streamed at a real uvicorn gateway (status, bytes sent before the refusal, peak RSS growth).

    python -m bench.hostile            # full size: 100 MB bodies; prints the JSON

The embedder is the deterministic fake of the tests (the subject is input handling, not embedding).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(workdir: Path, *, oversize_bytes: int = 100 * 1024 * 1024, details: bool = False) -> dict:
    """Run the corpus in `workdir` (its own embedded PostgreSQL under workdir/home, stopped at the end)."""
    from blocks.postgres import close_pools
    from blocks.settings import Settings
    from tests.reliability.hostile import corpus, hostile_env, markdown, measure_oversize, run_corpus, tally

    workdir = Path(workdir)
    home, scratch = workdir / "home", workdir / "scratch"
    home.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in os.environ.items() if k.startswith("DEVMESH_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(DEVMESH_HOME=str(home), DEVMESH_EMBEDDER="fake")
    settings = Settings(home=home, embedder="fake")
    started = time.perf_counter()
    try:
        cases = corpus()
        with hostile_env(settings, scratch) as env:
            results = run_corpus(env, cases)
            corpus_s = time.perf_counter() - started
            oversize = measure_oversize(settings, env.key, total=oversize_bytes)
    finally:
        for key in [k for k in os.environ if k.startswith("DEVMESH_")]:
            del os.environ[key]
        os.environ.update(saved)
        close_pools()  # the embedded server itself stops when the last process using it exits
    counts = tally(results)
    out = {"parameters": {"cases": len(cases), "oversize_bytes": oversize_bytes, "embedder": "fake"},
           "totals": counts["totals"], "by_surface": counts["by_surface"], "rows": counts["rows"],
           "markdown": markdown(counts), "oversize": oversize, "corpus_seconds": round(corpus_s, 1),
           "failures": [r for r in results if not r["ok"]]}
    if details:
        out["results"] = results
    return out


if __name__ == "__main__":
    data = ROOT / "bench" / ".data" / "hostile"
    shutil.rmtree(data, ignore_errors=True)
    result = run(data, details="--details" in sys.argv)
    print(json.dumps(result, indent=2, default=str))
