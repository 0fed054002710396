"""The LoCoMo evaluation: each conversation one context, each turn one message appended through the product's
append path, each question of categories 1-4 searched within its context; evidence recall per mode."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from blocks.embedders import load_embedder
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.context_index import append_messages
from tasks.contexts import (
    context_scope, create_context, delete_context, list_contexts, search_contexts, update_context_metadata,
)
from tasks.embed import EmbedStats
from tasks.locomo import KS, Conversation, load_locomo, score_question, summarise
from tasks.migrate import ensure_schema
from tasks.registry import ensure_model

__all__ = ["LocomoEvalRequest", "evaluate_locomo", "run_locomo_eval", "load_conversation", "markdown", "MODES"]

MODES = ("vector", "keyword", "hybrid")
# Hits asked per question: enough to fill the largest budget with one-turn hits.
LIMIT = 2 * max(KS)


class LocomoEvalRequest(BaseModel):
    """Which LoCoMo file or folder to evaluate and where to load it."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., description="A LoCoMo JSON file (list of samples) or a folder holding one locomo*.json.")
    tenant: str | None = Field(None, description="Tenant to load the conversations into (default: locomo-<file hash>).")


def _fingerprint(conversation: Conversation, settings: Settings, model: str) -> str:
    """What the stored context was built from: its turns, the chunk settings and the model."""
    digest = hashlib.sha256()
    digest.update(json.dumps([settings.chunk.model_dump(), model]).encode())
    for turn in conversation.turns:
        digest.update(json.dumps([turn.speaker, turn.content, turn.at.isoformat() if turn.at else None]).encode())
    return digest.hexdigest()[:16]


def _messages(conversation: Conversation, positions: list[int]) -> list[dict]:
    """The turns at `positions` as messages: the first speaker is the user, the other the assistant."""
    first = conversation.speakers[0]
    return [{"role": "user" if t.speaker == first else "assistant", "name": t.speaker, "content": t.content,
             "created_at": t.at}
            for t in (conversation.turns[i] for i in positions)]


def load_conversation(pool, tenant: str, embedder, settings: Settings, conversation: Conversation,
                      model_id: int) -> tuple:
    """The conversation's context (reused when built from the same turns and settings) and what loading cost."""
    fingerprint = _fingerprint(conversation, settings, embedder.model_id)
    stale = list_contexts(pool, tenant, {"metadata": {"locomo": conversation.sample_id}, "limit": 500}).items
    for context in stale:
        if context.metadata.get("fingerprint") == fingerprint and context.message_count == len(conversation.turns):
            return context.id, None
        delete_context(pool, tenant, context.id)
    context = create_context(pool, tenant, {"type": "conversation", "user_id": conversation.speakers[0],
                                            "metadata": {"locomo": conversation.sample_id}})
    append_ms, chunks, embedded = [], 0, 0
    for session in conversation.sessions:  # one append per session: how a chat client flushes its turns
        started = time.perf_counter()
        result = append_messages(pool, tenant, context.id, _messages(conversation, session), embedder=embedder,
                                 chunk=settings.chunk, model_id=model_id)
        append_ms.append((time.perf_counter() - started) * 1000)
        chunks += result.chunks_added
        embedded += result.texts_embedded
    update_context_metadata(pool, tenant, context.id, {"fingerprint": fingerprint})
    return context.id, {"appends": len(append_ms), "messages": len(conversation.turns), "chunks": chunks,
                        "texts_embedded": embedded, "append_ms": append_ms}


def run_locomo_eval(path: Path, settings: Settings, tenant: str | None = None, modes=MODES) -> dict:
    """Load the conversations (once; re-runs reuse unchanged contexts), ask every question in each mode, score."""
    path = Path(path)
    conversations = load_locomo(path)
    source = path if path.is_file() else next(iter(sorted(path.glob("locomo*.json"))))
    tenant = tenant or f"locomo-{hashlib.sha256(source.read_bytes()).hexdigest()[:8]}"
    pool = PgVectorStore.from_settings(settings).pool()
    ensure_schema(pool)
    embedder = load_embedder(settings.embedder)
    model_id = ensure_model(pool, embedder.model_id, embedder.dimensions)

    started, calls_before = time.perf_counter(), EmbedStats.texts
    contexts, loads = {}, []
    for conversation in conversations:
        contexts[conversation.sample_id], loaded = load_conversation(pool, tenant, embedder, settings, conversation,
                                                                     model_id)
        if loaded:
            loads.append(loaded)
    append_ms = [ms for load in loads for ms in load["append_ms"]]
    ingest = {
        "contexts_loaded": len(loads), "contexts_reused": len(conversations) - len(loads),
        "messages": sum(x["messages"] for x in loads), "appends": len(append_ms),
        "chunks": sum(x["chunks"] for x in loads), "texts_embedded": sum(x["texts_embedded"] for x in loads),
        "seconds": round(time.perf_counter() - started, 2),
        "append_p50_ms": round(statistics.median(append_ms), 1) if append_ms else None,
    }
    ingest["embedder_texts"] = EmbedStats.texts - calls_before

    scored: dict[str, list] = {mode: [] for mode in modes}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    turns_per_hit: dict[str, list[int]] = {mode: [] for mode in modes}
    for conversation in conversations:
        for q in conversation.questions:
            for mode in modes:
                request = context_scope(tenant, contexts[conversation.sample_id], q.question, mode=mode, limit=LIMIT)
                t = time.perf_counter()
                hits = search_contexts(pool, request, embedder=embedder, settings=settings.search)
                latencies[mode].append((time.perf_counter() - t) * 1000)
                ranges = [tuple(h.metadata["message_range"]) for h in hits]
                turns_per_hit[mode] += [b - a + 1 for a, b in ranges]
                scored[mode].append((q.category, score_question(ranges, q.evidence)))
    results = {}
    for mode in modes:
        results[mode] = {**summarise(scored[mode]), "p50_ms": round(statistics.median(latencies[mode]), 2),
                         "turns_per_hit": round(statistics.mean(turns_per_hit[mode]), 2) if turns_per_hit[mode] else None}
    search = settings.search
    return {
        "dataset": source.name, "tenant": tenant, "conversations": [c.sample_id for c in conversations],
        "turns": sum(len(c.turns) for c in conversations),
        "questions": sum(len(c.questions) for c in conversations),
        "evidence_dropped": sum(c.dropped_evidence for c in conversations),
        "model": embedder.model_id, "chunk": settings.chunk.model_dump(),
        "settings": {**search.model_dump(include={
            "fusion", "rrf_k", "vector_weight", "keyword_weight", "turn_neighbour_weight", "turn_window",
            "turn_window_weight", "speaker_boost", "candidates", "bm25_k1", "bm25_b"}), "limit": LIMIT},
        "ingest": ingest, "ks": list(KS), "modes": results,
    }


def markdown(result: dict) -> str:
    """The recall table of a run_locomo_eval result."""
    rows = "\n".join(f"| {mode} | " + " | ".join(f"{m['all'][f'recall@{k}']:.1f}" for k in KS) + f" | {m['p50_ms']:.1f} |"
                     for mode, m in result["modes"].items())
    head = " | ".join(f"recall@{k}" for k in KS)
    return (f"## LoCoMo {result['dataset']}: {result['questions']} questions, {result['turns']} turns\n\n"
            f"Model `{result['model']}`.\n\n| mode | {head} | p50 ms |\n|---|---|---|---|---|\n{rows}\n")


@flow(name="evaluate-locomo")
def evaluate_locomo(request: LocomoEvalRequest) -> dict:
    """Evidence recall@5/10/25 of vector, keyword and hybrid search on LoCoMo conversations."""
    result = run_locomo_eval(Path(request.path), Settings(), request.tenant)
    create_markdown_artifact(key="locomo-evaluation", markdown=markdown(result),
                             description="Evidence-turn recall on LoCoMo conversations.")
    get_run_logger().info("LoCoMo %s: %s", result["dataset"],
                          ", ".join(f"{m} recall@10 {v['all']['recall@10']:.1f}" for m, v in result["modes"].items()))
    return result
