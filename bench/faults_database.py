"""Database faults, measured: kill -9 of the embedded PostgreSQL in the middle of a 50,000-chunk ingest, and its
data volume (a tmpfs) filling up mid-ingest.

    python -m bench.faults_database            # both, full size, into bench/.data/faults_database/
    python -m bench.faults_database --no-disk  # the kill only

Kill: this process starts the server and keeps a pool on it (a long-lived devmesh process); an ingest worker
process (tests/reliability/pgfaults.py, the deterministic fake embedder, so the run is bound by the store) joins it
and loads `docs` x `chunks_per_doc` distinct chunks; when `kill_fraction` of them are committed (counted through
a fresh connection) the postmaster gets SIGKILL. Measured: chunks committed before the kill, how long the worker
took to fail and its error, the restart (crash recovery) through this process's pool, the re-run (a new worker),
chunks it re-embedded against the chunks missing, duplicates and half-written documents after (0 expected).

Disk full: the data directory lives on a tmpfs mounted here (needs root), shrunk after start-up to leave `free_mb`;
the ingest fails with a StoreUnavailable naming the full disk; then the tmpfs grows and the same ingest re-runs.
Measured: tmpfs size, chunks stored before it filled, the error text, time from growing it to the server
answering, the re-run. Every server and mount is stopped/unmounted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.reliability import pgfaults as pf  # noqa: E402

__all__ = ["run", "run_kill", "run_disk_full"]


def _wait_answering(home: Path, timeout: float) -> float:
    started = time.perf_counter()
    pf.wait_answering(home, timeout)
    return time.perf_counter() - started


def _indexes(conninfo: str) -> list[str]:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename IN ('chunks', 'embeddings')"))


def _search_ok(home: Path, doc: int, seq: int) -> bool:
    from flows.search import search_now
    from tasks.search import SearchRequest

    pf.register_embedder()
    hits = search_now(SearchRequest(query=pf.paragraph(doc, seq), tenant=pf.TENANT, mode="hybrid", limit=3),
                      pf.settings_for(home))
    return bool(hits) and hits[0].document_id == f"doc-{doc:05d}" and pf.paragraph(doc, seq) in hits[0].text


def run_kill(workdir: Path, *, docs: int = 500, chunks_per_doc: int = 100, kill_fraction: float = 0.5,
             store_batch: int = 2000, timeout: float = 1800.0) -> dict:
    """kill -9 mid-ingest, restart, re-run; see the module docstring."""
    from blocks.postgres import PgVectorStore
    from tasks.migrate import ensure_schema

    home = Path(workdir) / "kill"
    home.mkdir(parents=True, exist_ok=True)
    total = docs * chunks_per_doc
    out: dict = {"docs": docs, "chunks_per_doc": chunks_per_doc, "chunks_total": total,
                 "kill_fraction": kill_fraction, "store_batch": store_batch, "embedder": "fake-words-64 (64-d)"}
    worker = None
    try:
        store = PgVectorStore(home=str(home))
        pool = store.pool()
        ensure_schema(pool)
        started = time.perf_counter()
        worker = pf.run_worker(home, docs, chunks_per_doc, store_batch=store_batch)
        seen = 0
        while seen < total * kill_fraction:
            if worker.poll() is not None:
                raise RuntimeError(f"the ingest ended before the kill: {pf.worker_result(worker)}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"only {seen} chunks committed after {timeout} s")
            seen = pf.count(home) or seen
            time.sleep(0.02)
        out["seconds_to_kill"] = round(time.perf_counter() - started, 2)
        out["chunks_seen_committed_at_kill"] = seen
        killed = time.perf_counter()
        pf.kill_postmaster(home)
        result = pf.worker_result(worker, timeout=timeout)
        out["worker_failed_after_kill_s"] = round(time.perf_counter() - killed, 2)
        out["worker_returncode"] = result["returncode"]
        out["worker_error_type"] = result.get("error_type")
        out["worker_error"] = result.get("error")

        restart = time.perf_counter()
        assert store.pool() is pool
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        out["restart_and_recovery_s"] = round(time.perf_counter() - restart, 2)
        before = pf.integrity(pf.url(home))
        out["after_kill"] = before
        out["chunks_committed_before_kill"] = before["chunks"]
        out["indexes_after_kill"] = _indexes(pf.url(home))

        rerun_started = time.perf_counter()
        worker = pf.run_worker(home, docs, chunks_per_doc, store_batch=store_batch)
        rerun = pf.worker_result(worker, timeout=timeout)
        out["rerun_wall_s"] = round(time.perf_counter() - rerun_started, 2)
        out["rerun_ingest_s"] = round(rerun.get("seconds", float("nan")), 2)
        out["rerun_error"] = rerun.get("error")
        out["rerun_documents_skipped"] = rerun.get("documents_unchanged")
        out["rerun_chunks_inserted"] = rerun.get("chunks_inserted")
        out["rerun_texts_embedded"] = rerun.get("texts_seen")
        out["chunks_missing_before_rerun"] = total - before["chunks"]
        out["rerun_bulk_index_rebuild"] = rerun.get("bulk_index_rebuild")
        after = pf.integrity(pf.url(home))
        out["after_rerun"] = after
        out["duplicates_found"] = (after["duplicate_positions"] + after["duplicate_hashes"]
                                   + after["duplicate_embeddings"])
        out["indexes_after_rerun"] = _indexes(pf.url(home))
        out["search_after_rerun_ok"] = _search_ok(home, 0, 3) and _search_ok(home, docs - 1, chunks_per_doc - 1)
        out["ok"] = (after["chunks"] == after["embeddings"] == total and out["duplicates_found"] == 0
                     and after["chunks_without_embedding"] == 0 and after["documents_with_wrong_chunk_count"] == 0
                     and out["rerun_texts_embedded"] == out["chunks_missing_before_rerun"]
                     and out["search_after_rerun_ok"])
        return out
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        pf.forget(home)
        pf.stop_server(home)


def run_disk_full(workdir: Path, *, docs: int = 200, chunks_per_doc: int = 100, free_mb: int = 24,
                  store_batch: int = 2000) -> dict:
    """A tmpfs data volume fills mid-ingest, grows again, the ingest re-runs; see the module docstring."""
    from blocks.errors import StoreUnavailable
    from flows.ingest import ingest_documents

    total = docs * chunks_per_doc
    out: dict = {"docs": docs, "chunks_per_doc": chunks_per_doc, "chunks_total": total, "free_mb": free_mb,
                 "store_batch": store_batch}
    mount = Path(workdir) / "volume"
    if (cannot := pf.mount_tmpfs(mount)) is not None:
        return {**out, "skipped": cannot}
    home = mount / "home"
    try:
        store, used, size = pf.start_on_volume(home, free_mb * 2**20)
        out["tmpfs_mb"] = round(size / 2**20, 1)
        out["used_by_empty_database_mb"] = round(used / 2**20, 1)
        settings = pf.settings_for(home, store_batch)
        pf.register_embedder()
        started = time.perf_counter()
        try:
            result = ingest_documents(pf.request(docs, chunks_per_doc), settings)
            out["error"] = None
            out["unexpectedly_completed"] = {k: v for k, v in result.summary().items() if k != "errors"}
        except StoreUnavailable as exc:
            out["error_type"] = type(exc).__name__
            out["error"] = str(exc)
        out["failed_after_s"] = round(time.perf_counter() - started, 2)
        panics = [line for line in (home / "pgdata" / "log").read_text(errors="replace").splitlines()
                  if "PANIC:" in line]
        out["server_panicked"] = panics[0] if panics else None  # the WAL could not be written: crash and restart

        grown = 1024 * 2**20 + used
        pf.resize_tmpfs(mount, grown)
        out["tmpfs_grown_to_mb"] = round(grown / 2**20, 1)
        recovery = time.perf_counter()
        store.pool()  # starts the server again if the PANIC left it down
        _wait_answering(home, 300)
        out["recovery_s"] = round(time.perf_counter() - recovery, 2)
        before = pf.integrity(pf.url(home))
        out["after_full"] = before
        out["chunks_stored_before_full"] = before["chunks"]

        seen = pf.register_embedder()
        rerun = time.perf_counter()
        result = ingest_documents(pf.request(docs, chunks_per_doc), settings)
        out["rerun_s"] = round(time.perf_counter() - rerun, 2)
        out["rerun_errors"] = result.summary()["errors"]
        out["rerun_texts_embedded"] = seen["texts"]
        out["chunks_missing_before_rerun"] = total - before["chunks"]
        after = pf.integrity(pf.url(home))
        out["after_rerun"] = after
        out["duplicates_found"] = (after["duplicate_positions"] + after["duplicate_hashes"]
                                   + after["duplicate_embeddings"])
        out["ok"] = (out["error"] is not None and "disk space" in out["error"]
                     and after["chunks"] == after["embeddings"] == total and out["duplicates_found"] == 0
                     and before["chunks_without_embedding"] == before["documents_with_wrong_chunk_count"] == 0
                     and out["rerun_texts_embedded"] == out["chunks_missing_before_rerun"])
        return out
    finally:
        pf.forget(home)
        pf.stop_server(home)
        pf.unmount(mount)


def run(workdir: Path, *, docs: int = 500, chunks_per_doc: int = 100, kill_fraction: float = 0.5,
        store_batch: int = 2000, disk: bool = True, disk_docs: int = 200, free_mb: tuple[int, ...] = (24, 10)) -> dict:
    """Both faults: {"kill": run_kill(...), "disk_full": [run_disk_full(...) per free_mb]} (disk=False: the kill only).

    Two sizes of free space because where PostgreSQL meets the full disk decides what it does: extending a table
    or index file raises DiskFull and the server goes on; writing the WAL PANICs and the server restarts (crash
    recovery). With 24 MB free the first usually happens, with 10 MB the second (not guaranteed: both are reported).
    """
    workdir = Path(workdir)
    out = {"kill": run_kill(workdir, docs=docs, chunks_per_doc=chunks_per_doc, kill_fraction=kill_fraction,
                            store_batch=store_batch)}
    if disk:
        out["disk_full"] = [run_disk_full(workdir / f"free{mb}", docs=disk_docs, chunks_per_doc=chunks_per_doc,
                                          free_mb=mb, store_batch=store_batch) for mb in free_mb]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.faults_database", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--chunks-per-doc", type=int, default=100)
    parser.add_argument("--kill-fraction", type=float, default=0.5)
    parser.add_argument("--store-batch", type=int, default=2000)
    parser.add_argument("--no-disk", action="store_true")
    parser.add_argument("--disk-docs", type=int, default=200)
    parser.add_argument("--free-mb", default="24,10", help="comma-separated MB left free on the tmpfs, one run each")
    args = parser.parse_args()
    target = ROOT / "bench" / ".data" / "faults_database"
    if target.exists():
        for pid_file in target.rglob("postmaster.pid"):
            pf.stop_server(pid_file.parent.parent)
        for volume in target.glob("*/volume"):
            pf.unmount(volume)
        shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    print(json.dumps(run(target, docs=args.docs, chunks_per_doc=args.chunks_per_doc,
                         kill_fraction=args.kill_fraction, store_batch=args.store_batch, disk=not args.no_disk,
                         disk_docs=args.disk_docs, free_mb=tuple(int(x) for x in args.free_mb.split(","))),
                     indent=2, default=str))
