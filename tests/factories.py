"""Test factories: a deterministic fake embedder and small documents."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from blocks.embedders.base import EmbedderBlock

_WORD = re.compile(r"\w+")


class FakeEmbedder(EmbedderBlock):
    """Bag-of-words hashed into 64 dimensions: texts sharing words get similar vectors; counts its calls."""

    _block_type_name = "Fake Embedder"
    dims: int = 64
    model_name: str = "fake-words-64"
    batch: int = 16

    @property
    def model_id(self) -> str:
        return self.model_name

    @property
    def dimensions(self) -> int:
        return self.dims

    @property
    def max_batch(self) -> int:
        return self.batch

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dims] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            out[i] = out[i] / norm if norm else np.eye(self.dims, dtype=np.float32)[0]
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def paragraphs(n: int, topic: str = "deploy") -> str:
    """A text of n distinct paragraphs."""
    return "\n\n".join(
        f"Paragraph {i} about {topic}: the service {topic}-{i} runs on node {i * 7 % 13} and logs to bucket b{i}."
        for i in range(n)
    )
