"""The one small interface every embedder implements, and the Prefect block base they share."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from prefect.blocks.core import Block

__all__ = ["Embedder", "EmbedderBlock"]


@runtime_checkable
class Embedder(Protocol):
    """model id, dimensions, max batch, and embed(texts) -> (n, dimensions) float32, L2-normalised."""

    model_id: str
    dimensions: int
    max_batch: int

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


class EmbedderBlock(Block):
    """Base of embedder blocks: subclasses set the model and implement `embed` and `count_tokens`."""

    _block_schema_capabilities: ClassVar[list[str]] = ["embed"]

    @property
    def model_id(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def dimensions(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def max_batch(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def embed(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:  # pragma: no cover - overridden
        raise NotImplementedError
