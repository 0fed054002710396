"""Mount the REST API (/api/v1) into a FastAPI app: routes, error handlers and the request middleware."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from blocks.settings import Settings
from deployments.api import contexts, embeddings, operations, operator, orgs, search, tools
from deployments.api.errors import install_error_handlers
from deployments.api.middleware import MAX_BODY, RequestContext
from deployments.api.schemas import ErrorBody
from deployments.api.state import ApiState
from tasks.runtime import Runtime

__all__ = ["PREFIX", "api_router", "mount_api"]

PREFIX = "/api/v1"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in (
        (400, "Malformed request (bad JSON)"), (401, "Missing, invalid or revoked API key"),
        (403, "The key lacks a scope, or the policy denied the operation"), (404, "No such resource in your tenant"),
        (409, "Conflict (approval required, already decided ...)"), (410, "Expired"),
        (413, "Body too large"), (422, "Invalid input; `fields` names each bad field"),
        (429, "Rate limited or locked out; see Retry-After"), (503, "A dependency is unavailable or unconfigured"),
    )
}


def api_router() -> APIRouter:
    """Every route of the API, relative to PREFIX; a route without a summary gets its docstring's first sentence
    (FastAPI's default is the function's name: "Contexts", "Store")."""
    router = APIRouter(responses=ERRORS)
    for module in (orgs, contexts, embeddings, search, tools, operations, operator):
        for route in module.router.routes:
            if isinstance(route, APIRoute) and not route.summary and route.description:
                route.summary = _first_sentence(route.description)
        router.include_router(module.router)
    return router


def _first_sentence(text: str) -> str:
    line = " ".join(text.split())
    cut = min((i for i in (line.find(". "), line.find("; ")) if i > 0), default=len(line))
    return line[:cut].rstrip(".")


def mount_api(app: FastAPI, state: dict[str, Any], runtime: Runtime | Settings, *,
              max_body: int = MAX_BODY) -> ApiState:
    """Add the API to `app`, over the host's Runtime (settings: one over them). `state` is shared with the host app
    (limiter, lockout, ops overrides: see deployments/api/state.py); the API needs no lifespan of its own (it uses
    the process-wide sync pool)."""
    api = ApiState(state, runtime)
    app.state.devmesh_api = api
    app.include_router(api_router(), prefix=PREFIX)
    install_error_handlers(app)
    app.add_middleware(RequestContext, max_body=max_body)
    return api
