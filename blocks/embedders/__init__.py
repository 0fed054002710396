"""Embedders: one interface, one block per provider, chosen by name or block slug."""

from __future__ import annotations

import re

from blocks.embedders.base import Embedder, EmbedderBlock
from blocks.errors import ConfigError

__all__ = ["Embedder", "EmbedderBlock", "check_embedding_model", "load_embedder", "register_embedder"]

_cache: dict[str, Embedder] = {}
# claude-..., anthropic/..., anthropic.claude-... and Bedrock's regional profiles such as us.anthropic.claude-...
_ANTHROPIC = re.compile(r"^(?:[a-z]+\.)?(?:claude|anthropic[./:])", re.IGNORECASE)


def check_embedding_model(name: str) -> str:
    """`name`, or ConfigError when it names a model that cannot embed (Anthropic's)."""
    if _ANTHROPIC.match(name.strip()):
        raise ConfigError(
            f"Anthropic has no embeddings API (model {name!r}); use Voyage AI (Anthropic's recommended embedding "
            "provider: voyage-3.5), OpenAI, Bedrock or the local model"
        )
    return name


def load_embedder(name: str) -> Embedder:
    """'local' is the in-process MiniLM; anything else is a block slug such as 'openai-embedder/prod'."""
    if name in _cache:
        return _cache[name]
    check_embedding_model(name)
    if name == "local":
        from blocks.embedders.local import LocalEmbedder

        embedder: Embedder = LocalEmbedder()
    elif "/" in name:
        from prefect.blocks.core import Block

        try:
            embedder = Block.load(name)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"unknown embedder block {name!r}: {exc}") from exc
        if not isinstance(embedder, Embedder):
            raise ConfigError(f"block {name!r} is a {type(embedder).__name__}, not an embedder")
    else:
        raise ConfigError(f"unknown embedder {name!r}: use 'local' or a block slug like 'openai-embedder/prod'")
    _cache[name] = embedder
    return embedder


def loaded_embedder(name: str) -> Embedder | None:
    """The embedder `name` if this process has loaded it already, else None (nothing is loaded)."""
    return _cache.get(name)


def register_embedder(name: str, embedder: Embedder) -> None:
    """Make an embedder instance loadable by `name` in this process (custom providers, tests)."""
    if not isinstance(embedder, Embedder):
        raise ConfigError(f"{type(embedder).__name__} does not implement the Embedder interface")
    _cache[name] = embedder
