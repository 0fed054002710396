"""uvicorn's httptools protocol with read timeouts for request headers and bodies (slowloris).

Why hand-written: uvicorn 0.54 has no header or body read timeout. Its only timer is the keep-alive one, armed
after a response and cancelled by the first byte of the next request (`data_received`), so a client that sends one
header byte every few seconds — or connects and sends nothing — holds its connection for ever (Kludex/uvicorn#157
asks for these limits; none was added). ASGI middleware cannot help: the app is called only once the headers are
complete. So this subclass arms its own timers on the protocol's parser callbacks:

- headers: from connecting (or the first byte of a later request on a kept-alive connection) to the end of the
  headers, `header_timeout_s`; late headers get 408 and the connection is closed (a connection that sent nothing
  at all is just closed);
- body: from the end of the headers to the end of the body, `body_timeout_s`; a late body gets 408 (unless the app
  already answered) and the connection is closed; the app's receive() then sees a disconnect.

Each 408 has the API's error body with a new request id. Bind the timeouts with `guarded_protocol(settings)` and
pass the class as uvicorn's `http` (deployments/gateway_server.py does).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from blocks.settings import GatewaySettings
from deployments.api.errors import error_body

__all__ = ["GuardedHttpToolsProtocol", "guarded_protocol"]

log = logging.getLogger("devmesh.gateway")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 5.0
    body_timeout_s: float = 30.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = False
        super().connection_made(transport)
        self._arm(self.header_timeout_s, self._headers_late)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._arm(self.header_timeout_s, self._headers_late)  # from the first byte of this request

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and cycle.more_body:
            self._arm(self.body_timeout_s, lambda: self._body_late(cycle))

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, late) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, late)

    def _disarm(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._in_headers:  # connected and sent nothing: close, as the keep-alive timeout would
            self.transport.close()
            return
        log.info("%s: request headers not complete within %.1f s; answered 408", _peer(self), self.header_timeout_s)
        self._answer_408("headers", f"the request's headers did not arrive within {self.header_timeout_s:g} s")

    def _body_late(self, cycle) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if cycle.response_started:  # the app answered without reading it all: just stop waiting for the rest
            self.transport.close()
            return
        log.info("%s: request body not complete within %.1f s; answered 408", _peer(self), self.body_timeout_s)
        # from now on the app's receive() returns http.disconnect and whatever it sends is dropped
        cycle.response_started = cycle.response_complete = cycle.disconnected = True
        cycle.message_event.set()
        self._answer_408("body", f"the request's body did not arrive within {self.body_timeout_s:g} s")

    def _answer_408(self, item: str, message: str) -> None:
        request_id = uuid.uuid4().hex
        body = error_body("request_timeout", message, item=item, request_id=request_id)
        self.transport.write(b"".join([
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n",
            b"content-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n" % (len(body), request_id.encode()),
            body]))
        self.transport.close()


def _peer(protocol: HttpToolsProtocol) -> str:
    return "%s:%d" % protocol.client if protocol.client else "a client"


def guarded_protocol(gateway: GatewaySettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with the gateway settings' header and body timeouts."""
    return type("GatewayHttpProtocol", (GuardedHttpToolsProtocol,), {
        "header_timeout_s": gateway.header_timeout_s, "body_timeout_s": gateway.body_timeout_s})
