"""A fake bedrock-runtime InvokeModel for Titan Text Embeddings v2 and Cohere Embed v3, driven by real boto3.

Path and error shape follow botocore's bedrock-runtime model (rest-json): POST /model/{modelId}/invoke; errors
carry the `x-amzn-ErrorType` header and a {"message": ...} body. moto 5.2.5 has invoke_model, but it answers `{}`
to every model, so it cannot stand in for an embedding model.
"""

from __future__ import annotations

import uuid
from urllib.parse import unquote

from tests.fakes.server import FakeAPI, Fault, Response, Seen, json_response, vector

__all__ = ["FakeBedrock"]

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = {"cohere.embed-english-v3", "cohere.embed-multilingual-v3"}
CODES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
         408: "ModelTimeoutException", 429: "ThrottlingException", 500: "InternalServerException",
         503: "ServiceUnavailableException"}


class FakeBedrock(FakeAPI):
    """Checks SigV4 signing is present, Titan's dimensions and Cohere's 96-text limit."""

    cohere_scale = 2.5  # Cohere's vectors are not unit length here, so the client must normalise them

    def __init__(self, token_header: bool = False) -> None:
        super().__init__()
        self.token_header = token_header  # send x-amzn-bedrock-input-token-count, as Bedrock does for some models

    def error(self, fault: Fault) -> Response:
        code = fault.code or CODES.get(fault.status, "InternalServerException")
        headers = {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/", **fault.headers}
        return json_response(fault.status, {"message": fault.message}, headers)

    def model_of(self, seen: Seen) -> str:
        return unquote(seen.path.removeprefix("/model/").removesuffix("/invoke"))

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        if not (seen.path.startswith("/model/") and seen.path.endswith("/invoke")):
            return self.error(Fault.error(404, "Unknown operation"))
        if not seen.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 Credential="):
            return self.error(Fault.error(403, "Missing Authentication Token", code="UnrecognizedClientException"))
        model, body = self.model_of(seen), seen.body
        wrong = fault.dims if fault and fault.kind == "wrong_dim" else None
        if model == TITAN:
            dims = body.get("dimensions", 1024)
            if dims not in (256, 512, 1024) or not isinstance(body.get("inputText"), str):
                return self.error(Fault.error(400, "Malformed input request, please reformat your input."))
            payload = {"embedding": vector(body["inputText"], wrong or dims),
                       "inputTextTokenCount": len(body["inputText"].split())}
            payload["embeddingsByType"] = {"float": payload["embedding"]}
            if fault and fault.kind in ("missing", "fewer"):
                del payload["embedding"]
            return json_response(200, payload)
        if model in COHERE:
            texts = body.get("texts")
            if not isinstance(texts, list) or len(texts) > 96 or body.get("input_type") not in (
                    "search_document", "search_query", "classification", "clustering"):
                return self.error(Fault.error(400, "Malformed input request: #/texts: expected maxItems: 96"))
            rows = [vector(text, wrong or 1024, self.cohere_scale) for text in texts]
            if fault and fault.kind == "fewer":
                rows = rows[:-1]
            payload = {"embeddings": rows, "id": str(uuid.uuid4()), "response_type": "embeddings_floats",
                       "texts": texts}
            if fault and fault.kind == "missing":
                del payload["embeddings"]
            count = {"X-Amzn-Bedrock-Input-Token-Count": str(sum(len(t.split()) for t in texts))}
            return json_response(200, payload, count if self.token_header else None)
        return self.error(Fault.error(400, "The provided model identifier is invalid."))
