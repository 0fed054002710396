"""Base of the hosted embedders: requests cut by count and tokens, retried, checked, normalised and metered."""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, NamedTuple

import numpy as np
from pydantic import Field, PrivateAttr

from blocks import tracing
from blocks.embedders.base import EmbedderBlock
from blocks.embedders.pricing import Usage
from blocks.redact import register_secrets, secret_values
from blocks.retry import MalformedResponse, call_with_retries

__all__ = ["HostedEmbedder", "Reply", "estimate_tokens", "fingerprint", "clear_clients", "collect_usage"]

_LOCK = threading.Lock()
# One client per distinct configuration and process: a client costs ~0.1-0.2 s to build and holds the
# keep-alive connections (one TLS handshake, not one per call). Blocks stay picklable: no client inside.
_CLIENTS: dict[tuple, Any] = {}
_COLLECTORS: ContextVar[tuple[list[Usage], ...]] = ContextVar("devmesh_usage_collectors", default=())
USAGE_BUFFER = 10_000  # records an undrained block keeps (a long-lived block on the search path is never drained)


class Reply(NamedTuple):
    """One request's vectors in input order, and the tokens the provider counted (None: not reported)."""

    vectors: Sequence[Sequence[float]]
    tokens: int | None


def estimate_tokens(text: str) -> int:
    """A deliberate over-estimate of a text's tokens: UTF-8 bytes / 3."""
    # No vendor tokenizer is a dependency. Vendors quote ~4 characters per English token (OpenAI, Cohere docs);
    # bytes/3 over-counts English by ~1.4x and CJK (3 bytes, ~1 token per character) barely, so budgets hold.
    return len(text.encode("utf-8")) // 3 + 1


def fingerprint(secret: str) -> str:
    """A short digest that tells keys apart in a cache key without holding the key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


@contextmanager
def collect_usage() -> Iterator[list[Usage]]:
    """Collect the Usage of every hosted embed call made in this context, including Prefect tasks it submits."""
    # A ContextVar, not the block: one cached block serves every tenant of the process, and Prefect's
    # ThreadPoolTaskRunner runs tasks in a copy of the submitting context, so the list is shared with them.
    usages: list[Usage] = []
    token = _COLLECTORS.set((*_COLLECTORS.get(), usages))
    try:
        yield usages
    finally:
        _COLLECTORS.reset(token)


def clear_clients() -> None:
    """Close and forget every cached provider client of this process (tests, credential rotation)."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        close = getattr(client, "close", None)
        if callable(close):
            close()


class HostedEmbedder(EmbedderBlock, ABC):
    """Shared behaviour of the blocks that call a vendor's embedding API."""

    provider: ClassVar[str]

    timeout: float = Field(default=60.0, gt=0, le=600, description="Seconds to wait for one HTTP request.")
    max_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries of a rate-limited, timed-out or 5xx request (Retry-After or backoff with jitter); "
        "4xx errors are never retried.",
    )

    _usage: deque[Usage] = PrivateAttr(default_factory=lambda: deque(maxlen=USAGE_BUFFER))

    @property
    @abstractmethod
    def max_request_tokens(self) -> int:
        """The provider's limit of tokens summed over one request."""

    @abstractmethod
    def _client_key(self) -> tuple:
        """What distinguishes this block's client from another's (secrets only as fingerprints)."""

    @abstractmethod
    def _new_client(self) -> Any:
        """A vendor client with its own retries off: retries happen once, in call_with_retries."""

    @abstractmethod
    def _request(self, client: Any, texts: list[str], query: bool) -> Reply:
        """One API call; raises errors of blocks.errors (vendor errors mapped at this edge)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimensions) float32, L2-normalised, embedded as documents."""
        return self._embed(list(texts), query=False)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Like embed, with the provider's query input type where it has one (Cohere, Voyage)."""
        return self._embed(list(texts), query=True)

    def count_tokens(self, text: str) -> int:
        """An over-estimate of the provider's token count (no vendor tokenizer is installed)."""
        return estimate_tokens(text)

    def drain_usage(self) -> list[Usage]:
        """The usage records of this block's calls since the last drain (at most the last 10,000); thread-safe."""
        with _LOCK:
            usage = list(self._usage)
            self._usage.clear()
        return usage

    def _record(self, tokens: int | None, texts: list[str]) -> None:
        estimated = tokens is None
        if tokens is None:
            tokens = sum(estimate_tokens(t) for t in texts)
        usage = Usage.of(self.provider, self.model, int(tokens), len(texts), estimated=estimated)
        tracing.set_attributes(tokens=int(tokens), tokens_estimated=estimated)  # on the request's "embed" span
        with _LOCK:
            self._usage.append(usage)
            for collector in _COLLECTORS.get():
                collector.append(usage)

    def _client(self) -> Any:
        key = (type(self).__qualname__, *self._client_key())
        with _LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                register_secrets(secret_values(self))  # client libraries log request headers at DEBUG
                client = _CLIENTS[key] = self._new_client()
        return client

    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        client = self._client()
        out = []
        for batch in self._batches(texts):
            with tracing.span("embed", provider=self.provider, model=self.model, texts=len(batch), query=query):
                out.append(self._send(client, batch, query))
        return np.concatenate(out)

    def _send(self, client: Any, texts: list[str], query: bool) -> np.ndarray:
        """One request through the retry loop, checked and recorded; Titan overrides it to fan out."""
        reply = call_with_retries(lambda: self._request(client, texts, query), max_retries=self.max_retries,
                                  what=f"{self.provider} {self.model} request")
        self._record(reply.tokens, texts)  # a 2xx is billed even when its body turns out unusable
        return self._checked(reply.vectors, len(texts))

    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        """Consecutive runs of at most max_batch texts and max_request_tokens estimated tokens."""
        batch: list[str] = []
        budget = 0
        for text in texts:
            tokens = estimate_tokens(text)
            if batch and (len(batch) >= self.max_batch or budget + tokens > self.max_request_tokens):
                yield batch
                batch, budget = [], 0
            batch.append(text)
            budget += tokens
        if batch:
            yield batch

    def _checked(self, vectors: Sequence[Sequence[float]], n: int) -> np.ndarray:
        """(n, dimensions) float32 L2-normalised, or MalformedResponse saying what was wrong."""
        fail = lambda message: MalformedResponse(message, provider=self.provider, operation="embed")  # noqa: E731
        if len(vectors) != n:
            raise fail(f"returned {len(vectors)} vectors for {n} texts")
        for row in vectors:
            size = len(row) if isinstance(row, (Sequence, np.ndarray)) and not isinstance(row, str) else None
            if size is None:
                raise fail(f"a vector is a {type(row).__name__}, not a list of numbers")
            if size != self.dimensions:
                raise fail(f"expected {self.dimensions} dimensions, got {size}")
        try:
            out = np.asarray(vectors, dtype=np.float32).reshape(n, self.dimensions)
        except (TypeError, ValueError) as exc:
            raise fail(f"vectors are not numbers ({type(exc).__name__})") from exc
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or not np.all(norms > 0):
            raise fail("returned a zero, NaN or infinite vector")
        return out / norms
