"""Database faults: the embedded PostgreSQL killed with SIGKILL mid-ingest, and its volume full.

Each test runs its own embedded server in a temporary home (never the session's) and stops it at the end.
Both faults must leave nothing half-written (a document with fewer chunks than it says, a chunk without its
embedding, a duplicate), fail with an error that says what happened and what to do, and let a re-run finish the
work while embedding only what was not committed.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import tasks.store
from blocks.errors import StoreUnavailable
from blocks.postgres import PgVectorStore
from flows.ingest import run_ingest
from flows.search import search_now
from tasks.migrate import ensure_schema
from tasks.search import SearchRequest
from tests.reliability import pgfaults as pf

DOCS, PER_DOC = 30, 100  # 3,000 chunks, every one with its own text
TOTAL = DOCS * PER_DOC
STORE_BATCH = 300  # chunks per transaction: 10 commits per ingest


@pytest.fixture
def own_home(tmp_path):
    """A home for an embedded server of this test alone; the server is stopped however the test ends."""
    home = tmp_path / "pg"
    home.mkdir()
    try:
        yield home
    finally:
        pf.forget(home)
        pf.stop_server(home)


def _wait_answering(home: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = pf.count(home)
        if n is not None:
            return n
        time.sleep(0.05)
    raise AssertionError(f"the server in {home} did not answer within {timeout} s")


def _assert_nothing_half_written(state: dict) -> None:
    assert state["duplicate_positions"] == 0, state
    assert state["duplicate_hashes"] == 0, state
    assert state["duplicate_embeddings"] == 0, state
    assert state["chunks_without_embedding"] == 0, state
    assert state["documents_with_wrong_chunk_count"] == 0, state
    assert state["chunks"] == state["documents"] * PER_DOC == state["embeddings"], state


def _indexes(pool) -> set[str]:
    with pool.connection() as conn:
        return {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename IN ('chunks', 'embeddings')")}


def _assert_search_finds(settings, doc: int, seq: int) -> None:
    hits = search_now(SearchRequest(query=pf.paragraph(doc, seq), tenant=pf.TENANT, mode="hybrid", limit=3),
                      settings)
    assert hits and hits[0].document_id == f"doc-{doc:05d}" and pf.paragraph(doc, seq) in hits[0].text, hits[:1]


def test_kill_9_mid_ingest_then_the_rerun_embeds_only_what_was_not_committed(own_home, monkeypatch):
    # This process starts the server and keeps a pool on it, as a long-lived devmesh process (gateway, agent) would.
    store = PgVectorStore(home=str(own_home))
    pool = store.pool()
    ensure_schema(pool)
    # The worker loads as a bulk load (indexes dropped first, rebuilt at the end), which the kill cuts short.
    worker = pf.run_worker(own_home, DOCS, PER_DOC, store_batch=STORE_BATCH, bulk_threshold=2000)
    try:
        deadline = time.monotonic() + 120
        while (seen := pf.count(own_home) or 0) < TOTAL * 0.3:
            assert worker.poll() is None, f"the ingest ended before the kill: {pf.worker_result(worker)}"
            assert time.monotonic() < deadline, f"only {seen} chunks committed after 120 s"
            time.sleep(0.02)
        pf.kill_postmaster(own_home)
        killed_at = time.monotonic()
        result = pf.worker_result(worker, timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # The ingest stops at once with what happened and what to do (no 30 s pool wait per remaining document).
    assert result["returncode"] == 1 and result["error_type"] == "StoreUnavailable", result
    assert "lost the connection to the database" in result["error"], result
    assert "run the ingest again" in result["error"], result
    assert time.monotonic() - killed_at < 60

    # The same process gets the server back: start_embedded sees the postmaster gone and starts it (crash recovery),
    # and the pool it holds drops the dead connections.
    assert pf.postmaster_pid(own_home) is None
    assert store.pool() is pool
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    before = pf.integrity(pf.url(own_home))
    _assert_nothing_half_written(before)
    committed = before["chunks"]
    assert TOTAL * 0.3 <= committed < TOTAL, before

    # The re-run: whole documents committed before the kill are skipped, the rest is embedded once.
    monkeypatch.setattr(tasks.store, "BULK_THRESHOLD", 2000)
    seen = pf.register_embedder()
    settings = pf.settings_for(own_home, STORE_BATCH)
    summary = run_ingest(pf.request(DOCS, PER_DOC), settings)
    assert summary["errors"] == []
    assert summary["documents_unchanged"] == committed // PER_DOC
    assert summary["chunks_inserted"] == TOTAL - committed
    assert summary["texts_embedded"] == seen["texts"] == TOTAL - committed
    after = pf.integrity(pf.url(own_home))
    _assert_nothing_half_written(after)
    assert after["chunks"] == after["embeddings"] == TOTAL and after["documents"] == DOCS
    # The bulk load the kill interrupted had dropped the HNSW and full-text indexes; this smaller load (under the
    # bulk threshold) found them missing and rebuilt them.
    model_id = tasks.store.ensure_model(pool, pf.FakeEmbedder().model_id, 64)
    assert {tasks.store.model_index_name(model_id), "chunks_tsv"} <= _indexes(pool)
    _assert_search_finds(settings, 3, 17)  # committed before the kill
    _assert_search_finds(settings, DOCS - 1, 42)  # written by the re-run
    # A third run has nothing left to do.
    again = run_ingest(pf.request(DOCS, PER_DOC), settings)
    assert again["documents_unchanged"] == DOCS and again["texts_embedded"] == 0


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); this run is not root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")


def _remount(path: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True, capture_output=True)


def test_disk_full_fails_with_a_clear_error_and_the_rerun_completes_when_space_returns(tmp_path, monkeypatch):
    mount = tmp_path / "volume"
    mount.mkdir()
    _mount_tmpfs(mount, "256m")
    home = mount / "home"
    try:
        store = PgVectorStore(home=str(home))
        pool = store.pool()
        ensure_schema(pool)
        with pool.connection() as conn:
            conn.execute("CHECKPOINT")
        stat = os.statvfs(mount)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        # 12 MB left: a few hundred chunks fit, 3,000 do not. Where PostgreSQL hits the wall decides what it does:
        # in a table or index file it raises DiskFull (53100) and goes on; in the WAL it PANICs and restarts.
        _remount(mount, used + 12 * 2**20)
        seen = pf.register_embedder()
        settings = pf.settings_for(home, STORE_BATCH)
        with pytest.raises(StoreUnavailable) as failed:
            run_ingest(pf.request(DOCS, PER_DOC), settings)
        message = str(failed.value)
        assert "ran out of disk space" in message and "No space left on device" in message, message
        assert "Free space on that volume" in message and "run the ingest again" in message, message
        assert str(home / "pgdata") in message, message

        _remount(mount, used + 256 * 2**20)
        store.pool()  # starts the server again if the PANIC left it down
        _wait_answering(home)
        before = pf.integrity(pf.url(home))
        _assert_nothing_half_written(before)
        committed = before["chunks"]
        assert committed < TOTAL

        seen = pf.register_embedder()
        summary = run_ingest(pf.request(DOCS, PER_DOC), settings)
        assert summary["errors"] == []
        assert summary["texts_embedded"] == seen["texts"] == TOTAL - committed
        after = pf.integrity(pf.url(home))
        _assert_nothing_half_written(after)
        assert after["chunks"] == TOTAL and after["documents"] == DOCS
        _assert_search_finds(settings, DOCS - 1, 5)
    finally:
        pf.forget(home)
        pf.stop_server(home)
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
