"""A fake Voyage AI embeddings API: POST /v1/embeddings, as in docs.voyageai.com/reference/embeddings-api."""

from __future__ import annotations

from tests.fakes.server import FakeAPI, Fault, Response, Seen, json_response, vector

__all__ = ["FakeVoyage"]

MODELS = {"voyage-3.5", "voyage-3.5-lite", "voyage-code-3"}


class FakeVoyage(FakeAPI):
    """Checks the Bearer key, the 1000-text limit and output_dimension; `shuffle` answers data out of order."""

    def __init__(self, api_key: str = "pa-test", shuffle: bool = False) -> None:
        super().__init__()
        self.api_key = self.expected_key = api_key
        self.shuffle = shuffle

    def reset(self) -> None:
        super().reset()
        self.api_key = self.expected_key

    def error(self, fault: Fault) -> Response:
        # docs.voyageai.com/docs/error-codes: errors carry {"detail": ...}
        return json_response(fault.status, {"detail": fault.message}, fault.headers)

    def answer(self, seen: Seen, fault: Fault | None) -> Response:
        if seen.path != "/v1/embeddings":
            return self.error(Fault.error(404, "Not Found"))
        if seen.headers.get("authorization") != f"Bearer {self.api_key}":
            return self.error(Fault.error(401, "Provided API key is invalid."))
        body = seen.body
        texts, model, dims = body.get("input"), body.get("model"), body.get("output_dimension")
        if model not in MODELS:
            return self.error(Fault.error(400, f"Model {model} is not supported."))
        if not isinstance(texts, list) or not texts or len(texts) > 1000:
            return self.error(Fault.error(400, "The maximum length of the input list is 1000."))
        if dims not in (None, 256, 512, 1024, 2048) or body.get("input_type") not in (None, "query", "document"):
            return self.error(Fault.error(400, "Invalid output_dimension or input_type."))
        size = fault.dims if fault and fault.kind == "wrong_dim" else dims or 1024
        data = [{"object": "embedding", "embedding": vector(text, size), "index": i} for i, text in enumerate(texts)]
        if fault and fault.kind == "fewer":
            data = data[:-1]
        if self.shuffle:
            data.reverse()
        payload = {"object": "list", "data": data, "model": model,
                   "usage": {"total_tokens": sum(len(text.split()) for text in texts)}}
        if fault and fault.kind == "missing":
            del payload["data"]
        return json_response(200, payload)
