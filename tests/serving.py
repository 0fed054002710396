"""Serve an ASGI app under a real uvicorn in a thread of the test process, on 127.0.0.1.

    with serve(app) as url:          # http://127.0.0.1:<free port>
        httpx.get(f"{url}/healthz")

`config` gives uvicorn a Config of its own (e.g. the gateway server's); `port` a fixed port instead of a free one.
The server is stopped (and its thread joined) when the block ends, whatever happens in it. `served(settings)` is
the gateway app served with the gateway server's own uvicorn config (its timeouts and limits), as `devmesh up` does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from pydantic import SecretStr

__all__ = ["serve", "served"]


@contextlib.contextmanager
def serve(app=None, config: uvicorn.Config | None = None, *, port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run `app` (or `config`'s app) under uvicorn with lifespan on; yields the base URL once it accepts
    connections. RuntimeError if it does not start within `timeout` s."""
    if config is None:
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on")
    sock = socket.socket()
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="devmesh-test-uvicorn",
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{sock.getsockname()[1]} within {timeout} s")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextlib.contextmanager
def served(settings):
    """The gateway under uvicorn with the gateway server's config; yields (host, port)."""
    from blocks.webhooks import GitHubWebhook
    from deployments.gateway import create_app
    from deployments.gateway_server import uvicorn_config
    from tests.rest import no_emit

    app = create_app(settings, webhook=GitHubWebhook(secrets=[SecretStr("slow-client-test-secret")]), emit=no_emit)
    config = uvicorn_config(settings, app=app, host="127.0.0.1", log_config=None, log_level="warning")
    with serve(app, config) as url:
        host, _, port = url.removeprefix("http://").partition(":")
        yield host, int(port)
