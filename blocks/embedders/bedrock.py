"""AWS Bedrock embeddings (Titan Text Embeddings v2, Cohere Embed v3) through boto3's bedrock-runtime."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from prefect_aws import AwsCredentials
from pydantic import Field, model_validator

from blocks.embedders.hosted import HostedEmbedder, Reply
from blocks.retry import MalformedResponse, call_with_retries
from blocks.vendor_errors import map_aws_errors

__all__ = ["BedrockEmbedder"]

PROVIDER = "bedrock"
TITAN = "amazon.titan-embed-text-v2:0"
# docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html: one inputText per call
# (8,192 tokens), dimensions 1024 (default), 512 or 256. model-parameters-embed.html (Cohere): 1024 dimensions,
# at most 96 texts per call, 2,048 characters per text; 512 tokens recommended.
TITAN_GROUP = 128  # texts per embed() call, each sent as its own InvokeModel
COHERE_MAX_TEXTS = 96
class BedrockEmbedder(HostedEmbedder):
    """Embeddings from AWS Bedrock: Amazon Titan Text Embeddings v2 or Cohere Embed v3.

    Titan takes one text per InvokeModel call, so a batch fans out over a bounded thread pool
    (botocore clients are thread-safe; the pool keeps order and caps concurrent calls at max_workers).

    Args:
        aws_credentials: AWS credentials (the prefect-aws block).
        model: amazon.titan-embed-text-v2:0, cohere.embed-english-v3 or cohere.embed-multilingual-v3.
        output_dimensions: Titan only: 256, 512 or 1024.
        region: AWS region of the Bedrock endpoint.

    Example:
        Embed two texts with a stored block:
        ```python
        from blocks.embedders.bedrock import BedrockEmbedder

        embedder = BedrockEmbedder.load("BLOCK_NAME")
        vectors = embedder.embed(["first text", "second text"])
        ```
    """

    _block_type_name: ClassVar[str] = "Bedrock Embedder"
    _documentation_url: ClassVar[str] = "https://docs.aws.amazon.com/bedrock/latest/userguide/embeddings.html"
    provider: ClassVar[str] = PROVIDER

    aws_credentials: AwsCredentials = Field(
        default_factory=AwsCredentials, description="AWS credentials; default: boto3's credential chain."
    )
    model: Literal["amazon.titan-embed-text-v2:0", "cohere.embed-english-v3", "cohere.embed-multilingual-v3"] = Field(
        default=TITAN, description="The Bedrock model id."
    )
    output_dimensions: Literal[256, 512, 1024] | None = Field(
        default=None, description="Titan v2 only: 256, 512 or 1024 (the request's `dimensions`). Unset: 1024."
    )
    region: str | None = Field(default=None, description="AWS region; default: the credentials' region.")
    endpoint_url: str | None = Field(
        default=None, description="Another bedrock-runtime endpoint (a VPC endpoint, a test fake)."
    )
    truncate: Literal["NONE", "START", "END"] = Field(
        default="END", description="Cohere only: what to cut from a text over the model's limit (NONE: fail)."
    )
    max_workers: int = Field(default=8, ge=1, le=64, description="Titan only: concurrent InvokeModel calls.")

    @model_validator(mode="after")
    def _dimensions_fit_the_model(self) -> BedrockEmbedder:
        if self.model != TITAN and self.output_dimensions not in (None, 1024):
            raise ValueError(f"{self.model} has a fixed 1024 dimensions: leave output_dimensions unset")
        return self

    @property
    def dimensions(self) -> int:
        return self.output_dimensions or 1024

    @property
    def model_id(self) -> str:
        return f"bedrock/{self.model}" if self.dimensions == 1024 else f"bedrock/{self.model}@{self.dimensions}"

    @property
    def max_batch(self) -> int:
        return TITAN_GROUP if self.model == TITAN else COHERE_MAX_TEXTS

    @property
    def max_request_tokens(self) -> int:
        # Neither model limits tokens summed over a call, only per text (and Titan sends one text a call).
        return 10**9

    def _client_key(self) -> tuple:
        # AwsCredentials.__hash__ covers every field, secrets included, without exposing them.
        return hash(self.aws_credentials), self.region, self.endpoint_url, self.timeout, self.max_workers

    def _new_client(self) -> Any:
        from botocore.config import Config

        # total_max_attempts=1: botocore's retries off, ours run once in call_with_retries.
        config = Config(connect_timeout=self.timeout, read_timeout=self.timeout, retries={"total_max_attempts": 1},
                        max_pool_connections=max(10, self.max_workers))
        return self.aws_credentials.get_boto3_session().client(
            "bedrock-runtime", region_name=self.region or self.aws_credentials.region_name,
            endpoint_url=self.endpoint_url or self.aws_credentials.aws_client_parameters.endpoint_url, config=config,
        )

    def _send(self, client: Any, texts: list[str], query: bool) -> Any:
        if self.model != TITAN:
            return super()._send(client, texts, query)

        def one(text: str) -> Reply:
            return call_with_retries(lambda: self._request(client, [text], query), max_retries=self.max_retries,
                                     what=f"{PROVIDER} {self.model} request")

        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(texts)), thread_name_prefix="titan") as pool:
            futures = [pool.submit(one, text) for text in texts]
            try:
                replies = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        counts = [reply.tokens for reply in replies]
        self._record(None if None in counts else sum(counts), texts)
        return self._checked([row for reply in replies for row in reply.vectors], len(texts))

    def _request(self, client: Any, texts: list[str], query: bool) -> Reply:
        if self.model == TITAN:
            body: dict[str, Any] = {"inputText": texts[0], "dimensions": self.dimensions, "normalize": True}
        else:
            body = {"texts": texts, "input_type": "search_query" if query else "search_document",
                    "truncate": self.truncate}
        secret = self.aws_credentials.aws_secret_access_key
        secrets = (secret.get_secret_value() if secret else None, self.aws_credentials.aws_session_token)
        with map_aws_errors("embed", provider=PROVIDER, secrets=secrets):
            response = client.invoke_model(modelId=self.model, body=json.dumps(body),
                                           contentType="application/json", accept="application/json")
            raw = response["body"].read()
        try:
            payload = json.loads(raw)
            if self.model == TITAN:
                return Reply([payload["embedding"]], int(payload["inputTextTokenCount"]))
            # Cohere's body has no token count; Bedrock's response header has one when it sends it.
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            count = headers.get("x-amzn-bedrock-input-token-count")
            return Reply(payload["embeddings"], int(count) if count is not None else None)
        except ValueError as exc:
            raise MalformedResponse(f"response body is not usable JSON ({exc})"[:200], provider=PROVIDER,
                                    operation="embed") from exc
        except (KeyError, TypeError) as exc:
            expected = "embedding, inputTextTokenCount" if self.model == TITAN else "embeddings, id, response_type"
            raise MalformedResponse(f"response lacks {exc} (expected {expected})", provider=PROVIDER,
                                    operation="embed") from exc
