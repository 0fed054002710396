"""OpenAI embeddings (text-embedding-3-small/-large, ada-002) through the official SDK."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from blocks.embedders.hosted import HostedEmbedder, Reply, fingerprint
from blocks.vendor_errors import map_sdk_errors

__all__ = ["OpenAIEmbedder"]

NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
# platform.openai.com/docs/api-reference/embeddings/create: at most 2048 inputs and 300,000 tokens summed over
# one request, 8192 tokens per input (chunks are far smaller; a longer one gets a 400, never retried).
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
PROVIDER = "openai"


class OpenAIEmbedder(HostedEmbedder):
    """OpenAI's embeddings API, or a compatible endpoint (Azure OpenAI's v1 API, a proxy).

    Args:
        api_key: The OpenAI API key.
        model: text-embedding-3-small (1536 d), text-embedding-3-large (3072 d) or text-embedding-ada-002 (1536 d).
        output_dimensions: Shorter vectors from a text-embedding-3 model (the API's `dimensions`).
        base_url: Another endpoint speaking the same API.

    Example:
        Embed two texts with a stored block:
        ```python
        from blocks.embedders.openai import OpenAIEmbedder

        embedder = OpenAIEmbedder.load("BLOCK_NAME")
        vectors = embedder.embed(["first text", "second text"])
        ```
    """

    _block_type_name: ClassVar[str] = "OpenAI Embedder"
    _documentation_url: ClassVar[str] = "https://platform.openai.com/docs/guides/embeddings"
    provider: ClassVar[str] = PROVIDER

    api_key: SecretStr = Field(description="The OpenAI API key (sent as a Bearer token).")
    model: Literal["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"] = Field(
        default="text-embedding-3-small", description="The embedding model."
    )
    output_dimensions: int | None = Field(
        default=None,
        ge=1,
        description="The API's `dimensions` option: shorter vectors from a text-embedding-3 model "
        "(at most 1536 for -small, 3072 for -large). Unset: the model's native size.",
    )
    base_url: str | None = Field(
        default=None, description="Base URL of a compatible API, e.g. 'https://example.test/v1'. Unset: OpenAI's."
    )

    @model_validator(mode="after")
    def _dimensions_fit_the_model(self) -> OpenAIEmbedder:
        native = NATIVE_DIMENSIONS[self.model]
        if self.output_dimensions is not None:
            if self.model == "text-embedding-ada-002":
                raise ValueError("text-embedding-ada-002 has a fixed 1536 dimensions: leave output_dimensions unset")
            if self.output_dimensions > native:
                raise ValueError(f"output_dimensions {self.output_dimensions} exceeds {self.model}'s {native}")
        return self

    @property
    def dimensions(self) -> int:
        return self.output_dimensions or NATIVE_DIMENSIONS[self.model]

    @property
    def model_id(self) -> str:
        native = self.dimensions == NATIVE_DIMENSIONS[self.model]
        return f"openai/{self.model}" if native else f"openai/{self.model}@{self.dimensions}"

    @property
    def max_batch(self) -> int:
        return MAX_INPUTS

    @property
    def max_request_tokens(self) -> int:
        return MAX_REQUEST_TOKENS

    def _client_key(self) -> tuple:
        return fingerprint(self.api_key.get_secret_value()), self.base_url, self.timeout

    def _new_client(self) -> Any:
        import openai

        return openai.OpenAI(
            api_key=self.api_key.get_secret_value(), base_url=self.base_url, timeout=self.timeout, max_retries=0
        )

    def _request(self, client: Any, texts: list[str], query: bool) -> Reply:
        options: dict[str, Any] = {"input": texts, "model": self.model}
        if self.output_dimensions is not None:
            options["dimensions"] = self.output_dimensions
        import openai

        with map_sdk_errors(openai, "embed", provider=PROVIDER, secrets=[self.api_key.get_secret_value()]):
            # The SDK asks for base64 (4 bytes a float instead of ~20 of JSON text) and decodes it.
            response = client.embeddings.create(**options)
            rows = sorted(response.data, key=lambda row: row.index)
            return Reply([row.embedding for row in rows], int(response.usage.prompt_tokens))
