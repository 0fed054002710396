"""Ingest through an embedding provider that fails 30% of its requests (429 with Retry-After, 500, or a hang past
the client timeout, an even mix): wall time against a fault-free run, retries by kind, and whether the stored data
is identical. The provider is the loopback fake of OpenAI's API (tests/fakes) driven by the real OpenAI SDK
through devmesh's OpenAIEmbedder block; each run starts its own embedded PostgreSQL under `workdir`.

    .venv/bin/python -m bench.faulty_provider     # 5,000 chunks into a fresh bench/.data/faulty_provider
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["run"]


class _Retries(logging.Handler):
    """Counts devmesh.retry's warnings by the kind of failure they retry."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kinds: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        kind = ("429" if "HTTP 429" in message else "5xx" if "HTTP 5" in message
                else "timeout" if "within the timeout" in message else "other")
        self.kinds[kind] += 1


def _stored(pool, tenant: str) -> tuple[dict, int]:
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT c.document_id, c.seq, e.embedding::real[] FROM chunks c JOIN embeddings e ON e.chunk_id = c.id "
            "WHERE c.tenant_id = %s", (tenant,)).fetchall()
    return {(d, s): np.asarray(v, dtype=np.float32) for d, s, v in rows}, len(rows)


def run(workdir: Path, *, chunks: int = 5000, store_batch: int = 50, rate: float = 0.3, seed: int = 7,
        timeout: float = 1.0, hang_s: float = 3.0, max_retries: int = 8, dims: int = 64) -> dict:
    """Fault-free and faulty ingests of `chunks` one-chunk documents, `store_batch` texts per provider call."""
    from bench.run import stop_servers_under
    from blocks.embedders import register_embedder
    from blocks.embedders.openai import OpenAIEmbedder
    from blocks.postgres import PgVectorStore
    from blocks.settings import Settings
    from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
    from tasks.migrate import ensure_schema
    from tests.fakes import FakeOpenAI
    from tests.fakes.server import Chaos

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=workdir / "home", database_url=None, embedder="local")
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"store_batch": store_batch})})
    docs = [DocumentSpec(document_id=f"doc-{i:05d}",
                         text=f"runbook {i}: when queue {i % 17} backs up, drain worker {i} and restart shard {i % 5}")
            for i in range(chunks)]
    retries = _Retries()
    logger = logging.getLogger("devmesh.retry")
    propagate = logger.propagate
    pool = None
    try:
        pool = PgVectorStore.from_settings(settings).pool()
        ensure_schema(pool)
        out: dict = {"parameters": {"chunks": chunks, "store_batch": store_batch, "fault_rate": rate, "seed": seed,
                                    "timeout_s": timeout, "hang_s": hang_s, "max_retries": max_retries,
                                    "kinds": ["429 (retry-after-ms 50)", "500", "hang"]}}
        with FakeOpenAI(api_key="sk-bench-chaos") as api:
            times, requests, summaries = {}, {}, {}
            for tenant, chaos in (("clean", None), ("faulty", Chaos(rate=rate, seed=seed, hang_s=hang_s))):
                api.reset()
                api.chaos = chaos
                name = f"openai-bench-{tenant}"
                register_embedder(name, OpenAIEmbedder(
                    api_key="sk-bench-chaos", base_url=f"{api.url}/v1", output_dimensions=dims, timeout=timeout,
                    max_retries=max_retries))
                if chaos is not None:
                    logger.addHandler(retries)
                    logger.propagate = False  # hundreds of warnings: counted, not printed
                started = time.perf_counter()
                summaries[tenant] = ingest_documents(IngestRequest(tenant=tenant, documents=docs, embedder=name), settings)
                times[tenant] = time.perf_counter() - started
                requests[tenant] = len(api.requests)
                logger.removeHandler(retries)
                logger.propagate = propagate
            faults = {kind: chaos.counts[kind] for kind in ("429", "500", "hang")}
        clean, clean_rows = _stored(pool, "clean")
        faulty, faulty_rows = _stored(pool, "faulty")
        differing = sum(1 for key in clean if key not in faulty or not np.allclose(faulty[key], clean[key], atol=1e-6))
        out.update({
            "clean_s": round(times["clean"], 2),
            "faulty_s": round(times["faulty"], 2),
            "extra_s": round(times["faulty"] - times["clean"], 2),
            "time_ratio": round(times["faulty"] / times["clean"], 2),
            "provider_calls": summaries["clean"].embedding_calls,
            "requests_clean": requests["clean"],
            "requests_faulty": requests["faulty"],
            "faults_served": faults,
            "fault_share": round(sum(faults.values()) / requests["faulty"], 3),
            "retries_by_kind": dict(retries.kinds),
            "retries": sum(retries.kinds.values()),
            "errors": len(summaries["clean"].errors) + len(summaries["faulty"].errors),
            "chunks_clean": len(clean),
            "chunks_faulty": len(faulty),
            "missing": len(set(clean) - set(faulty)),
            "duplicated": (clean_rows - len(clean)) + (faulty_rows - len(faulty)),
            "vectors_differing": differing,
            "identical": differing == 0 and len(clean) == len(faulty) == chunks and faulty_rows == chunks,
        })
        return out
    finally:
        logger.removeHandler(retries)
        logger.propagate = propagate
        if pool is not None:
            pool.close()
        stop_servers_under(workdir)


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / ".data" / "faulty_provider"
    shutil.rmtree(target, ignore_errors=True)
    print(json.dumps(run(target), indent=2))
