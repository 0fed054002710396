"""Serve the gateway with uvicorn the way devmesh needs it: `python -m deployments.gateway_server [--host H]
[--port P]` (what `devmesh up` runs; one process per replica).

- header and body read timeouts (deployments/http_protocol.py; Settings.gateway.header_timeout_s, body_timeout_s);
- uvicorn's own X-Forwarded-For handling off (`proxy_headers=False`: it trusts 127.0.0.1 by default, so anyone
  on loopback could name any client address); the admission gate reads forwarded headers itself, only from
  Settings.admission.trusted_proxies;
- no `server` header, no access log (the gateway's metrics and logs carry what matters).

Several replicas over one database share their limits and lockouts (tasks/ratelimit.py); give each its own
PROMETHEUS_MULTIPROC_DIR (or none), so that each /metrics reports its own process.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn

from blocks.settings import Settings
from deployments.http_protocol import guarded_protocol

__all__ = ["main", "uvicorn_config"]


def uvicorn_config(settings: Settings, *, host: str | None = None, port: int | None = None, app=None,
                   **options) -> uvicorn.Config:
    """uvicorn's Config for the gateway (`app` defaults to the create_app factory, which reads Settings itself)."""
    return uvicorn.Config(
        app or "deployments.gateway:create_app", factory=app is None, host=host or settings.gateway.host,
        port=port or settings.gateway.port, http=guarded_protocol(settings.gateway), loop="uvloop",
        proxy_headers=False, server_header=False, access_log=False, lifespan="on", **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.gateway_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="bind address (default: DEVMESH_GATEWAY__HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default: DEVMESH_GATEWAY__PORT)")
    args = parser.parse_args(argv)
    uvicorn.Server(uvicorn_config(Settings(), host=args.host, port=args.port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
