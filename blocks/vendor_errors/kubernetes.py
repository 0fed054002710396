"""The Kubernetes client's failures (ApiException with its Status body, urllib3's network errors) as devmesh errors
(see blocks/vendor_errors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from blocks.errors import (
    AppError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermanentError,
    ProviderError,
    ProviderTimeout,
    TransientError,
)
from blocks.retry import error_for_status, scrub
from blocks.vendor_errors.secrets import Secrets, resolve

__all__ = ["map_kube_errors"]

PROVIDER = "kubernetes"


@contextmanager
def map_kube_errors(operation: str, *, secrets: Secrets = (), timeout: float | None = None) -> Iterator[None]:
    """Within: an ApiException as the error its Status body means (404 NotFound; 409 Conflict, or InvalidRequest
    for a server-side apply's field-manager conflict, which a retry cannot settle; 410 TransientError; 422
    InvalidRequest naming the invalid fields; no answer at all PermanentError; else by status), and urllib3's
    failures to reach the API server (ProviderTimeout naming `timeout`, a TLS failure PermanentError, else
    TransientError)."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except AppError:
        raise
    except ApiException as exc:
        # `from None`: the exception holds the raw body and headers.
        raise _api_error(exc, operation, resolve(secrets)) from None
    except urllib3.exceptions.HTTPError as exc:
        raise _network_error(exc, operation, resolve(secrets), timeout) from None


def _fail(cls: type[ProviderError], message: str, operation: str, secrets: tuple[str | None, ...],
          **extra: Any) -> ProviderError:
    return cls(scrub(message, *secrets, limit=600), provider=PROVIDER, operation=operation, **extra)


def _api_error(exc: Any, operation: str, secrets: tuple[str | None, ...]) -> ProviderError:
    try:
        status = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        status = {}
    status = status if isinstance(status, dict) else {}
    code, reason = exc.status or 0, status.get("reason") or exc.reason or ""
    message = status.get("message") or str(exc.reason or "no message")
    causes = (status.get("details") or {}).get("causes") or []

    def fail(cls: type[ProviderError], text: str) -> ProviderError:
        return _fail(cls, text, operation, secrets, status=code or None)

    if code == 0:
        return fail(PermanentError, f"request failed before any answer: {message}")
    if code == 404:
        return fail(NotFound, f"HTTP 404 {reason}: {message}")
    if code == 409:
        owners = [c for c in causes if c.get("reason") == "FieldManagerConflict"]
        if owners or message.startswith("Apply failed"):
            fields = "; ".join(f"{c.get('message')}: {c.get('field')}" for c in owners) or message
            return fail(InvalidRequest, f"HTTP 409 apply conflict: {fields}. Retrying cannot help: drop "
                        "these fields from the manifest, or set force_conflicts to take them over")
        # a stale resourceVersion, or AlreadyExists from racing creates: re-read (or re-apply) settles both
        return fail(Conflict, f"HTTP 409 {reason}: {message}")
    if code == 410:
        return fail(TransientError, f"HTTP 410 {reason}: {message}")
    if code == 422:
        head = message.split(" is invalid:")[0] + " is invalid" if " is invalid:" in message else message
        listed = "; ".join(f"{c.get('field')}: {c.get('message')}" for c in causes)
        return fail(InvalidRequest, f"HTTP 422 {reason}: {head}" + (f": {listed}" if listed else ""))
    text = message if message == reason else f"{reason}: {message}"
    return error_for_status(code, scrub(text, *secrets, limit=600), provider=PROVIDER, operation=operation,
                            headers=exc.headers)


def _network_error(exc: Any, operation: str, secrets: tuple[str | None, ...],
                   timeout: float | None) -> ProviderError:
    import urllib3

    cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError too, in urllib3
        return _fail(TransientError, f"cannot reach the API server: {cause}", operation, secrets)
    if isinstance(cause, urllib3.exceptions.TimeoutError):
        within = f"within {timeout:g} s" if timeout is not None else "in time"
        return _fail(ProviderTimeout, f"no answer {within} ({type(cause).__name__})", operation, secrets)
    if isinstance(cause, urllib3.exceptions.SSLError):
        return _fail(PermanentError, f"TLS with the API server failed: {cause}", operation, secrets)
    return _fail(TransientError, f"cannot reach the API server: {cause}", operation, secrets)
