"""devmesh as an MCP server (official `mcp` SDK): memory, search and the guarded DevOps operations as tools.

    python -m deployments.mcp_server --stdio     # DEVMESH_API_KEY, checked at start and again on every request
    mcp_http_app(runtime)                         # streamable HTTP (ASGI); a key per request: Bearer or X-API-Key

Every request runs as its key's principal: the key's tenant (no tool takes a tenant) and scopes — read
(`context_get`, `search`, `find_similar`), write (`context_create`, `context_append`), operate (one tool per
operation, named as the operation: `github.create_issue`; MCP names allow `[A-Za-z0-9_.-]`). Operations run only
through the guard (`flows.operate.submit_operation`: plan, policy, audit; an operation needing approval starts the
operate deployment, which pauses for the decision), `dry_run` true unless the call
says false. Failures are tool results with isError and devmesh's message, never a protocol crash.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request

from blocks.errors import AppError, AuthFailed, InputError, StoreError
from blocks.policy import OperationPolicy
from blocks.redact import redact
from blocks.settings import Settings
from blocks.storable import StorableModel
from deployments.admission import AdmissionGate, Refusal
from deployments.api.errors import send_error
from deployments.memory import Memory
from flows.operate import OperateRequest, submit_operation
from tasks.context_models import MAX_APPEND, ContextCreate, MessageIn
from tasks.grants import override_for
from tasks.runtime import Runtime
from tasks.ops.base import Connections
from tasks.tenancy import Principal, authenticate
from tasks.tools import is_memory_tool, list_tools

__all__ = ["McpHttpApp", "PrincipalResolver", "build_server", "main", "mcp_http_app", "mount", "transport_security"]

log = logging.getLogger("devmesh.mcp")
PrincipalResolver = Callable[[ServerRequestContext], Principal]  # raises AuthFailed; called in a worker thread
PRINCIPAL_KEY = "devmesh.principal"  # where the HTTP app leaves the authenticated principal in the ASGI scope
MAX_BODY = 4 * 1024 * 1024  # bytes of one JSON-RPC POST (the SDK's transport reads a body whole, with no cap)
GUARD_FIELDS = ("dry_run", "idempotency_key")


class _Args(StorableModel):
    model_config = ConfigDict(extra="forbid")


class AppendArgs(_Args):
    context_id: str = Field(..., description="The context's id (from context_create).")
    messages: list[MessageIn] = Field(..., min_length=1, max_length=MAX_APPEND, description="In order.")


class GetArgs(_Args):
    context_id: str
    offset: int = Field(0, description="First message; negative counts from the end (-20: the last 20).")
    limit: int = Field(100, ge=0, le=1000, description="Messages to return.")


class SearchArgs(_Args):
    query: str = Field(..., min_length=1, max_length=10_000, description="What to look for.")
    context_id: str | None = Field(None, description="Only this conversation.")
    user_id: str | None = Field(None, description="Only this user's conversations.")
    mode: Literal["hybrid", "vector", "keyword"] = Field("hybrid", description="Ranking: hybrid (both fused), vector, BM25.")
    limit: int = Field(10, ge=1, le=100, description="Hits to return.")
    created_after: AwareDatetime | None = Field(None, description="Only what was said (or stored) at or after this "
                                                "time, ISO 8601 with a time zone.")
    created_before: AwareDatetime | None = Field(None, description="Only what was said (or stored) before this time.")


class SimilarArgs(_Args):
    context_id: str
    limit: int = Field(5, ge=1, le=50, description="Contexts to return.")


def _parse(model: type[_Args], arguments: dict, tool: str) -> _Args:
    try:
        return model.model_validate(arguments)
    except ValidationError as exc:
        raise InputError(f"invalid arguments: {_problems(exc)}", item=tool) from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(input)'}: {e['msg']}" for e in exc.errors())


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


@dataclass(frozen=True)
class _Tool:
    """One MCP tool: what the client sees, the scope it needs, and the call (sync, run in a worker thread)."""

    spec: types.Tool
    scope: str
    call: Callable[[Principal, dict[str, Any]], dict[str, Any]]


class _Tools:
    """The tool table of one server: memory tools over a Memory per tenant, operation tools over the guard."""

    def __init__(self, runtime: Runtime, connections: Connections | None, policy: OperationPolicy | None):
        self.runtime, self.connections, self.policy = runtime, connections, policy
        self.settings = runtime.settings
        self._memories: dict[str, Memory] = {}
        self._lock = threading.Lock()
        self.table = {t.spec.name: t for t in self._memory_tools() + self._operation_tools()}

    def memory(self, principal: Principal) -> Memory:
        with self._lock:
            if principal.tenant not in self._memories:
                self._memories[principal.tenant] = Memory(principal.tenant, runtime=self.runtime)
            return self._memories[principal.tenant]

    def _memory_tools(self) -> list[_Tool]:
        create_schema = ContextCreate.model_json_schema()
        create_schema["properties"].pop("key_name")  # the server's key block, not the client's choice

        def create(p: Principal, a: dict) -> dict:
            if "key_name" in a:
                raise InputError("key_name cannot be chosen over MCP; encrypted contexts use the server's key",
                                 item="context_create")
            return _dump(self.memory(p).create_context(**a))

        def append(p: Principal, a: dict) -> dict:
            args = _parse(AppendArgs, a, "context_append")
            return _dump(self.memory(p).append(args.context_id, args.messages))

        def get(p: Principal, a: dict) -> dict:
            args = _parse(GetArgs, a, "context_get")
            return _dump(self.memory(p).get(args.context_id, offset=args.offset, limit=args.limit))

        def search(p: Principal, a: dict) -> dict:
            args = _parse(SearchArgs, a, "search")
            if args.context_id and args.user_id:
                raise InputError("give context_id or user_id, not both", item="search")
            times = {k: v for k, v in (("created_after", args.created_after), ("created_before", args.created_before))
                     if v is not None}
            hits = self.memory(p).search(args.query, context_id=args.context_id, user_id=args.user_id,
                                         mode=args.mode, limit=args.limit, **times)
            return {"hits": [_dump(h) for h in hits]}

        def similar(p: Principal, a: dict) -> dict:
            args = _parse(SimilarArgs, a, "find_similar")
            return {"similar": [_dump(s) for s in self.memory(p).similar(args.context_id, limit=args.limit)]}

        ro = types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
        add = types.ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
        return [
            _tool("context_create", "Start a conversation context (user, agent, session, type, metadata, TTL, size "
                  "limits); returns it with its id.", create_schema, add, "write", create),
            _tool("context_append", "Append messages to a context, atomically and in order; only they are chunked "
                  "and embedded.", AppendArgs.model_json_schema(), add, "write", append),
            _tool("context_get", "A context and one page of its messages.", GetArgs.model_json_schema(), ro, "read",
                  get),
            _tool("search", "Search memory by meaning and keywords: one conversation (context_id), one user's "
                  "conversations (user_id), or everything of the tenant; ranked passages with scores.",
                  SearchArgs.model_json_schema(), ro, "read", search),
            _tool("find_similar", "Conversations most like the given one (itself excluded), with similarity.",
                  SimilarArgs.model_json_schema(), ro, "read", similar),
        ]

    def _operation_tools(self) -> list[_Tool]:
        tools = []
        for entry in list_tools():
            if is_memory_tool(entry.name):
                continue  # the catalog's memory tool is scoped to one user; the MCP ones above take explicit scope
            tools.append(self._operation_tool(entry))
        return tools

    def _operation_tool(self, entry) -> _Tool:
        schema = copy.deepcopy(entry.input_schema)
        props = schema.setdefault("properties", {})
        clash = [f for f in GUARD_FIELDS if f in props]
        if clash:
            raise ValueError(f"operation {entry.name} has inputs named {clash}, which the MCP tool adds")
        description = entry.description
        if not entry.read_only:
            props["dry_run"] = {"type": "boolean", "default": True,
                                "description": "true (default): plan and check the policy only; false: execute."}
            props["idempotency_key"] = {"type": "string", "minLength": 1, "maxLength": 200,
                                        "description": "The same key never acts twice (a retry returns the first "
                                                       "result)."}
            description += " Plans only unless dry_run is false."
        annotations = types.ToolAnnotations(
            title=entry.name, read_only_hint=entry.read_only, open_world_hint=True,
            destructive_hint=None if entry.read_only else entry.destructive,
            idempotent_hint=True if entry.read_only else None)

        def call(p: Principal, a: dict) -> dict:
            args = dict(a)
            dry_run, key = (True, None) if entry.read_only else (args.pop("dry_run", True),
                                                                 args.pop("idempotency_key", None))
            if not isinstance(dry_run, bool):
                raise InputError("invalid arguments: dry_run: must be true or false", item=entry.name)
            try:
                request = OperateRequest(operation=entry.name, arguments=args, tenant=p.tenant,
                                         actor={**p.actor(), "via": "mcp"}, dry_run=dry_run, idempotency_key=key)
            except ValidationError as exc:
                raise InputError(f"invalid arguments: {_problems(exc)}", item=entry.name) from None
            # the tenant's grant, unless this server was built with an override for the tenant (tasks.grants)
            return submit_operation(request, self.runtime,
                                    connections=override_for(self.connections, p.tenant, self.settings.tenant),
                                    policy=override_for(self.policy, p.tenant, self.settings.tenant))

        return _tool(entry.name, description, schema, annotations, "operate", call)


def _tool(name, description, schema, annotations, scope, call) -> _Tool:
    return _Tool(types.Tool(name=name, description=description, input_schema=schema, annotations=annotations),
                 scope, call)


def _result(payload: dict[str, Any]) -> types.CallToolResult:
    text = json.dumps(payload, default=str, ensure_ascii=False)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=json.loads(text))


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=redact(message)[:4000])], is_error=True)


def build_server(principal_resolver: PrincipalResolver, runtime: Runtime | Settings | None = None,
                 connections: Connections | None = None, policy: OperationPolicy | None = None) -> Server:
    """The MCP server. `principal_resolver(ctx)` names the caller of each request (raises AuthFailed);
    `connections` / `policy` default to the blocks the operator granted the caller's tenant (tests pass their own:
    a mapping {tenant: value}, or one value for the operator's tenant only, as tasks.grants.override_for says).
    `runtime`: the process's Runtime (settings: one over them; None: the environment's)."""
    tools = _Tools(Runtime.of(runtime), connections, policy)

    async def principal(ctx: ServerRequestContext) -> Principal:
        return await anyio.to_thread.run_sync(principal_resolver, ctx)

    async def on_list_tools(ctx: ServerRequestContext, params) -> types.ListToolsResult:
        try:
            p = await principal(ctx)
        except AuthFailed as exc:
            raise MCPError(code=types.INVALID_REQUEST, message=str(exc)) from None
        return types.ListToolsResult(tools=[t.spec for t in tools.table.values() if p.allows(t.scope)])

    async def on_call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = tools.table.get(params.name)
        if tool is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool: {params.name}")
        try:
            p = await principal(ctx)
        except AuthFailed as exc:
            return _error(str(exc))
        if not p.allows(tool.scope):
            log.info("mcp %s refused: key %s of %s lacks scope %s", tool.spec.name, p.key_id, p.tenant, tool.scope)
            return _error(f"forbidden: this API key lacks the '{tool.scope}' scope that {tool.spec.name} needs")
        try:
            payload = await anyio.to_thread.run_sync(tool.call, p, dict(params.arguments or {}))
        except StoreError as exc:  # the full message (paths, free bytes, log lines, host) is for the server log
            log.warning("mcp %s by key %s of %s: the database failed: %s", tool.spec.name, p.key_id, p.tenant, exc)
            return _error(f"{type(exc).__name__}: the database is unavailable; retry later")
        except AppError as exc:
            log.info("mcp %s by key %s of %s failed: %s", tool.spec.name, p.key_id, p.tenant, exc)
            return _error(f"{type(exc).__name__}: {exc}")
        except ValidationError as exc:  # a model below the tool's arguments refused a value: still the caller's input
            log.info("mcp %s by key %s of %s: invalid input: %s", tool.spec.name, p.key_id, p.tenant, exc)
            return _error(f"InputError: {tool.spec.name}: invalid arguments: {_problems(exc)}")
        except Exception as exc:  # a bug or an unwrapped library error: report it, keep serving
            log.exception("mcp %s by key %s of %s crashed", tool.spec.name, p.key_id, p.tenant)
            return _error(f"internal error ({type(exc).__name__}): {exc}")
        log.info("mcp %s by key %s of %s ok", tool.spec.name, p.key_id, p.tenant)
        return _result(payload)

    return Server("devmesh", version="1", instructions=(
        "devmesh: conversation memory, search over stored documents and conversations, and guarded DevOps "
        "operations (dry run by default; a policy decides; every call is audited)."),
        on_list_tools=on_list_tools, on_call_tool=on_call_tool)


# --- streamable HTTP ---------------------------------------------------------------------------------------------

def transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection as the MCP specification requires of streamable HTTP: `Host` and `Origin` must be
    allowed values (settings.gateway.mcp_allowed_hosts / mcp_allowed_origins; default: loopback names and the
    configured bind host, any port). A request without Origin (not from a browser) passes the Origin check."""
    gateway = settings.gateway
    names = ["127.0.0.1", "localhost", "[::1]"]
    bind = gateway.host if ":" not in gateway.host else f"[{gateway.host}]"
    if gateway.host not in ("0.0.0.0", "::") and bind not in names:
        names.append(bind)
    hosts = gateway.mcp_allowed_hosts or [h for n in names for h in (n, f"{n}:*")]
    origins = gateway.mcp_allowed_origins or [o for n in names for scheme in ("http", "https")
                                              for o in (f"{scheme}://{n}", f"{scheme}://{n}:*")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


_TRANSPORT_REFUSALS = {  # the SDK's statuses, devmesh's codes and messages
    421: ("misdirected_request", "the Host header {host!r} is not an allowed host of this MCP endpoint "
                                 "(DEVMESH_GATEWAY__MCP_ALLOWED_HOSTS)", "Host"),
    403: ("forbidden_origin", "the Origin {origin!r} may not call this MCP endpoint "
                              "(DEVMESH_GATEWAY__MCP_ALLOWED_ORIGINS)", "Origin"),
    400: ("unsupported_media_type", "a POST to the MCP endpoint must be Content-Type: application/json",
          "Content-Type"),
}


def _scope_principal(ctx: ServerRequestContext) -> Principal:
    principal = getattr(ctx.request, "scope", {}).get(PRINCIPAL_KEY) if ctx.request is not None else None
    if principal is None:
        raise AuthFailed("no authenticated API key on this request", provider="devmesh", operation="authenticate")
    return principal


class McpHttpApp:
    """Streamable HTTP MCP endpoint (stateless: every POST stands alone) behind devmesh API keys.

    Each request: Host and Origin against the allowed values (421 / 403: the SDK's TransportSecuritySettings,
    checked before anything else, so a rebound page learns nothing) → the admission gate shared with the REST
    API (deployments/admission.py: 401 without a valid key, 429 locked out or rate limited, one bucket per key
    across both) → a POST body over max_body bytes: 413 (the SDK reads bodies whole) → the SDK's transport. Every
    refusal has the API's error body. The app answers on any path, so it can be routed at `/mcp`.
    Requests are served while `run()` is entered (its own ASGI lifespan does that when served alone).
    """

    def __init__(self, runtime: Runtime | Settings, *, connections: Connections | None = None,
                 policy: OperationPolicy | None = None, gate: AdmissionGate | None = None, max_body: int = MAX_BODY):
        self.runtime = Runtime.of(runtime)
        self.settings = settings = self.runtime.settings
        self.max_body = max_body
        self.server = build_server(_scope_principal, self.runtime, connections, policy)
        self.gate = gate or AdmissionGate({}, settings.admission, self.runtime.pool)
        self.security = transport_security(settings)
        self._manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def run(self):
        """Serve requests while entered (a session manager runs once, so each run gets a new one)."""
        await anyio.to_thread.run_sync(self.runtime.pool)
        manager = StreamableHTTPSessionManager(app=self.server, stateless=True, security_settings=self.security)
        async with manager.run():
            self._manager = manager
            try:
                yield self
            finally:
                self._manager = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        if self._manager is None:
            await send_error(send, 503, "unavailable", "the MCP endpoint is not running (enter McpHttpApp.run() in "
                             "the lifespan)", request_id=request_id)
            return
        headers = Headers(scope=scope)
        refused = await TransportSecurityMiddleware(self.security).validate_request(
            Request(scope), is_post=scope.get("method") == "POST")
        if refused is not None:
            code, message, item = _TRANSPORT_REFUSALS.get(refused.status_code, ("bad_request", "{body}", None))
            await send_error(send, refused.status_code, code, message.format(
                host=headers.get("host"), origin=headers.get("origin"), body=bytes(refused.body).decode()[:200]),
                item=item, request_id=request_id)
            return
        try:
            principal = await anyio.to_thread.run_sync(self.gate.admit, (scope.get("client") or (None,))[0], headers)
        except Refusal as refusal:
            await send_error(send, refusal.status, refusal.code, refusal.message, item=refusal.item,
                             request_id=request_id, headers=refusal.headers)
            return
        receive = await self._capped_body(scope, receive, send, request_id)
        if receive is None:
            return
        await self._manager.handle_request({**scope, PRINCIPAL_KEY: principal}, receive, send)

    async def _capped_body(self, scope, receive, send, request_id: str):
        """A receive that replays the request body, read here up to max_body: 413 (None returned) by Content-Length
        before reading, or as soon as the streamed body passes the cap, so a huge body is never buffered whole."""
        if scope.get("method") != "POST":
            return receive
        too_large = f"the body must be at most {self.max_body} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            if declared.isdigit():
                await send_error(send, 413, "payload_too_large", too_large, item="body", request_id=request_id)
            else:
                await send_error(send, 400, "bad_request", "invalid Content-Length", item="Content-Length",
                                 request_id=request_id)
            return None
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await send_error(send, 413, "payload_too_large", too_large, item="body", request_id=request_id)
                return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return replay

    async def _lifespan(self, receive, send) -> None:
        await receive()  # lifespan.startup
        try:
            async with self.run():
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def mcp_http_app(runtime: Runtime | Settings | None = None, **options) -> McpHttpApp:
    """The streamable HTTP endpoint as an ASGI app (options: connections, policy, gate, max_body) over the
    process's Runtime (settings: one over them; None: the environment's)."""
    return McpHttpApp(Runtime.of(runtime), **options)


def mount(app, mcp: McpHttpApp, path: str = "/mcp") -> None:
    """Route `path` of a Starlette/FastAPI app to `mcp` and run it inside the app's lifespan."""
    from starlette.routing import Route

    app.router.routes.append(Route(path, endpoint=mcp, methods=["GET", "POST", "DELETE"]))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with mcp.run(), inner(a) as state:
            yield state

    app.router.lifespan_context = lifespan


# --- stdio -------------------------------------------------------------------------------------------------------

def _stdio_resolver(pool, key: str) -> PrincipalResolver:
    def resolve(ctx: ServerRequestContext) -> Principal:
        return authenticate(pool, key)  # per request: a revoked key stops working at once
    return resolve


async def serve_stdio(runtime: Runtime, key: str) -> None:
    """Serve MCP over stdin/stdout as the principal of `key` (AuthFailed before anything is served)."""
    from mcp.server.stdio import stdio_server

    pool = await anyio.to_thread.run_sync(runtime.pool)
    principal = await anyio.to_thread.run_sync(authenticate, pool, key)
    log.info("devmesh MCP server on stdio for tenant %s, key %s (%s)", principal.tenant, principal.key_name,
             ",".join(principal.scopes))
    server = build_server(_stdio_resolver(pool, key), runtime)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(argv: list[str] | None = None) -> int:
    """`python -m deployments.mcp_server --stdio` | `--http [--host H] [--port P]`. Exit 2: no or bad key."""
    parser = argparse.ArgumentParser(prog="devmesh mcp", description="Serve devmesh's tools over MCP.")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--stdio", action="store_true", help="stdin/stdout; the key comes from DEVMESH_API_KEY (default)")
    how.add_argument("--http", action="store_true", help="streamable HTTP at /mcp; a key per request")
    parser.add_argument("--host", default=None, help="HTTP bind address (default: DEVMESH_GATEWAY__HOST)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: DEVMESH_GATEWAY__PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    runtime = Runtime()  # the process's one: its settings and store, passed down
    settings = runtime.settings
    if args.http:
        import uvicorn
        from starlette.applications import Starlette

        from deployments.gateway_server import uvicorn_config

        app = Starlette()
        mount(app, mcp_http_app(runtime))
        # the gateway's server settings: read timeouts, and uvicorn's own X-Forwarded-For trust off
        uvicorn.Server(uvicorn_config(settings, app=app, host=args.host, port=args.port)).run()
        return 0
    key = os.environ.get("DEVMESH_API_KEY", "").strip()
    if not key:
        print("devmesh mcp: set DEVMESH_API_KEY to an API key (devmesh keys create ...)", file=sys.stderr)
        return 2
    try:
        anyio.run(serve_stdio, runtime, key)
    except AuthFailed as exc:
        print(f"devmesh mcp: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
