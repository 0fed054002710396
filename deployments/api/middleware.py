"""ASGI middleware of the API: a request id on every response, a cap on body size, and no unhandled 500s.

- `X-Request-ID`: the client's when it is sane (1-128 of A-Z a-z 0-9 . _ : -), else a new one; on every response
  and in every error body (request.state.request_id).
- Bodies under /api/ larger than `max_body` bytes: 413, by Content-Length before reading, or while streaming.
- An exception no handler took: logged with its traceback, answered 500 `internal` with the request id only.

`Deadline` (the gateway adds it inside RequestContext): a request not answered within its deadline gets 504
`deadline_exceeded` naming the request id.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.api.errors import error_body

__all__ = ["Deadline", "MAX_BODY", "RequestContext"]

log = logging.getLogger("devmesh.api")
MAX_BODY = 2 * 1024 * 1024
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _error(status: int, code: str, message: str, request_id: str) -> tuple[dict, bytes]:
    body = error_body(code, message, request_id=request_id)
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, body


class RequestContext:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY, prefix: str = "/api/") -> None:
        self.app, self.max_body, self.prefix = app, max_body, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        if scope["path"].startswith(self.prefix):
            declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                status, code = (413, "payload_too_large") if declared.isdigit() else (400, "bad_request")
                start, body = _error(status, code, f"the body must be at most {self.max_body} bytes"
                                     if status == 413 else "invalid Content-Length", request_id)
                await send_with_id(start)
                await send_with_id({"type": "http.response.body", "body": body})
                return
            receive = self._capped(receive)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            start, body = _error(500, "internal", "internal error; quote the request id when reporting it",
                                 request_id)
            await send_with_id(start)
            await send_with_id({"type": "http.response.body", "body": body})

    def _capped(self, receive: Receive) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, f"the body must be at most {self.max_body} bytes")
            return message

        return capped


class Deadline:
    """A deadline for each HTTP request: not answered within `seconds`, it gets 504 `deadline_exceeded` with its
    request id (a response already started is cut off instead).

    The app runs in a task of its own, because a sync route runs in a worker thread that cancellation cannot
    stop, and awaiting its cancellation would wait for the thread: the 504 goes out on time, the abandoned
    task's later sends are dropped, and its work (which may still commit) finishes in the background. Hence the
    message: a write may still happen, check before retrying it.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = expired = False

        async def sending(message: Message) -> None:
            nonlocal started
            if expired:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, sending))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.seconds)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            task.result()  # its exception, if any, goes to RequestContext
            return
        expired = True
        task.cancel()
        task.add_done_callback(_forget)
        request_id = scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        log.warning("%s %s (request %s) passed its deadline of %.0f s", scope.get("method"), scope.get("path"),
                    request_id, self.seconds)
        if not started:
            start, body = _error(504, "deadline_exceeded", f"the request was not answered within "
                                 f"{self.seconds:g} s (request {request_id}); a write may still complete: check "
                                 "before retrying it", request_id)
            await send(start)
            await send({"type": "http.response.body", "body": body})


def _forget(task: asyncio.Future) -> None:
    """Retrieve an abandoned request task's outcome, so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
