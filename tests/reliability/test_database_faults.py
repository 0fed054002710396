"""Database faults: the embedded PostgreSQL killed with SIGKILL mid-ingest, and its volume full.

Each test runs its own embedded server in a temporary home (never the session's) and stops it at the end.
Both faults must leave nothing half-written (a document with fewer chunks than it says, a chunk without its
embedding, a duplicate), fail with an error that says what happened and what to do, and let a re-run finish the
work while embedding only what was not committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tasks.indexes
import tasks.registry
from blocks.errors import StoreUnavailable
from blocks import postgres
from blocks.postgres import PgVectorStore, start_embedded
from flows.ingest import ingest_documents
from flows.search import search_now
from tasks.migrate import ensure_schema, migrations
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


def _wait_answering(home: Path, timeout: float = 60.0, sql: str = "SELECT count(*) FROM chunks") -> int:
    try:
        return pf.wait_answering(home, timeout, sql)
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None


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
    monkeypatch.setattr(tasks.indexes, "BULK_THRESHOLD", 2000)
    seen = pf.register_embedder()
    settings = pf.settings_for(own_home, STORE_BATCH)
    summary = ingest_documents(pf.request(DOCS, PER_DOC), settings)
    assert summary.errors == []
    assert summary.documents_unchanged == committed // PER_DOC
    assert summary.chunks_inserted == TOTAL - committed
    assert summary.texts_embedded == seen["texts"] == TOTAL - committed
    after = pf.integrity(pf.url(own_home))
    _assert_nothing_half_written(after)
    assert after["chunks"] == after["embeddings"] == TOTAL and after["documents"] == DOCS
    # The bulk load the kill interrupted had dropped the HNSW and full-text indexes; this smaller load (under the
    # bulk threshold) found them missing and rebuilt them.
    model_id = tasks.registry.ensure_model(pool, pf.FakeEmbedder().model_id, 64)
    assert {tasks.indexes.model_index_name(model_id), "chunks_tsv"} <= _indexes(pool)
    _assert_search_finds(settings, 3, 17)  # committed before the kill
    _assert_search_finds(settings, DOCS - 1, 42)  # written by the re-run
    # A third run has nothing left to do.
    again = ingest_documents(pf.request(DOCS, PER_DOC), settings)
    assert again.documents_unchanged == DOCS and again.texts_embedded == 0


def test_disk_full_fails_with_a_clear_error_and_the_rerun_completes_when_space_returns(tmp_path, monkeypatch):
    mount = tmp_path / "volume"
    if (cannot := pf.mount_tmpfs(mount)) is not None:
        pytest.skip(cannot)
    home = mount / "home"
    try:
        # 4 MB left: a few hundred chunks fit, 3,000 (about 11 MB with their WAL) do not. Where PostgreSQL hits the
        # wall decides what it does: in a table or index file it raises DiskFull (53100) and goes on; in the WAL it
        # PANICs and restarts.
        store, used, _ = pf.start_on_volume(home, 4 * 2**20)
        seen = pf.register_embedder()
        settings = pf.settings_for(home, STORE_BATCH)
        with pytest.raises(StoreUnavailable) as failed:
            ingest_documents(pf.request(DOCS, PER_DOC), settings)
        message = str(failed.value)
        assert "ran out of disk space" in message and "No space left on device" in message, message
        assert "Free space on that volume" in message and "run the ingest again" in message, message
        assert str(home / "pgdata") in message, message

        pf.resize_tmpfs(mount, used + 256 * 2**20)
        store.pool()  # starts the server again if the PANIC left it down
        _wait_answering(home)
        before = pf.integrity(pf.url(home))
        _assert_nothing_half_written(before)
        committed = before["chunks"]
        assert committed < TOTAL

        seen = pf.register_embedder()
        summary = ingest_documents(pf.request(DOCS, PER_DOC), settings)
        assert summary.errors == []
        assert summary.texts_embedded == seen["texts"] == TOTAL - committed
        after = pf.integrity(pf.url(home))
        _assert_nothing_half_written(after)
        assert after["chunks"] == TOTAL and after["documents"] == DOCS
        _assert_search_finds(settings, DOCS - 1, 5)
    finally:
        pf.forget(home)
        pf.stop_server(home)
        pf.unmount(mount)


def test_a_migration_cut_short_by_a_full_disk_leaves_the_previous_schema_and_says_so_again(tmp_path):
    mount = tmp_path / "volume"
    if (cannot := pf.mount_tmpfs(mount)) is not None:
        pytest.skip(cannot)
    home = mount / "home"
    try:
        # A fresh database (no schema at all) on a volume that has 320 kB left: the schema writes about 600 kB of
        # WAL and 2.6 MB of files, so its migrations stop early. Before the second call the volume is shrunk again
        # to what is used plus 320 kB (the crash recovery after a PANIC removes WAL, which would give space back).
        store, used, _ = pf.start_on_volume(home, 320 * 2**10, schema=False)
        pf.register_embedder()
        settings = pf.settings_for(home)
        versions = [v for v, _, _ in migrations()]
        for attempt in (1, 2):
            # The second call meets a disk as full again (what the first one applied stays; the rest may or may not
            # fit, depending on where the first stopped): it either fails the same way, or completes the schema —
            # never an error of a half-built one (the defect: UndefinedTable).
            if attempt == 2:
                pf.resize_tmpfs(mount, pf.used_bytes(mount) + 320 * 2**10)
            try:
                ingest_documents(pf.request(1, 3), settings)
            except StoreUnavailable as failed:
                message = str(failed)
                assert "ran out of disk space" in message and "No space left on device" in message, (attempt, message)
                assert "does not exist" not in message, (attempt, message)
            else:
                assert attempt == 2, "the whole schema fitted in 320 kB: this test no longer cuts it short"
            store.pool()  # starts the server again if the full disk made it PANIC
            _wait_answering(home, sql="SELECT 1")
            state = pf.half_applied_migrations(pf.url(home))
            assert state["unrecorded_tables"] == [] and state["missing_tables"] == [], (attempt, state)
            assert state["recorded"] == versions[: len(state["recorded"])], (attempt, state)  # whole ones, in order
            if attempt == 1:
                assert len(state["recorded"]) < len(versions), state  # the disk did cut the migrations short

        pf.resize_tmpfs(mount, used + 256 * 2**20)
        summary = ingest_documents(pf.request(1, 3), settings)
        assert summary.errors == [], summary
        assert pf.integrity(pf.url(home))["chunks"] == 3
        state = pf.half_applied_migrations(pf.url(home))
        assert state["recorded"] == versions, state
        assert state["unrecorded_tables"] == [] and state["missing_tables"] == [], state
        _assert_search_finds(settings, 0, 1)
    finally:
        pf.forget(home)
        pf.stop_server(home)
        pf.unmount(mount)


# ------------------------------------------------------------------ restarts seen by a long-lived process

def _restart_from_another_process(home: Path) -> None:
    """What the gateway, `prefect serve` or a CLI sharing the server does when it finds the postmaster dead."""
    done = subprocess.run([sys.executable, "-c", "import sys; from blocks.postgres import start_embedded; "
                           "start_embedded(sys.argv[1])", str(home)],
                          cwd=pf.ROOT, env={**os.environ, "PYTHONPATH": str(pf.ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_threads_finding_the_server_dead_restart_it_once(own_home, monkeypatch, caplog):
    store = PgVectorStore(home=str(own_home))
    pool = store.pool()
    pf.kill_postmaster(own_home)
    starts = []
    real = postgres._start_embedded
    monkeypatch.setattr(postgres, "_start_embedded", lambda home: starts.append(home) or real(home))
    barrier = threading.Barrier(8)
    pools = []

    def use() -> None:
        barrier.wait()
        pools.append(store.pool())

    with caplog.at_level(logging.WARNING, logger="devmesh.postgres"):
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(pools) == 8 and all(p is pool for p in pools)
    assert len(starts) == 1, starts  # the other 7 found it running again
    assert sum("had stopped" in r.getMessage() for r in caplog.records) == 1
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_server_restarted_by_another_process_gets_this_process_pools_back(own_home):
    store = PgVectorStore(home=str(own_home))
    pool = store.pool()
    with pool.connection() as conn:  # an idle connection to the first postmaster stays in the pool
        conn.execute("SELECT 1")

    async def scenario() -> None:
        apool = await store.open_async_pool(max_size=2)  # as the gateway does
        try:
            async with apool.connection() as conn:
                await conn.execute("SELECT 1")
            first = pf.postmaster_pid(own_home)
            await asyncio.to_thread(pf.kill_postmaster, own_home)
            await asyncio.to_thread(_restart_from_another_process, own_home)
            assert pf.postmaster_pid(own_home) not in (None, first)
            # This process did not restart it; its pools still hold connections to the dead postmaster.
            assert store.pool() is pool
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            async with apool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await apool.close()

    asyncio.run(scenario())


def test_the_rest_api_state_restarts_the_embedded_server_and_names_its_log(own_home):
    from deployments.api.state import ApiState

    api = ApiState({}, pf.settings_for(own_home))
    pool = api.pool()
    assert api.settings.database_url is None  # the home is kept, not the resolved URL
    assert PgVectorStore.from_settings(api.settings).server_log() == pf.pgdata(own_home) / "log"
    pf.kill_postmaster(own_home)
    assert api.pool() is pool
    with api.pool().connection() as conn:  # the gateway process started it again
        assert conn.execute("SELECT 1").fetchone() == (1,)


class _FailingEmbedder(pf.FakeEmbedder):
    """Reports a hosted call's usage, then the database becomes unusable and the embedder fails."""

    _block_type_name = "Failing Usage Embedder"
    home: str = ""

    def embed(self, texts):
        from blocks.embedders.hosted import _COLLECTORS
        from blocks.embedders.pricing import Usage

        for usages in _COLLECTORS.get():
            usages.append(Usage.of("openai", "text-embedding-3-small", 100, len(texts)))
        postgres._pools[start_embedded(Path(self.home))].close()  # the pool the usage rows would use
        raise RuntimeError("the provider broke")


def test_a_failure_while_the_usage_cannot_be_recorded_keeps_its_own_error(own_home):
    from blocks.embedders import register_embedder

    store = PgVectorStore(home=str(own_home))
    ensure_schema(store.pool())
    register_embedder("failing-usage", _FailingEmbedder(home=str(own_home)))
    settings = pf.settings_for(own_home).model_copy(update={"embedder": "failing-usage"})
    with pytest.raises(RuntimeError, match="the provider broke") as failed:
        ingest_documents(pf.request(1, 3).model_copy(update={"embedder": "failing-usage"}), settings)
    assert any("was not recorded" in note for note in getattr(failed.value, "__notes__", [])), failed.value
