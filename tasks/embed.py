"""Embed texts in batches through any Embedder, checking what comes back."""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from blocks.embedders.base import Embedder
from blocks.errors import InputError, ProviderError, is_transient

__all__ = ["embed_texts", "embed_batch", "embed_query", "embed_search_query", "check_texts", "EmbedStats"]


class EmbedStats:
    """Counts calls and texts per process: the benchmark and tests read them."""

    calls = 0
    texts = 0

    @classmethod
    def reset(cls) -> None:
        cls.calls = cls.texts = 0


def embed_texts(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """(len(texts), dimensions) float32 vectors, in calls of at most embedder.max_batch texts."""
    return _embed_checked(embedder.embed, embedder, texts)


def _embed_checked(embed, embedder: Embedder, texts: list[str]) -> np.ndarray:
    out = np.empty((len(texts), embedder.dimensions), dtype=np.float32)
    for start in range(0, len(texts), embedder.max_batch):
        batch = texts[start : start + embedder.max_batch]
        vectors = np.asarray(embed(batch), dtype=np.float32)
        EmbedStats.calls += 1
        EmbedStats.texts += len(batch)
        if vectors.shape != (len(batch), embedder.dimensions):
            raise ProviderError(
                f"expected {len(batch)} vectors of {embedder.dimensions} dimensions, got shape {vectors.shape}",
                provider=embedder.model_id, operation="embed",
            )
        if not np.all(np.isfinite(vectors)):
            raise ProviderError("returned NaN or infinite values", provider=embedder.model_id, operation="embed")
        out[start : start + len(batch)] = vectors
    return out


def check_texts(texts: list[str]) -> None:
    """Refuse texts no embedder should see."""
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise InputError("empty text", item=f"text {i}")
        if "\x00" in text:
            raise InputError("text contains a NUL byte", item=f"text {i}")


@task(
    # Provider blocks already retry transient errors (honouring Retry-After); the task retries once more, later,
    # for an outage longer than that.
    name="embed-batch", task_run_name="embed-{label}", retries=1, retry_delay_seconds=30,
    retry_condition_fn=is_transient, cache_policy=NONE,
)
def embed_batch(embedder: Embedder, texts: list[str], label: str = "batch") -> np.ndarray:
    """Embed one batch of chunk texts (hundreds per task run, never one each)."""
    check_texts(texts)
    return embed_texts(embedder, texts)


_query_cache: dict[tuple[str, str], np.ndarray] = {}


def embed_query(embedder: Embedder, text: str) -> np.ndarray:
    """One query vector, memoised per process (agents repeat queries; the local model costs ~30 ms each)."""
    key = (embedder.model_id, text)
    vector = _query_cache.get(key)
    if vector is None:
        # Providers that embed queries differently from documents (Voyage, Cohere) expose embed_queries.
        vector = _embed_checked(getattr(embedder, "embed_queries", embedder.embed), embedder, [text])[0]
        if len(_query_cache) >= 1024:
            _query_cache.pop(next(iter(_query_cache)))
        _query_cache[key] = vector
    return vector


# Query embeddings started ahead of the search that needs them (stdlib's default size: the local model runs with
# the GIL released, a hosted one waits on its provider).
_ahead = ThreadPoolExecutor(thread_name_prefix="devmesh-query-embed")


def embed_search_query(embedder: Embedder, text: str, mode: str) -> np.ndarray | Future:
    """The query vector a search in `mode` needs: a hybrid search gets a Future of it unless it is memoised, and the
    query embeds on a worker thread while the keyword ranking runs (tasks.search.run_search takes either); a vector
    search gets it now. The worker runs in a copy of the caller's context: ContextVars (hosted usage collectors,
    Prefect's run context for logs) follow the call."""
    vector = _query_cache.get((embedder.model_id, text))
    if vector is not None or mode != "hybrid":
        return vector if vector is not None else embed_query(embedder, text)
    return _ahead.submit(contextvars.copy_context().run, embed_query, embedder, text)
