"""The gateway: an ASGI app (FastAPI) that receives signed GitHub webhooks and turns them into Prefect events.

POST /webhooks/github   cap the body → verify X-Hub-Signature-256 with the secrets bound to the delivery's
                        repository and the operator's GitHubWebhook block (tasks/webhook_bindings.py: a delivery
                        reaches each tenant whose secret signed it; the operator's block never feeds an
                        organization's tenant, that delivery is recorded `unbound`) → persist the delivery once
                        per tenant (deduplicated by X-GitHub-Delivery) → 202. The answer never waits for
                        Prefect: an outbox loop emits persisted deliveries as events (event id derived from the
                        delivery id) and retries while the Prefect API is down, so an accepted delivery is not lost.
GET  /healthz           liveness, with the number of deliveries waiting to be emitted.
GET  /metrics           Prometheus text (deployments share it through PROMETHEUS_MULTIPROC_DIR).
/mcp                    MCP over streamable HTTP, authenticated by API key (deployments/mcp_server.py).
/api/v1/...             the REST API for agents (deployments/api; OpenAPI at /docs and /openapi.json).

Run it with `devmesh up` (the whole stack) or `uvicorn --factory deployments.gateway:create_app`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from blocks.metrics import HTTP_LATENCY, WEBHOOK_DELIVERIES, exposition
from blocks.settings import Settings
from blocks.webhooks import GitHubWebhook
from deployments.api import mount_api
from deployments.api.errors import error_response
from deployments.api.middleware import Deadline
from deployments.docs import mount_docs
from deployments.mcp_server import mcp_http_app
from deployments.mcp_server import mount as mount_mcp
from tasks.runtime import Runtime
from tasks.webhook_bindings import WebhookRouter
from tasks.webhook_events import Routes, event_name, to_event
from tasks.webhooks import (
    UnstorablePayload, mark_emit_failed, mark_emitted, pending_count, pending_deliveries, record_delivery,
)

__all__ = ["PrefectEvents", "create_app"]

log = logging.getLogger("devmesh.gateway")
DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
EVENT = re.compile(r"^[a-z_]{1,64}$")
Emit = Callable[[list[dict[str, Any]]], Awaitable[None]]
DEFAULT_ROUTES = Path(__file__).resolve().parents[1] / "prefect.yaml"
API_VERSION = "1"


class PrefectEvents:
    """POSTs batches to the Prefect API's /events with one client kept open (a new client costs ~40 ms)."""

    def __init__(self):
        self._client = None

    async def __call__(self, events: list[dict[str, Any]]) -> None:
        from prefect.client.orchestration import get_client

        if self._client is None:
            self._client = get_client()
            await self._client.__aenter__()
        try:
            response = await self._client.request("POST", "/events", json=events)
            response.raise_for_status()
        except Exception:
            await self.close()  # reconnect next time (the server may have restarted)
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except Exception:
                pass


OUTCOMES = {202: "accepted", 200: "duplicate", 401: "bad_signature", 413: "too_large", 415: "bad_content_type",
            400: "bad_request"}
UNVERIFIED = "missing or invalid X-Hub-Signature-256 (no secret bound to this repository signed it)"


class RequestMetrics:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): latency by method, route template
    and status into devmesh_http_request_seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            HTTP_LATENCY.labels(scope["method"], getattr(route, "path", "unmatched"), str(status[0])).observe(
                time.perf_counter() - started)


def _json(body: bytes) -> tuple[str, Any]:
    """(text, parsed value), or (text, the exception) when the body is not UTF-8 JSON."""
    try:
        text = body.decode("utf-8")
        return text, json.loads(text)
    except (ValueError, RecursionError) as exc:
        return "", exc


# status -> (code, item at fault) of a refused delivery, unless _problem is told otherwise
_PROBLEMS = {401: ("invalid_signature", "X-Hub-Signature-256"), 413: ("payload_too_large", "body"),
             415: ("unsupported_media_type", "Content-Type"), 400: ("bad_request", None)}


class _Problem(JSONResponse):
    """A refused delivery; the endpoint answers it in the API's one error body (error_response adds the id)."""

    def __init__(self, status: int, message: str, item: str | None, code: str | None):
        default_code, default_item = _PROBLEMS[status]
        self.code, self.message, self.item = code or default_code, message, item or default_item
        super().__init__(None, status_code=status)


def _problem(status: int, message: str, item: str | None = None, code: str | None = None) -> _Problem:
    return _Problem(status, message, item, code)


class Outbox:
    """Emits persisted deliveries in batches: every emit_interval_s, or sooner once a batch is waiting; after a
    failure the rows stay pending and the next attempt comes retry_interval_s later."""

    def __init__(self, pool, emit: Emit, settings: Settings):
        self.pool, self.emit, self.settings = pool, emit, settings
        self.wake = asyncio.Event()
        self.waiting = 0
        self.emitted = 0

    def notify(self) -> None:
        self.waiting += 1
        if self.waiting >= self.settings.gateway.emit_batch:
            self.wake.set()

    async def run(self) -> None:
        gateway = self.settings.gateway
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=gateway.emit_interval_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            self.waiting = 0
            try:
                while await self.flush_once() == gateway.emit_batch:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the Prefect API is down or refused: keep the rows, try again later
                log.warning("emitting webhook events failed (%s); retry in %.1f s", exc, gateway.retry_interval_s)
                await asyncio.sleep(gateway.retry_interval_s)

    async def flush_once(self) -> int:
        batch = await pending_deliveries(self.pool, self.settings.gateway.emit_batch)
        if not batch:
            return 0
        ids = [d["delivery_id"] for d in batch]
        try:
            await self.emit([to_event(d) for d in batch])
        except Exception as exc:
            await mark_emit_failed(self.pool, ids, f"{type(exc).__name__}: {exc}")
            raise
        await mark_emitted(self.pool, ids)
        self.emitted += len(ids)
        return len(ids)


async def _prune_admission(state: dict[str, Any], every_s: float = 300.0) -> None:
    """Forget full buckets, spent failures and old sightings of the shared admission state (any replica may)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(state["admission"].prune)
        except Exception as exc:  # the database is down: the next round tries again
            log.warning("pruning the admission state failed: %s", exc)


def create_app(settings: Runtime | Settings | None = None, *, webhook: GitHubWebhook | None = None,
               emit: Emit | None = None, routes: Routes | None = None) -> FastAPI:
    """The gateway app. Without arguments it reads Settings, loads the webhook block by name (and again every
    Settings.tenancy.webhook_cache_s seconds, as the bound secrets) and emits to the Prefect API of the environment;
    tests pass their own (`webhook` is then never re-read). `settings` may be the process's Runtime; otherwise the
    app builds the one it passes to the REST API and MCP."""
    runtime = Runtime.of(settings)
    settings = runtime.settings
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(runtime.pool)  # the schema, ensured once for the process
        state["pool"] = await runtime.store.open_async_pool()
        block = webhook
        if block is None:
            try:
                block = await GitHubWebhook.aload(settings.gateway.webhook_block)
            except ValueError:
                log.warning("no GitHubWebhook block %r: only repositories bound with `devmesh webhooks bind` are "
                            "accepted", settings.gateway.webhook_block)
        state["router"] = WebhookRouter(state["pool"], ttl=settings.tenancy.webhook_cache_s, block=block,
                                        block_name=None if webhook is not None else settings.gateway.webhook_block)
        state["routes"] = routes or Routes.from_prefect_yaml(settings.gateway.routes_file or DEFAULT_ROUTES)
        sender = emit or PrefectEvents()
        outbox = Outbox(state["pool"], sender, settings)
        state["outbox"] = outbox
        runner = asyncio.create_task(outbox.run(), name="devmesh-outbox")
        pruner = asyncio.create_task(_prune_admission(state), name="devmesh-admission-prune")
        try:
            yield
        finally:
            for task in (runner, pruner):
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            try:  # one last attempt, so a clean shutdown leaves nothing behind that could be sent
                await asyncio.wait_for(outbox.flush_once(), timeout=5)
            except Exception:
                pass
            if isinstance(sender, PrefectEvents):
                await sender.close()
            await state["pool"].close()

    app = FastAPI(title="devmesh gateway", lifespan=lifespan, docs_url=None, redoc_url=None, version=API_VERSION,
                  description="devmesh's REST API for agents (/api/v1), its MCP endpoint (/mcp) and GitHub "
                              "webhooks. Authenticate with `Authorization: Bearer devmesh_...`.")
    app.state.devmesh = state
    mount_docs(app)
    app.add_middleware(Deadline, seconds=settings.gateway.request_deadline_s)  # inside RequestContext (its id)
    api = mount_api(app, state, runtime)  # the REST API under /api/v1 (deployments/api)
    mount_mcp(app, mcp_http_app(api.runtime, gate=api.gate))  # MCP at /mcp, behind the same admission gate
    app.add_middleware(RequestMetrics)

    @app.get("/healthz", summary="Is the gateway alive", tags=["gateway"])
    async def healthz() -> dict[str, Any]:
        """The gateway answers, with the number of webhook deliveries waiting to become Prefect events."""
        pending = await pending_count(state["pool"])
        return {"ok": True, "pending_events": pending, "emitted": state["outbox"].emitted}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        token = settings.gateway.metrics_token
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        if token is not None and not (scheme.lower() == "bearer" and hmac.compare_digest(  # RFC 6750: any case
                credentials.strip().encode(), token.get_secret_value().encode())):
            return error_response(request, 401, "unauthorized", "GET /metrics needs the metrics bearer token",
                                  item="Authorization", headers={"WWW-Authenticate": "Bearer"})
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.post("/webhooks/github", summary="Receive a GitHub webhook delivery", tags=["gateway"])
    async def github_webhook(request: Request):
        """Verify the X-Hub-Signature-256, store the delivery (deduplicated), answer 202; a Prefect event follows."""
        response = await _receive(request)
        if isinstance(response, _Problem):
            response = error_response(request, response.status_code, response.code, response.message,
                                      item=response.item)
        outcome = OUTCOMES.get(response.status_code, "error")
        if response.status_code == 202 and b'"ignored"' in response.body:
            outcome = "ignored"
        elif response.status_code == 202 and b'"unbound"' in response.body:
            outcome = "unbound"
        WEBHOOK_DELIVERIES.labels(request.headers.get("x-github-event", "")[:64] or "-", outcome).inc()
        return response

    async def _receive(request: Request) -> JSONResponse:
        router: WebhookRouter = state["router"]
        limit = router.max_body_bytes()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _problem(413, f"body larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _problem(413, f"body larger than {limit} bytes")
        body = bytes(body)
        # The repository picks the secrets to check; nothing is stored, nor trusted, before one of them verifies.
        text, payload = _json(body)
        repo = payload.get("repository") if isinstance(payload, dict) else None
        repository = repo.get("full_name") if isinstance(repo, dict) and isinstance(repo.get("full_name"), str) \
            else None
        routing = await router.route(body, request.headers.get("x-hub-signature-256"), repository)
        if not routing.verified:
            return _problem(401, UNVERIFIED)
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not EVENT.match(event):
            return _problem(400, "missing or invalid X-GitHub-Event header", "X-GitHub-Event")
        if not DELIVERY_ID.match(delivery):
            return _problem(400, "missing or invalid X-GitHub-Delivery header", "X-GitHub-Delivery")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _problem(415, "content type must be application/json (set it in the webhook's settings)")
        if isinstance(payload, Exception):
            return _problem(400, f"invalid JSON: {str(payload)[:200]}", "body", "malformed_json")
        if not isinstance(payload, dict):
            return _problem(400, "the payload must be a JSON object", "body", "invalid_payload")
        if event == "ping":
            return JSONResponse({"ok": True, "zen": payload.get("zen")}, status_code=200)
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        name = event_name(event, action)
        route = state["routes"].route(name)
        if routing.unbound is not None:
            log.warning("delivery %s of %s signed with the operator's webhook secret would reach %r, an "
                        "organization: recorded as unbound (bind it: devmesh webhooks bind %s --tenant %s ...)",
                        delivery, repository, routing.unbound, repository or "OWNER/REPO", routing.unbound)
        tenants = list(routing.tenants) or [settings.tenant]
        try:
            new = await record_delivery(state["pool"], delivery_id=delivery, event=event, action=action,
                                        repository=repository, tenants=tenants, payload_json=text, route=route,
                                        unbound=routing.unbound is not None)
        except UnstorablePayload as exc:
            return _problem(400, exc.reason, exc.item, "invalid_payload")
        if not new:
            return JSONResponse({"delivery_id": delivery, "status": "duplicate"}, status_code=200)
        if routing.unbound is not None:
            return JSONResponse({"delivery_id": delivery, "event": name, "status": "unbound", "route": None},
                                status_code=202)
        if route:
            state["outbox"].notify()
        return JSONResponse({"delivery_id": delivery, "event": name, "status": "accepted" if route else "ignored",
                             "route": route}, status_code=202)

    return app
