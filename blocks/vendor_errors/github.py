"""PyGithub's and requests' failures as devmesh errors (see blocks/vendor_errors)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from blocks.errors import (
    AppError,
    AuthFailed,
    InvalidRequest,
    MalformedResponse,
    NotFound,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    TransientError,
)
from blocks.retry import parse_retry_after, scrub
from blocks.vendor_errors.secrets import Secrets, resolve

__all__ = ["PARSE_ERRORS", "map_github_errors"]

PROVIDER = "github"
# What PyGithub raises when a 2xx body is not what it expects (it reads attributes and asserts on types).
PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, TypeError, AttributeError, AssertionError)


@contextmanager
def map_github_errors(operation: str, *, secrets: Secrets = (),
                      unusable: tuple[type[Exception], ...] = PARSE_ERRORS) -> Iterator[None]:
    """Within: PyGithub's GithubException by its status (429 and a 403 that says rate limit: RateLimited with
    GitHub's wait; 401/403 AuthFailed; 404/410 NotFound; 408 ProviderTimeout; 5xx TransientError; else
    InvalidRequest), requests' timeouts and lost connections (ProviderTimeout, TransientError), and a body PyGithub
    could not use (BadAttributeException, and `unusable`: MalformedResponse). Pass `unusable=()` around code that
    does more than read GitHub's answers, where a ValueError is a bug to see, not GitHub's."""
    import requests
    from github.GithubException import BadAttributeException, GithubException

    try:
        yield
    except AppError:
        raise
    except GithubException as exc:
        raise _error(exc, operation, resolve(secrets)) from None
    except requests.Timeout:
        raise ProviderTimeout("no answer within the timeout", provider=PROVIDER, operation=operation) from None
    except requests.RequestException as exc:
        message = f"connection failed: {scrub(exc, *resolve(secrets))}"
        raise TransientError(message, provider=PROVIDER, operation=operation) from None
    except (BadAttributeException, *unusable) as exc:
        message = f"unusable response ({type(exc).__name__}: {scrub(exc, *resolve(secrets), limit=160)})"
        raise MalformedResponse(message, provider=PROVIDER, operation=operation) from None


def _error(exc: Any, operation: str, secrets: tuple[str | None, ...]) -> ProviderError:
    from github.GithubException import RateLimitExceededException

    status = exc.status
    data = exc.data if isinstance(exc.data, dict) else {}
    headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
    message = str(data.get("message") or exc.message or "no message")
    text = scrub(f"HTTP {status}: {message}{_details(data.get('errors'))}", *secrets)
    where = {"provider": PROVIDER, "operation": operation, "status": status}
    if isinstance(exc, RateLimitExceededException) or status == 429 or (
            status == 403 and _is_rate_limit(message, headers)):
        return RateLimited(text, retry_after=_retry_after(headers), **where)
    if status in (401, 403):
        return AuthFailed(text, **where)
    if status in (404, 410):
        return NotFound(text, **where)
    if status == 408:
        return ProviderTimeout(text, **where)
    if status >= 500:
        return TransientError(text, **where)
    return InvalidRequest(text, **where)


def _is_rate_limit(message: str, headers: Mapping[str, str]) -> bool:
    from github.Requester import Requester

    text = message.lower()
    return "rate limit" in text or Requester.isRateLimitError(text) or headers.get("x-ratelimit-remaining") == "0"


def _retry_after(headers: Mapping[str, str]) -> float:
    """GitHub's rule: `retry-after` seconds; else, with no requests remaining, until `x-ratelimit-reset`; else 60."""
    if (after := parse_retry_after(headers)) is not None:
        return after
    if headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(1.0, float(headers["x-ratelimit-reset"]) - time.time())
        except (KeyError, ValueError):
            pass
    return 60.0


def _details(errors: Any) -> str:
    """GitHub's `errors` list of a 400/422 as text: `Issue.title missing_field`."""
    if not isinstance(errors, list) or not errors:
        return ""
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            where = ".".join(str(error[k]) for k in ("resource", "field") if error.get(k))
            what = " ".join(str(error[k]) for k in ("code", "message") if error.get(k))
            parts.append(f"{where} {what}".strip())
        else:
            parts.append(str(error))
    return f" ({'; '.join(parts)})"
