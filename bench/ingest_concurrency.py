"""Concurrent ingest into one tenant: 1, 2 and 4 writer processes, aggregate rows/s and the speed-up over one.

Each process stores its own new documents (SciFact texts and vectors with noise, as bench.store's online rows;
synthetic where ../shared/testdata is absent) through `tasks.store.write_documents` into the same tenant, with the
HNSW and GIN indexes live, in writes of WRITE_CHUNKS chunks. The processes make their rows first, then start
together; the time is from the start to the last one done. Before migration 018 every write of a tenant upserted
the same term_stats/tenant_stats rows and held their locks to commit, so a second writer waited for the first.
One unmeasured run of `rows` chunks comes first, so that each count writes into a graph that is not empty.

Run alone: `.venv/bin/python -m bench.ingest_concurrency [--rows N]` (its own embedded server under
bench/.data/concurrency; prints one JSON object on its last line).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

__all__ = ["measure_concurrent_ingest"]

TENANT = "bench-concurrent"
WRITE_CHUNKS = 200  # chunks per write_documents call (10 documents of bench.store's 20 chunks)


def _writer(url: str, model_id: int, start: int, rows: int, ready, go, done) -> None:
    from pydantic import SecretStr

    from blocks.postgres import PgVectorStore
    from bench.store import DIMENSIONS, devmesh_documents, extra_rows
    from tasks.store import write_documents

    pool = PgVectorStore(url=SecretStr(url), pool_max_size=2).pool()
    vectors, texts, metadata = extra_rows(rows, start, seed=start + 7)
    docs, by_hash = devmesh_documents(vectors, texts, metadata, prefix=f"conc-{start}")
    per_write = max(1, WRITE_CHUNKS // max(1, len(docs[0].chunks)))
    ready.release()
    go.wait()
    for i in range(0, len(docs), per_write):
        batch = docs[i : i + per_write]
        write_documents(pool, TENANT, model_id, DIMENSIONS, batch,
                        {c.content_hash: by_hash[c.content_hash] for d in batch for c in d.chunks})
    done.put(os.getpid())


def _run(url: str, model_id: int, processes: int, rows: int, offset: int) -> float:
    ctx = mp.get_context("spawn")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, model_id, offset + i * rows, rows, ready, go, done))
             for i in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=600):
            raise RuntimeError("a writer process did not get ready within 10 min")
    start = time.perf_counter()
    go.set()
    for _ in procs:
        done.get(timeout=1800)
    seconds = time.perf_counter() - start
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"writer process exited with {p.exitcode}")
    return seconds


def measure_concurrent_ingest(settings, rows: int = 4_000, counts: tuple[int, ...] = (1, 2, 4), log=print) -> dict:
    """Each count of processes writes `rows` chunks in all (rows / count each) into one tenant."""
    from blocks.embedders.local import MODEL_ID
    from blocks.postgres import PgVectorStore
    from bench.store import DIMENSIONS
    from tasks.migrate import ensure_schema
    from tasks.registry import ensure_model

    store = PgVectorStore.from_settings(settings)
    pool = store.pool()
    ensure_schema(pool)
    model_id = ensure_model(pool, MODEL_ID, DIMENSIONS)
    url = store.resolve_url()
    out: dict = {"rows": rows, "write_chunks": WRITE_CHUNKS, "runs": {}, "warmup_rows": rows}
    # Unmeasured first: the HNSW graph (shared by every tenant of the model) and the tenant's statistics are then
    # not empty for the first count only; an empty graph makes inserts cheaper, which flattered one writer.
    log(f"concurrent ingest: warm-up, one process writes {rows:,} chunks (not measured)")
    _run(url, model_id, 1, rows, 0)
    offset = rows
    for n in counts:
        log(f"concurrent ingest: {n} process(es), {rows // n:,} chunks each, one tenant")
        seconds = _run(url, model_id, n, rows // n, offset)
        offset += rows
        out["runs"][str(n)] = {"processes": n, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}
    base = out["runs"][str(counts[0])]["rows_per_s"]
    for run in out["runs"].values():
        run["speedup"] = round(run["rows_per_s"] / base, 2)
    with pool.connection() as conn:
        out["chunks_stored"] = conn.execute("SELECT count(*) FROM chunks WHERE tenant_id = %s", [TENANT]).fetchone()[0]
        out["stats_exact"] = conn.execute(
            "SELECT (SELECT sum(n_chunks) FROM tenant_stats WHERE tenant_id = %(t)s)"
            " = (SELECT count(*) FROM chunks WHERE tenant_id = %(t)s)", {"t": TENANT}).fetchone()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_concurrency", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000, help="chunks each run writes in all")
    parser.add_argument("--home", type=Path, default=Path(__file__).resolve().parent / ".data" / "concurrency",
                        help="where its embedded server keeps its data")
    args = parser.parse_args(argv)
    from blocks.settings import Settings

    home = args.home
    load = os.getloadavg()
    result = measure_concurrent_ingest(Settings(home=home, database_url=None, embedder="local"), rows=args.rows)
    result["load_avg"] = [round(load[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
