"""Voyage AI embeddings (voyage-3.5, voyage-3.5-lite, voyage-code-3) over plain HTTP with httpx."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from blocks.embedders.hosted import HostedEmbedder, Reply, fingerprint
from blocks.retry import MalformedResponse, error_for_status, scrub
from blocks.vendor_errors import map_httpx_errors

__all__ = ["VoyageEmbedder"]

PROVIDER = "voyage"
DEFAULT_DIMENSIONS = 1024
# docs.voyageai.com/reference/embeddings-api: at most 1,000 texts per request, and at most 1M tokens summed over
# the request for voyage-3.5-lite, 320K for voyage-3.5, 120K for voyage-code-3.
MAX_INPUTS = 1000
MAX_REQUEST_TOKENS = {"voyage-3.5-lite": 1_000_000, "voyage-3.5": 320_000, "voyage-code-3": 120_000}


def _detail(response: Any) -> str:
    """Voyage's error text: the body's `detail` (docs.voyageai.com/docs/error-codes), else the raw body."""
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text or response.reason_phrase


class VoyageEmbedder(HostedEmbedder):
    """Voyage AI's embeddings API, the embedding provider Anthropic recommends.

    Args:
        api_key: The Voyage API key.
        model: voyage-3.5, voyage-3.5-lite or voyage-code-3 (1024 dimensions by default).
        output_dimensions: 256, 512, 1024 or 2048 (the API's `output_dimension`).
        base_url: Another endpoint speaking the same API.

    Example:
        Embed two texts with a stored block:
        ```python
        from blocks.embedders.voyage import VoyageEmbedder

        embedder = VoyageEmbedder.load("BLOCK_NAME")
        vectors = embedder.embed(["first text", "second text"])
        ```
    """

    _block_type_name: ClassVar[str] = "Voyage Embedder"
    _documentation_url: ClassVar[str] = "https://docs.voyageai.com/reference/embeddings-api"
    provider: ClassVar[str] = PROVIDER

    api_key: SecretStr = Field(description="The Voyage API key (sent as a Bearer token).")
    model: Literal["voyage-3.5", "voyage-3.5-lite", "voyage-code-3"] = Field(
        default="voyage-3.5", description="The embedding model."
    )
    output_dimensions: Literal[256, 512, 1024, 2048] | None = Field(
        default=None, description="The API's `output_dimension`. Unset: the model's default, 1024."
    )
    base_url: str = Field(
        default="https://api.voyageai.com", description="Base URL; requests go to {base_url}/v1/embeddings."
    )

    @property
    def dimensions(self) -> int:
        return self.output_dimensions or DEFAULT_DIMENSIONS

    @property
    def model_id(self) -> str:
        suffix = "" if self.dimensions == DEFAULT_DIMENSIONS else f"@{self.dimensions}"
        return f"voyage/{self.model}{suffix}"

    @property
    def max_batch(self) -> int:
        return MAX_INPUTS

    @property
    def max_request_tokens(self) -> int:
        return MAX_REQUEST_TOKENS[self.model]

    def _client_key(self) -> tuple:
        return fingerprint(self.api_key.get_secret_value()), self.base_url, self.timeout

    def _new_client(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.base_url.rstrip("/"), timeout=self.timeout)

    def _request(self, client: Any, texts: list[str], query: bool) -> Reply:
        body: dict[str, Any] = {"input": texts, "model": self.model, "input_type": "query" if query else "document"}
        if self.output_dimensions is not None:
            body["output_dimension"] = self.output_dimensions
        secret = self.api_key.get_secret_value()
        with map_httpx_errors("embed", provider=PROVIDER, secrets=[secret]):
            response = client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {secret}"})
        if response.status_code >= 300:
            message = scrub(_detail(response), secret)
            raise error_for_status(response.status_code, message, provider=PROVIDER, headers=response.headers)
        try:
            payload = response.json()
        except ValueError as exc:
            raise MalformedResponse("response body is not JSON", provider=PROVIDER, operation="embed") from exc
        try:
            rows = sorted(payload["data"], key=lambda row: row["index"])
            return Reply([row["embedding"] for row in rows], int(payload["usage"]["total_tokens"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponse(
                f"unusable response ({type(exc).__name__}: {scrub(exc, secret, limit=60)}); expected "
                "data[].embedding, data[].index and usage.total_tokens", provider=PROVIDER, operation="embed",
            ) from exc
