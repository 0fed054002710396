"""A fake OpenAI embeddings API: POST /v1/embeddings, as in platform.openai.com/docs/api-reference/embeddings."""

from __future__ import annotations

import base64

import numpy as np

from tests.fakes.server import FakeAPI, Fault, Response, Seen, json_response, vector

__all__ = ["FakeOpenAI"]

NATIVE = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          429: "requests", 500: "server_error", 503: "server_error"}


class FakeOpenAI(FakeAPI):
    """Checks the Bearer key, the 2048-input limit and `dimensions`; answers floats or base64 as asked."""

    def __init__(self, api_key: str = "sk-test") -> None:
        super().__init__()
        self.api_key = self.expected_key = api_key

    def reset(self) -> None:
        super().reset()
        self.api_key = self.expected_key

    def error(self, fault: Fault) -> Response:
        body = {"error": {"message": fault.message, "type": _TYPES.get(fault.status, "api_error"), "param": None,
                          "code": fault.code}}
        return json_response(fault.status, body, fault.headers)

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        if not seen.path.endswith("/embeddings"):
            return self.error(Fault.error(404, f"Invalid URL (POST {seen.path})"))
        key = seen.headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.api_key:
            # OpenAI echoes (a masked form of) the key it got: the client must never repeat it.
            return self.error(Fault.error(401, f"Incorrect API key provided: {key}.", code="invalid_api_key"))
        body = seen.body
        texts, model, dims = body.get("input"), body.get("model"), body.get("dimensions")
        if model not in NATIVE:
            return self.error(Fault.error(404, f"The model `{model}` does not exist", code="model_not_found"))
        if not isinstance(texts, list) or not texts or len(texts) > 2048:
            return self.error(Fault.error(400, "'$.input' must be a list of 1 to 2048 strings"))
        if dims is not None and (model == "text-embedding-ada-002" or not 1 <= dims <= NATIVE[model]):
            return self.error(Fault.error(400, f"This model does not support specifying dimensions={dims}."))
        size = fault.dims if fault and fault.kind == "wrong_dim" else dims or NATIVE[model]
        rows = [vector(text, size) for text in texts]
        if fault and fault.kind == "fewer":
            rows = rows[:-1]
        base64_wanted = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if base64_wanted else v}
                for i, v in enumerate(rows)]
        tokens = sum(len(text.split()) for text in texts)
        payload = {"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        if fault and fault.kind == "missing":
            del payload["data"]
        return json_response(200, payload)
