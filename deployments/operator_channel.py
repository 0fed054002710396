"""The CLI's channel to the running stack: `devmesh op run` (a dry run) asks the gateway of `devmesh up` instead of
loading Prefect, the policy and the providers in its own process.

Why: a cold CLI process that runs the guard itself imports Prefect, the operation's provider and the flow module
(about 1 CPU-s before it does anything), then loads three blocks from the Prefect server; during a webhook burst, when
the stack's processes hold both cores, that took 6 s (docs/benchmarks.md section 10; the issue asks for 3 s). The
gateway has all of it loaded already; the CLI's side of the channel needs only httpx.

Who may use it: whoever holds the stack's Prefect API credential (PREFECT_API_AUTH_STRING, or DEVMESH_HOME's
`prefect-auth` file that `devmesh up` writes with mode 600) — the operator, the same person the in-process CLI
trusts with any tenant, because that credential already reads every block (every tenant's provider credentials)
and can start the operate deployment with any tenant's request. The credential itself never travels: the CLI sends
an HMAC of a fixed label keyed by it (`operator_token`), which the gateway computes from its own environment, so the
gateway's operator route tells nothing about the credential even to someone who can reach it. The route answers
only on loopback connections, only dry runs, and runs the guard exactly as the CLI would in its own process (the
tenant's grant, policy first, audited with the CLI's actor).

Where: DEVMESH_HOME's `stack.json`, written by `devmesh up` while the stack is up (its `gateway` address). No file,
no credential, a refused connection, or a gateway without the route: the CLI runs the dry run in its own process,
as before. Hand-written because it is a few lines over httpx; there is no library for "our own CLI talks to our own
server".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["HEADER", "OPERATOR_PATH", "StackAnswer", "operator_token", "prefect_auth_string", "stack_dry_run",
           "stack_gateway"]

HEADER = "X-Devmesh-Operator"
OPERATOR_PATH = "/api/v1/operator/dry-run"
_LABEL = b"devmesh operator channel v1"
STACK_FILE = "stack.json"  # deployments.stack.STACK_FILE (not imported: that module imports httpx and Settings)


def operator_token(auth_string: str) -> str:
    """The proof of holding the Prefect API credential `auth_string` (`user:password`), without revealing it."""
    return hmac.new(auth_string.encode("utf-8"), _LABEL, hashlib.sha256).hexdigest()


def prefect_auth_string(home: Path | None) -> str | None:
    """The stack's Prefect API credential: PREFECT_API_AUTH_STRING, else DEVMESH_HOME's prefect-auth file."""
    given = os.environ.get("PREFECT_API_AUTH_STRING")
    if given:
        return given
    if home is None:
        return None
    try:
        return (Path(home).expanduser() / "prefect-auth").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def stack_gateway(home: Path) -> str | None:
    """The gateway of the running `devmesh up` (from its stack.json), as a loopback URL; None when it is not up."""
    try:
        info = json.loads((Path(home).expanduser() / STACK_FILE).read_text(encoding="utf-8"))
        url = str(info["gateway"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for wildcard in ("//0.0.0.0:", "//[::]:"):  # bound to every address: reach it on loopback
        url = url.replace(wildcard, "//127.0.0.1:")
    return url if url.startswith("http://") or url.startswith("https://") else None


class StackAnswer:
    """The gateway's answer: `summary` (status 200), or `status`, `code` and `message` of a refusal."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.summary = body if status == 200 else None
        error = body.get("error") or {} if isinstance(body, dict) else {}
        self.code, self.message = error.get("code"), error.get("message") or f"the gateway answered {status}"


def stack_dry_run(home: Path, *, operation: str, arguments: dict[str, Any], tenant: str, user: str,
                  idempotency_key: str | None, timeout_s: float = 120.0) -> StackAnswer | None:
    """Ask the running stack for the dry run; None when it cannot be asked (not up, no credential, connection
    refused, a gateway without the route or refusing the token): then the caller runs it in its own process. A
    request that was sent but got no answer is not retried here (httpx's error propagates)."""
    url, auth = stack_gateway(home), prefect_auth_string(home)
    if url is None or auth is None:
        return None
    import httpx

    body = {"operation": operation, "arguments": arguments, "tenant": tenant, "user": user,
            "idempotency_key": idempotency_key}
    try:
        response = httpx.post(url + OPERATOR_PATH, json=body, headers={HEADER: operator_token(auth)},
                              timeout=httpx.Timeout(timeout_s, connect=3.0))
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return None  # nothing was sent
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    answer = StackAnswer(response.status_code, payload if isinstance(payload, dict) else {})
    if response.status_code in (401, 404) or answer.code == "operator_only":
        return None  # an older gateway, another stack's credential, or not on loopback: do it here
    return answer
