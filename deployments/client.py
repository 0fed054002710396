"""Python clients of the devmesh REST API (/api/v1, deployments/api): `Mesh` (sync) and `AsyncMesh` (async), on httpx.

    org, mesh = Mesh.register_organization("http://localhost:8080", name="Acme", slug="acme",
                                           admin_email="ops@acme.example", admin_name="Ana", password="...")
    ctx = mesh.create_context(user_id="ana")
    mesh.append(ctx.id, [{"role": "user", "content": "the payments pod is OOMKilled"}])
    mesh.search("OOMKilled", user_id="ana").hits
    tools = mesh.list_tools(); openai_tools = tools.to_openai()
    mesh.execute_tool("aws.s3_list", {"bucket": "acme-data"})          # a dry run unless dry_run=False

`AsyncMesh` has the same methods as coroutines (`await mesh.search(...)`), `aiter_contexts`/`aiter_audit`
instead of the iterators, and `aclose()`. Results are the typed models of deployments/client_models.py.

Retries (up to `max_retries`, exponential backoff with jitter, or the server's Retry-After):
- 429 (rate limited, locked out) is retried for every request: the API answers it before a route does anything.
  A Retry-After longer than `max_retry_after` seconds is not waited for: RateLimited is raised at once.
- 502/503/504, timeouts and broken connections are retried for reads, searches, PATCH, DELETE and POST
  /embeddings (storing a document again updates it). POSTs that create things (contexts, messages, keys, key
  rotation, registration, approvals, tool execution) are retried only when the request carries an idempotency key
  (`execute_tool(..., idempotency_key=...)`) or the failure happened before the request was sent (connection
  refused, connect or pool timeout), so that a retry can never act twice.
- A retried DELETE that answers 404 after an earlier attempt may have landed counts as done.
- Other 4xx are never retried.

Errors are the classes of blocks/errors.py, as the API means them; each carries `status`, `code`, `item`,
`request_id` and `detail` (the error body), and its message ends with the request id:
    401 -> AuthFailed   403 missing scope -> Forbidden(AuthFailed)   403 policy -> OperationDenied
    404 -> NotFound     409 approval_required -> ApprovalRequired(ApprovalRejected, .operation_id, .plan)
    409 approval_rejected -> ApprovalRejected   409 limit_exceeded -> ContextLimitExceeded   410 -> ContextExpired
    400/409/413/415/422 -> InputError naming the item (`fields` lists each bad field)   other 4xx -> InvalidRequest
    429 after the retries -> RateLimited(.retry_after)   503 not_configured -> ConfigError
    504 search_timeout -> SearchTimeout (not retried)     other 5xx -> TransientError
    timeouts -> ProviderTimeout   a 2xx body that does not parse -> MalformedResponse
The API key is held as a SecretStr, sent only in the Authorization header, masked in every log record
(blocks.redact) and never part of a repr or an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from blocks.errors import (
    AppError, ApprovalRejected, AuthFailed, ConfigError, ContextExpired, ContextLimitExceeded, InputError,
    InvalidRequest, MalformedResponse, NotFound, OperationDenied, ProviderTimeout, RateLimited, SearchTimeout,
    TransientError,
)
from blocks.redact import register_secrets
from blocks.retry import backoff, parse_retry_after, scrub
from deployments.client_models import (
    AppendResult, AuditPage, AuditRecord, Context, ContextEmbeddings, ContextList, ContextPage, ContextSummary,
    DecisionResult, EmbeddingsResult, ExecuteResult, KeyCreated, KeyInfo, OperationInfo, Registered, SearchHits,
    SimilarContext, StoredText, Tool, Tools,
)

__all__ = ["ApprovalRequired", "AsyncMesh", "Forbidden", "Mesh"]

log = logging.getLogger("devmesh.client")
PREFIX = "/api/v1"
PROVIDER = "devmesh"
RETRY_STATUSES = frozenset({502, 503, 504})
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # the request never left this process
sleep = time.sleep  # looked up at call time, so tests replace them with recorders
async_sleep = asyncio.sleep


class Forbidden(AuthFailed):
    """The key is valid but lacks the scope the route needs (`scope` names it)."""

    scope: str | None = None


class ApprovalRequired(ApprovalRejected):
    """The policy asks for a human approval and the server cannot wait for one; nothing was done."""

    operation_id: str | None = None
    plan: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Call:
    """One API request: what to send, how to read the answer, and whether repeating it is harmless."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: Any = None
    parse: Callable[[Any], Any] | None = None
    safe: bool = True  # a repeat cannot act twice: retried on 5xx and after-send connection failures too


def _path(*parts: object) -> str:
    return PREFIX + "".join("/" + quote(str(p), safe="") for p in parts)


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _model(model: type[BaseModel]) -> Callable[[Any], Any]:
    return model.model_validate


def _items(model: type[BaseModel]) -> Callable[[Any], Any]:
    adapter = TypeAdapter(list[model])
    return lambda data: adapter.validate_python(data["items"])


def _tools(data: Any) -> Tools:
    return Tools(Tool.model_validate(t) for t in data["items"])


def _annotate(error: AppError, status: int | None, code: str, request_id: str, detail: dict | None = None,
              item: Any = None) -> AppError:
    """Attach what the API said to an error of the tree: status, code, request id, the body and the item."""
    error.status, error.code, error.request_id, error.detail = status, code, request_id, detail or {}
    error.fields = (detail or {}).get("fields")
    if not hasattr(error, "item"):
        error.item = item
    return error


def _message(message: Any) -> Any:
    return message.model_dump(mode="json", exclude_none=True) if isinstance(message, BaseModel) else message


class _Api:
    """Connection settings, the request/answer rules shared by both clients, and every API method. Each method
    builds a _Call and hands it to `_call`: the sync client returns its result, the async one a coroutine."""

    def __init__(self, base_url: str, api_key: str | SecretStr | None, *, timeout: float = 30.0,
                 max_retries: int = 4, max_retry_after: float = 60.0,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._use_key(api_key)
        self.max_retries, self.max_retry_after = max_retries, max_retry_after
        self._options = {"timeout": timeout, "max_retries": max_retries, "max_retry_after": max_retry_after,
                         "transport": transport}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={'***' if self._key else None})"

    def with_key(self, api_key: str | SecretStr):
        """A new client of the same server and options, authenticating with another key."""
        return type(self)(self.base_url, api_key, **self._options)

    def _use_key(self, api_key: str | SecretStr | None) -> None:
        self._key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        if self._key is not None:
            register_secrets([self._key.get_secret_value()])  # masked in every log record of this process

    def _call(self, call: _Call) -> Any:  # pragma: no cover - implemented by Mesh and AsyncMesh
        raise NotImplementedError

    # -- the rules: headers, answers, errors, delays ----------------------------------------------------------

    def _request(self, call: _Call, request_id: str) -> dict[str, Any]:
        headers = {"X-Request-ID": request_id, "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        body = None if call.body is None else to_jsonable_python(call.body)
        return {"method": call.method, "url": self.base_url + call.path, "params": call.params,
                "json": body, "headers": headers}

    def _scrub(self, text: object) -> str:
        return scrub(text, self._key.get_secret_value() if self._key else None, limit=2000)

    def _result(self, call: _Call, response: httpx.Response, request_id: str) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            data = response.json()
            return call.parse(data) if call.parse else data
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            rid = response.headers.get("x-request-id", request_id)
            raise MalformedResponse(f"unexpected answer ({type(exc).__name__}) [HTTP {response.status_code}, "
                                    f"request id {rid}]", provider=PROVIDER, operation=f"{call.method} {call.path}"
                                    ) from None

    def _status_error(self, call: _Call, response: httpx.Response, request_id: str) -> tuple[AppError, bool]:
        """The error an answer means, and whether to retry it."""
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict):  # not the API's body (a proxy's page): keep a little of its text
            detail = {"message": response.text[:200] or response.reason_phrase}
        code = str(detail.get("code") or f"http_{status}")
        rid = detail.get("request_id") or response.headers.get("x-request-id") or request_id
        item = detail.get("item")
        text = self._scrub(f"{detail.get('message') or response.reason_phrase} [HTTP {status} {code}, "
                           f"request id {rid}]")
        where = {"provider": PROVIDER, "operation": f"{call.method} {call.path}"}
        retry = False
        if status == 429:
            error: AppError = RateLimited(text, retry_after=parse_retry_after(response.headers), **where)
            retry = True
        elif status == 401:
            error = AuthFailed(text, **where)
        elif status == 403 and code in ("policy_denied", "guard"):
            error = OperationDenied(text)
        elif status == 403:
            error = Forbidden(text, **where)
            error.scope = item
        elif status == 404:
            error = NotFound(text, **where)
        elif status == 409 and code == "approval_required":
            error = ApprovalRequired(text)
            error.operation_id, error.plan = detail.get("operation_id"), detail.get("plan")
        elif status == 409 and code == "approval_rejected":
            error = ApprovalRejected(text)
        elif status == 409 and code == "limit_exceeded":
            error = ContextLimitExceeded(text, item=item)
        elif status == 410:
            error = ContextExpired(text, item=item)
        elif status in (400, 409, 413, 415, 422):
            error = InputError(text, item=item if item is not None else "body" if status == 413 else None)
        elif status < 500:
            error = InvalidRequest(text, **where)
        elif status == 503 and code == "not_configured":
            error = ConfigError(text)
        elif code == "search_timeout":  # the server's own time limit: the same search again would time out again
            error = SearchTimeout(text)
        else:
            error = TransientError(text, **where)
            retry = status in RETRY_STATUSES and call.safe
        return _annotate(error, status, code, rid, detail, item), retry

    def _transport_error(self, call: _Call, exc: httpx.TransportError, request_id: str) -> tuple[AppError, bool]:
        where = {"provider": PROVIDER, "operation": f"{call.method} {call.path}"}
        text = self._scrub(f"{type(exc).__name__}: {exc} [request id {request_id}]")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return _annotate(ConfigError(f"bad base_url {self.base_url!r}: {exc}"), None, "config", request_id), False
        kind = ProviderTimeout if isinstance(exc, httpx.TimeoutException) else TransientError
        return _annotate(kind(text, **where), None, "connection", request_id), call.safe or isinstance(exc, NOT_SENT)

    def _delay(self, error: AppError, attempt: int, retry: bool) -> float | None:
        """Seconds to wait before the next attempt, or None to give up and raise `error`."""
        if not retry or attempt >= self.max_retries:
            return None
        if isinstance(error, RateLimited) and (error.retry_after or 0) > self.max_retry_after:
            return None
        delay = backoff(attempt, error)
        log.warning("%s; retry %d of %d in %.2f s", error, attempt + 1, self.max_retries, delay)
        return delay

    # -- keys --------------------------------------------------------------------------------------------------

    def create_key(self, name: str, scopes: Iterable[str], *, rate_per_minute: int | None = None,
                   burst: int | None = None) -> KeyCreated:
        """A new key of your organization (admin); `.api_key` is shown this once."""
        body = _clean({"name": name, "scopes": list(scopes), "rate_per_minute": rate_per_minute, "burst": burst})
        return self._call(_Call("POST", _path("keys"), body=body, parse=_model(KeyCreated), safe=False))

    def list_keys(self) -> list[KeyInfo]:
        return self._call(_Call("GET", _path("keys"), parse=_items(KeyInfo)))

    def revoke_key(self, key_id: str) -> None:
        return self._call(_Call("DELETE", _path("keys", key_id)))

    def rotate_key(self, key_id: str) -> KeyCreated:
        """Revoke a key and issue its successor (same name, scopes and limits)."""
        return self._call(_Call("POST", _path("keys", key_id, "rotate"), parse=_model(KeyCreated), safe=False))

    # -- contexts ----------------------------------------------------------------------------------------------

    def create_context(self, *, name: str | None = None, content: str | list[dict] | None = None,
                       user_id: str | None = None, agent_id: str | None = None,
                       session_id: str | None = None, type: str | None = None, metadata: dict | None = None,
                       ttl_seconds: int | None = None, max_messages: int | None = None,
                       max_bytes: int | None = None, encrypted: bool | None = None) -> Context:
        """A new context; `name`: an id of your choosing (then usable wherever its id is; InputError when taken),
        `content`: its first message(s) (a string is one user message)."""
        body = _clean({"id": name, "content": content, "user_id": user_id, "agent_id": agent_id,
                       "session_id": session_id, "type": type, "metadata": metadata, "ttl_seconds": ttl_seconds,
                       "max_messages": max_messages, "max_bytes": max_bytes, "encrypted": encrypted})
        return self._call(_Call("POST", _path("contexts"), body=body, parse=_model(Context), safe=False))

    def get_context(self, context_id: str, *, offset: int = 0, limit: int = 100) -> ContextPage:
        """The context with one page of its messages (a negative offset counts from the end)."""
        return self._call(_Call("GET", _path("contexts", context_id), params={"offset": offset, "limit": limit},
                                parse=_model(ContextPage)))

    def list_contexts(self, *, limit: int = 50, cursor: str | None = None, offset: int | None = None,
                      user_id: str | None = None, agent_id: str | None = None, session_id: str | None = None,
                      type: str | None = None, metadata: dict | None = None, include_expired: bool = False,
                      with_total: bool = True) -> ContextList:
        """One page of contexts, newest first; pass `next_cursor` as `cursor` for the next (or use iter_contexts)."""
        params = _clean({"limit": limit, "cursor": cursor, "offset": offset, "user_id": user_id,
                         "agent_id": agent_id, "session_id": session_id, "type": type,
                         "metadata": json.dumps(metadata) if metadata is not None else None,
                         "include_expired": include_expired, "with_total": with_total})
        return self._call(_Call("GET", _path("contexts"), params=params, parse=_model(ContextList)))

    def update_context(self, context_id: str, metadata: dict, *, replace: bool = False) -> Context:
        """Merge `metadata` into the context's (or replace it)."""
        return self._call(_Call("PATCH", _path("contexts", context_id), body={"metadata": metadata,
                                "replace": replace}, parse=_model(Context)))

    def append(self, context_id: str, messages: Iterable[dict | BaseModel]) -> AppendResult:
        """Append messages ({"role", "content", ...}) atomically."""
        body = {"messages": [_message(m) for m in messages]}
        return self._call(_Call("POST", _path("contexts", context_id, "messages"), body=body,
                                parse=_model(AppendResult), safe=False))

    def delete_context(self, context_id: str) -> None:
        return self._call(_Call("DELETE", _path("contexts", context_id)))

    def search_context(self, context_id: str, query: str, *, mode: str = "hybrid", limit: int = 10,
                       min_similarity: float | None = None) -> SearchHits:
        body = _clean({"query": query, "mode": mode, "limit": limit, "min_similarity": min_similarity})
        return self._call(_Call("POST", _path("contexts", context_id, "search"), body=body,
                                parse=_model(SearchHits)))

    def context_summary(self, context_id: str) -> ContextSummary:
        return self._call(_Call("GET", _path("contexts", context_id, "summary"), parse=_model(ContextSummary)))

    def similar_contexts(self, context_id: str, *, limit: int = 5) -> list[SimilarContext]:
        return self._call(_Call("GET", _path("contexts", context_id, "similar"), params={"limit": limit},
                                parse=_items(SimilarContext)))

    def context_embeddings(self, context_id: str, *, limit: int = 100, offset: int = 0,
                           include_vectors: bool = False) -> ContextEmbeddings:
        params = {"limit": limit, "offset": offset, "include_vectors": include_vectors}
        return self._call(_Call("GET", _path("contexts", context_id, "embeddings"), params=params,
                                parse=_model(ContextEmbeddings)))

    def store_text(self, context_id: str, content_index: int, text: str, *, metadata: dict | None = None,
                   model: str | None = None) -> StoredText:
        """Embed and store a text you chunked yourself at position `content_index` of the context (storing the
        position again replaces it; an unchanged text is not re-embedded)."""
        body = _clean({"content_index": content_index, "text": text, "metadata": metadata, "model": model})
        return self._call(_Call("POST", _path("contexts", context_id, "embeddings"), body=body,
                                parse=_model(StoredText)))

    # -- embeddings and search ---------------------------------------------------------------------------------

    def remember(self, document_id: str, text: str, *, metadata: dict | None = None,
                 kind: str = "auto") -> EmbeddingsResult:
        """Chunk, embed and store one document under your id (storing it again updates it)."""
        body = _clean({"id": document_id, "text": text, "metadata": metadata, "kind": kind})
        return self._call(_Call("POST", _path("embeddings"), body=body, parse=_model(EmbeddingsResult)))

    def remember_many(self, documents: Iterable[dict]) -> EmbeddingsResult:
        """Store a batch of {"id", "text", "metadata"?, "kind"?}; per-document failures are in `.errors`."""
        return self._call(_Call("POST", _path("embeddings"), body={"documents": list(documents)},
                                parse=_model(EmbeddingsResult)))

    def search(self, query: str, *, mode: str = "hybrid", limit: int = 10, filters: dict | None = None,
               document_ids: list[str] | None = None, context_id: str | None = None, user_id: str | None = None,
               model: str | None = None, min_similarity: float | None = None,
               context_ids: list[str] | None = None) -> SearchHits:
        """Search the tenant's documents and contexts, one context, several, or one user's contexts."""
        body = _clean({"query": query, "mode": mode, "limit": limit, "filters": filters,
                       "document_ids": document_ids, "context_id": context_id, "user_id": user_id, "model": model,
                       "min_similarity": min_similarity, "context_ids": context_ids})
        return self._call(_Call("POST", _path("search"), body=body, parse=_model(SearchHits)))

    def search_vector(self, vector: Iterable[float], model: str, *, limit: int = 10, filters: dict | None = None,
                      document_ids: list[str] | None = None, min_similarity: float | None = None) -> SearchHits:
        """Nearest chunks to a vector embedded with the stored `model` (its dimensions must match)."""
        body = _clean({"vector": [float(x) for x in vector], "model": model, "limit": limit, "filters": filters,
                       "document_ids": document_ids, "min_similarity": min_similarity})
        return self._call(_Call("POST", _path("search", "vector"), body=body, parse=_model(SearchHits)))

    # -- tools, operations, audit ------------------------------------------------------------------------------

    def list_tools(self) -> Tools:
        """The tool catalog; `.to_openai()` / `.to_anthropic()` convert all of it."""
        return self._call(_Call("GET", _path("tools"), parse=_tools))

    def execute_tool(self, name: str, arguments: dict | None = None, *, dry_run: bool = True,
                     idempotency_key: str | None = None, user_id: str | None = None,
                     context_id: str | None = None) -> ExecuteResult:
        """Run a tool (devmesh name or a model API's `github__create_issue`). Operations are dry runs (plan and
        policy check) unless dry_run=False; give an idempotency_key to make a retry safe and to have it retried."""
        body = _clean({"arguments": arguments or {}, "dry_run": dry_run, "idempotency_key": idempotency_key,
                       "user_id": user_id, "context_id": context_id})
        return self._call(_Call("POST", _path("tools", name.replace("__", "."), "execute"), body=body,
                                parse=_model(ExecuteResult), safe=idempotency_key is not None))

    def get_operation(self, operation_id: str) -> OperationInfo:
        return self._call(_Call("GET", _path("operations", operation_id), parse=_model(OperationInfo)))

    def approve(self, operation_id: str, comment: str | None = None) -> DecisionResult:
        """Approve an operation awaiting approval (admin)."""
        return self._decide(operation_id, "approve", comment)

    def reject(self, operation_id: str, comment: str | None = None) -> DecisionResult:
        """Reject an operation awaiting approval (admin)."""
        return self._decide(operation_id, "reject", comment)

    def _decide(self, operation_id: str, decision: str, comment: str | None):
        return self._call(_Call("POST", _path("operations", operation_id, decision), body=_clean({
            "comment": comment}), parse=_model(DecisionResult), safe=False))

    def audit(self, *, limit: int = 100, after_seq: int = 0, operation_id: str | None = None) -> AuditPage:
        """One page of the tenant's audit records in order (admin); continue with after_seq=next_after_seq."""
        params = _clean({"limit": limit, "after_seq": after_seq, "operation_id": operation_id})
        return self._call(_Call("GET", _path("audit"), params=params, parse=_model(AuditPage)))


def _registration(name: str, slug: str, admin_email: str, admin_name: str, password: str | SecretStr,
                  invite: str | SecretStr | None = None) -> _Call:
    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    body = {"name": name, "slug": slug, "admin_email": admin_email, "admin_name": admin_name, "password": secret}
    if invite is not None:
        body["invite"] = invite.get_secret_value() if isinstance(invite, SecretStr) else invite
    return _Call("POST", _path("auth", "register", "organization"), body=body, parse=_model(Registered), safe=False)


class Mesh(_Api):
    """Synchronous client; a context manager (or call close()). Thread-safe like httpx.Client."""

    def __init__(self, base_url: str, api_key: str | SecretStr | None, *, timeout: float = 30.0,
                 max_retries: int = 4, max_retry_after: float = 60.0, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries,
                         max_retry_after=max_retry_after, transport=transport)
        self._http = httpx.Client(timeout=timeout, transport=transport, headers={"User-Agent": "devmesh-client"})

    @classmethod
    def register_organization(cls, base_url: str, *, name: str, slug: str, admin_email: str, admin_name: str,
                              password: str | SecretStr, invite: str | SecretStr | None = None,
                              **options: Any) -> tuple[Registered, Mesh]:
        """Create an organization; returns it (with its admin key, shown once) and a client using that key.
        `invite`: the one-time token an operator minted, where registration is by invite."""
        client = cls(base_url, None, **options)
        try:
            registered = client._call(_registration(name, slug, admin_email, admin_name, password, invite))
        except BaseException:
            client.close()
            raise
        client._use_key(registered.api_key)
        return registered, client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def iter_contexts(self, *, page_size: int = 100, **filters: Any) -> Iterator[Context]:
        """Every matching context, newest first, following the cursor page by page."""
        cursor = None
        while True:
            page = self.list_contexts(limit=page_size, cursor=cursor, with_total=False, **filters)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def iter_audit(self, *, page_size: int = 100, after_seq: int = 0,
                   operation_id: str | None = None) -> Iterator[AuditRecord]:
        while True:
            page = self.audit(limit=page_size, after_seq=after_seq, operation_id=operation_id)
            yield from page.items
            if page.next_after_seq is None:
                return
            after_seq = page.next_after_seq

    def _call(self, call: _Call) -> Any:
        request_id, attempt, landed = uuid.uuid4().hex, 0, False
        while True:
            try:
                response = self._http.request(**self._request(call, request_id))
            except httpx.TransportError as exc:
                error, retry = self._transport_error(call, exc, request_id)
                landed = landed or not isinstance(exc, NOT_SENT)
            else:
                if response.is_success:
                    return self._result(call, response, request_id)
                if response.status_code == 404 and call.method == "DELETE" and landed:
                    return None
                error, retry = self._status_error(call, response, request_id)
                landed = landed or response.status_code >= 500
            delay = self._delay(error, attempt, retry)
            if delay is None:
                raise error
            sleep(delay)
            attempt += 1


class AsyncMesh(_Api):
    """Asynchronous client: every method of Mesh as a coroutine; an async context manager (or await aclose())."""

    def __init__(self, base_url: str, api_key: str | SecretStr | None, *, timeout: float = 30.0,
                 max_retries: int = 4, max_retry_after: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries,
                         max_retry_after=max_retry_after, transport=transport)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport,
                                       headers={"User-Agent": "devmesh-client"})

    @classmethod
    async def register_organization(cls, base_url: str, *, name: str, slug: str, admin_email: str,
                                    admin_name: str, password: str | SecretStr,
                                    invite: str | SecretStr | None = None,
                                    **options: Any) -> tuple[Registered, AsyncMesh]:
        """Create an organization; returns it (with its admin key, shown once) and a client using that key.
        `invite`: the one-time token an operator minted, where registration is by invite."""
        client = cls(base_url, None, **options)
        try:
            registered = await client._call(_registration(name, slug, admin_email, admin_name, password, invite))
        except BaseException:
            await client.aclose()
            raise
        client._use_key(registered.api_key)
        return registered, client

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aiter_contexts(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[Context]:
        """Every matching context, newest first, following the cursor page by page."""
        cursor = None
        while True:
            page = await self.list_contexts(limit=page_size, cursor=cursor, with_total=False, **filters)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def aiter_audit(self, *, page_size: int = 100, after_seq: int = 0,
                          operation_id: str | None = None) -> AsyncIterator[AuditRecord]:
        while True:
            page = await self.audit(limit=page_size, after_seq=after_seq, operation_id=operation_id)
            for item in page.items:
                yield item
            if page.next_after_seq is None:
                return
            after_seq = page.next_after_seq

    async def _call(self, call: _Call) -> Any:
        request_id, attempt, landed = uuid.uuid4().hex, 0, False
        while True:
            try:
                response = await self._http.request(**self._request(call, request_id))
            except httpx.TransportError as exc:
                error, retry = self._transport_error(call, exc, request_id)
                landed = landed or not isinstance(exc, NOT_SENT)
            else:
                if response.is_success:
                    return self._result(call, response, request_id)
                if response.status_code == 404 and call.method == "DELETE" and landed:
                    return None
                error, retry = self._status_error(call, response, request_id)
                landed = landed or response.status_code >= 500
            delay = self._delay(error, attempt, retry)
            if delay is None:
                raise error
            await async_sleep(delay)
            attempt += 1
