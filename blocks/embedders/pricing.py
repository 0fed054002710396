"""List prices of the hosted embedding models and the usage record each embed call produces."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from blocks.errors import ConfigError

__all__ = ["PRICES_PER_MTOK", "Usage", "cost_usd"]

# USD per 1M input tokens: the vendors' public list prices as of 2025-06 (openai.com/api/pricing,
# aws.amazon.com/bedrock/pricing on-demand us-east-1, docs.voyageai.com/docs/pricing). Negotiated, batch-API,
# regional and free-tier prices differ: this is an estimate for budgets and reports, not an invoice.
PRICES_PER_MTOK: dict[str, Decimal] = {
    "text-embedding-3-small": Decimal("0.02"),
    "text-embedding-3-large": Decimal("0.13"),
    "text-embedding-ada-002": Decimal("0.10"),
    "amazon.titan-embed-text-v2:0": Decimal("0.02"),
    "cohere.embed-english-v3": Decimal("0.10"),
    "cohere.embed-multilingual-v3": Decimal("0.10"),
    "voyage-3.5": Decimal("0.06"),
    "voyage-3.5-lite": Decimal("0.02"),
    "voyage-code-3": Decimal("0.18"),
}


def cost_usd(model: str, tokens: int) -> Decimal:
    """List-price cost of `tokens` input tokens of `model`."""
    try:
        price = PRICES_PER_MTOK[model]
    except KeyError:
        raise ConfigError(f"no list price for embedding model {model!r}: add it to PRICES_PER_MTOK") from None
    return price * tokens / 1_000_000


@dataclass(frozen=True)
class Usage:
    """What one embed request consumed; `estimated` when the provider reported no token count."""

    provider: str
    model: str
    tokens: int
    texts: int
    cost_usd: Decimal
    estimated: bool = False
    calls: int = 1

    @classmethod
    def of(cls, provider: str, model: str, tokens: int, texts: int, *, estimated: bool = False) -> Usage:
        """A record priced from the list-price table."""
        return cls(provider, model, tokens, texts, cost_usd(model, tokens), estimated)
