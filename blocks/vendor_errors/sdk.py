"""The openai and anthropic SDKs' failures as devmesh errors (see blocks/vendor_errors); both SDKs are generated
by Stainless and share their exception classes' names and fields."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from blocks.errors import AppError, MalformedResponse, ProviderTimeout, TransientError
from blocks.retry import error_for_status, scrub
from blocks.vendor_errors.secrets import Secrets, resolve

__all__ = ["map_sdk_errors"]


@contextmanager
def map_sdk_errors(sdk: Any, operation: str, *, provider: str, secrets: Secrets = ()) -> Iterator[None]:
    """Within, for `sdk` (the imported openai or anthropic module): APITimeoutError ProviderTimeout,
    APIConnectionError TransientError, APIStatusError by its status (blocks.retry.error_for_status, with the
    message of the body's `error` object, or of the body itself as OpenAI's SDK hands it), and a body the SDK or
    the code within could not use MalformedResponse."""
    try:
        yield
    except AppError:
        raise
    except sdk.APITimeoutError:
        raise ProviderTimeout("no answer within the timeout", provider=provider, operation=operation) from None
    except sdk.APIConnectionError as exc:
        message = f"connection failed: {scrub(exc, *resolve(secrets))}"
        raise TransientError(message, provider=provider, operation=operation) from None
    except sdk.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("error") if isinstance(body.get("error"), dict) else body
        message = scrub(detail.get("message") or exc.message, *resolve(secrets))
        raise error_for_status(exc.status_code, message, provider=provider, operation=operation,
                               headers=exc.response.headers) from None
    except (sdk.APIResponseValidationError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        message = f"unusable response body ({type(exc).__name__}: {scrub(exc, *resolve(secrets), limit=120)})"
        raise MalformedResponse(message, provider=provider, operation=operation) from None
