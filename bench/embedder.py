"""Throughput of the local embedder on chunk-sized texts (called by the benchmark runner)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from blocks.embedders.local import LocalEmbedder

__all__ = ["measure_throughput"]

_ROOT = Path(__file__).resolve().parents[1]
_SOURCE_DIRS = ("blocks", "tasks", "flows", "deployments", "bench", "tests")


def _source_words() -> list[str]:
    """Words of the repository's README, docs and Python files, in a fixed order."""
    files = [_ROOT / "README.md", *sorted((_ROOT / "docs").rglob("*.md"))]
    for folder in _SOURCE_DIRS:
        files += sorted((_ROOT / folder).rglob("*.py"))
    words: list[str] = []
    for path in files:
        if path.is_file():
            words += path.read_text(encoding="utf-8", errors="replace").split()
    return words


def _sentence_words(n: int) -> list[str]:
    """Deterministic English-like filler when the repository has too little text."""
    rng = random.Random(0)
    vocab = (
        "the agent stores context documents chunks embeddings in postgres and recalls them by meaning "
        "a deploy rolls back when the health check fails while the operator approves the plan "
        "kubernetes scales replicas github issues carry labels webhooks trigger flow runs"
    ).split()
    return [rng.choice(vocab) + ("." if rng.random() < 0.08 else "") for _ in range(n)]


def _chunks(embedder: LocalEmbedder, n_chunks: int, tokens: int) -> list[str]:
    words = _source_words()
    if sum(embedder.count_tokens(w) for w in words[:5000]) < tokens * 10:
        words = _sentence_words(tokens * 20)
    chunks: list[str] = []
    i = 0
    while len(chunks) < n_chunks:
        # BERT pre-tokenisation splits on whitespace first, so token counts of words add up exactly.
        chunk, count = [], 0
        while count < tokens:
            word = words[i % len(words)]
            count += embedder.count_tokens(word)
            chunk.append(word)
            i += 1
        chunks.append(" ".join(chunk))
    return chunks


def measure_throughput(n_chunks: int = 200, tokens: int = 200, *, embedder: LocalEmbedder | None = None) -> dict:
    """Embed `n_chunks` texts of about `tokens` tokens with a warm LocalEmbedder; report chunks per second."""
    embedder = embedder or LocalEmbedder()
    texts = _chunks(embedder, n_chunks, tokens)
    embedder.embed(texts[: min(len(texts), 8)])  # load, verify and warm up the session
    start = time.perf_counter()
    embedder.embed(texts)
    seconds = time.perf_counter() - start
    return {
        "chunks": n_chunks,
        "seconds": round(seconds, 3),
        "chunks_per_s": round(n_chunks / seconds, 2),
        "tokens_per_chunk": round(sum(embedder.count_tokens(t) for t in texts) / n_chunks, 1),
    }
