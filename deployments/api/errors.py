"""One error body for every 4xx/5xx of the API, and the map from devmesh's error tree to HTTP statuses.

    {"error": {"code": "not_found", "message": "...", "item": "...", "request_id": "..."}}

Validation errors add `fields` (one entry per bad field); some errors add what the caller needs next (`plan`,
`operation_id`). Messages never carry stack traces, SQL or credentials: unexpected exceptions become a bare
500 `internal` naming only the request id, and the traceback goes to the server log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from blocks.errors import (
    AppError, ApprovalRejected, ConfigError, ContextExists, ContextExpired, ContextLimitExceeded, ContextNotFound,
    GuardError, InputError, OperationDenied, ProviderError, RateLimited, SearchTimeout, StoreError, TransientError,
)

__all__ = ["ApiError", "ErrorJSON", "error_body", "error_response", "install_error_handlers", "send_error", "status_of",
           "STORE_UNAVAILABLE", "STORE_RETRY_AFTER_S"]

log = logging.getLogger("devmesh.api")
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 410: "gone", 413: "payload_too_large",
                415: "unsupported_media_type", 422: "invalid_input", 429: "rate_limited", 500: "internal",
                502: "provider_error", 503: "unavailable"}
# What a client is told when the database fails: the full message (data directory, free bytes, the server log's
# PANIC line, an external server's host and port, operator advice) goes to the server log only.
STORE_UNAVAILABLE = "the database is unavailable; retry later"
STORE_RETRY_AFTER_S = 30


class ErrorJSON(JSONResponse):
    """JSON with non-ASCII escaped, so that text the client sent (even lone surrogates) can never break it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=str).encode()


class ApiError(Exception):
    """An error answer decided by a route: status, code, message, the item at fault, extra headers and fields."""

    def __init__(self, status: int, code: str, message: str, *, item: Any = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.item = status, code, message, item
        self.headers, self.extra = headers or {}, extra


def error_body(code: str, message: str, *, item: Any = None, request_id: str | None = None, **extra: Any) -> bytes:
    """The error body as bytes, for answers written below FastAPI (ASGI middleware, the MCP endpoint, the
    slow-client protocol)."""
    body = {"code": code, "message": message, "item": item, "request_id": request_id, **extra}
    return json.dumps({"error": body}, ensure_ascii=True, separators=(",", ":"), default=str).encode()


async def send_error(send, status: int, code: str, message: str, *, item: Any = None, request_id: str | None = None,
                     headers: dict[str, str] | None = None) -> None:
    """Answer an ASGI request with the error body."""
    body = error_body(code, message, item=item, request_id=request_id)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())]})
    await send({"type": "http.response.body", "body": body})


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, status: int, code: str, message: str, *, item: Any = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"code": code, "message": message, "item": item, "request_id": _request_id(request), **extra}
    return ErrorJSON({"error": body}, status_code=status, headers=headers)


def status_of(exc: AppError) -> tuple[int, str]:
    """HTTP status and code of a devmesh error."""
    for kind, status, code in (
        (ContextNotFound, 404, "not_found"), (ContextExpired, 410, "expired"),
        (ContextLimitExceeded, 409, "limit_exceeded"), (ContextExists, 409, "conflict"),
        (InputError, 422, "invalid_input"), (SearchTimeout, 504, "search_timeout"),
        (OperationDenied, 403, "policy_denied"), (ApprovalRejected, 409, "approval_rejected"),
        (GuardError, 403, "guard"), (RateLimited, 503, "provider_rate_limited"),
        (TransientError, 503, "provider_unavailable"), (ProviderError, 502, "provider_error"),
        (StoreError, 503, "store_unavailable"), (ConfigError, 503, "not_configured"),
    ):
        if isinstance(exc, kind):
            return status, code
    return 502, "operation_failed"  # a bare AppError: the guard's scrubbed wrapper of a client library error


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _validation(request: Request, errors: list[dict]) -> JSONResponse:
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (e.get("ctx") or {}).get("error", "invalid JSON")
        return error_response(request, 400, "malformed_json", f"the body is not valid JSON: {detail}", item="body")
    fields = [{"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", "invalid"))[:500]}
              for e in errors[:50]]
    message = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:10])
    return error_response(request, 422, "validation_error", message, item=fields[0]["field"] if fields else None,
                          fields=fields)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; they apply to the whole app (unknown routes included)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(request, exc.status, exc.code, exc.message, item=exc.item, headers=exc.headers,
                              **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(request, exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError):
        return _validation(request, list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def model_invalid(request: Request, exc: ValidationError):
        return _validation(request, [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])

    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError):
        status, code = status_of(exc)
        headers = None
        if isinstance(exc, RateLimited) and exc.retry_after:
            headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
        if status >= 500:
            log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        if isinstance(exc, StoreError):
            return error_response(request, status, code, STORE_UNAVAILABLE,
                                  headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
        return error_response(request, status, code, str(exc)[:2000], item=getattr(exc, "item", None),
                              headers=headers)

    @app.exception_handler(psycopg.DataError)
    async def data_error(request: Request, exc: psycopg.DataError):
        # Values PostgreSQL cannot hold: NUL bytes in text or JSON, untranslatable characters, out-of-range numbers.
        reason = str(exc).splitlines()[0][:200] if str(exc) else "a value cannot be stored"
        return error_response(request, 422, "invalid_input", f"a value was refused by the database: {reason}")

    @app.exception_handler(UnicodeError)
    async def unicode_error(request: Request, exc: UnicodeError):
        return error_response(request, 422, "invalid_input", "text is not valid Unicode (lone surrogate?)")
