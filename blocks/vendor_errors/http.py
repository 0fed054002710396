"""httpx's transport failures as devmesh errors (see blocks/vendor_errors); an HTTP answer's status is the
caller's to read (blocks.retry.error_for_status), as httpx raises nothing for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from blocks.errors import AppError, ProviderTimeout, TransientError
from blocks.retry import scrub
from blocks.vendor_errors.secrets import Secrets, resolve

__all__ = ["map_httpx_errors"]


@contextmanager
def map_httpx_errors(operation: str, *, provider: str, secrets: Secrets = ()) -> Iterator[None]:
    """Within: httpx's timeouts ProviderTimeout, its other transport failures (refused, reset, TLS) TransientError."""
    import httpx

    try:
        yield
    except AppError:
        raise
    except httpx.TimeoutException:
        raise ProviderTimeout("no answer within the timeout", provider=provider, operation=operation) from None
    except httpx.TransportError as exc:
        message = f"connection failed: {scrub(exc, *resolve(secrets))}"
        raise TransientError(message, provider=provider, operation=operation) from None
