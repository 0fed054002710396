"""botocore's failures (boto3's clients, AWS operations and Bedrock alike) as devmesh errors (see
blocks/vendor_errors)."""

from __future__ import annotations

from collections.abc import Iterator
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

__all__ = ["map_aws_errors"]

# AWS error codes (the services' botocore models) by what they mean; an unlisted code goes by its HTTP status.
THROTTLED = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded", "SlowDown",
             "ProvisionedThroughputExceededException", "RequestThrottled",
             "ServiceQuotaExceededException"}  # Bedrock: "You can resubmit your request later"
DENIED = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
          "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch", "InvalidAccessKeyId",
          "InvalidSignatureException"}
MISSING = {"NoSuchBucket", "NoSuchKey", "NotFound", "404", "ServiceNotFoundException", "ClusterNotFoundException",
           "ResourceNotFoundException"}
TIMED_OUT = {"ModelTimeoutException", "RequestTimeout", "RequestTimeoutException"}
UNAVAILABLE = {"InternalError", "InternalFailure", "InternalServerException", "ServiceUnavailable",
               "ServiceUnavailableException", "ServerException", "ModelNotReadyException"}


@contextmanager
def map_aws_errors(operation: str, *, provider: str = "aws", secrets: Secrets = ()) -> Iterator[None]:
    """Within: a ClientError by its error code, else its HTTP status (throttling RateLimited with the Retry-After
    AWS sent; denied or expired credentials AuthFailed; a missing bucket, key, service or model NotFound; a model
    or request timeout ProviderTimeout; internal or unavailable TransientError; the rest as
    InvalidRequest), and botocore's own failures (timeouts ProviderTimeout, lost connections
    TransientError, missing credentials AuthFailed, parameters it refused InvalidRequest, anything else
    MalformedResponse). `provider` names the service in the message ("aws", "bedrock")."""
    from botocore import exceptions as bc

    try:
        yield
    except AppError:
        raise
    except bc.ClientError as exc:
        raise _client_error(exc, operation, provider, resolve(secrets)) from None
    except bc.BotoCoreError as exc:
        message = scrub(exc, *resolve(secrets))
        where = {"provider": provider, "operation": operation}
        if isinstance(exc, (bc.ConnectTimeoutError, bc.ReadTimeoutError)):
            raise ProviderTimeout(message, **where) from None
        if isinstance(exc, (bc.ConnectionError, bc.HTTPClientError)):
            raise TransientError(message, **where) from None
        if isinstance(exc, (bc.NoCredentialsError, bc.PartialCredentialsError)):
            raise AuthFailed(f"AWS credentials: {message}", **where) from None
        if isinstance(exc, bc.ParamValidationError):
            raise InvalidRequest(message, **where) from None
        raise MalformedResponse(message, **where) from None


def _client_error(exc: Any, operation: str, provider: str, secrets: tuple[str | None, ...]) -> ProviderError:
    code = exc.response.get("Error", {}).get("Code", "")
    meta = exc.response.get("ResponseMetadata", {})
    status, headers = meta.get("HTTPStatusCode") or 0, meta.get("HTTPHeaders") or {}
    message = scrub(exc, *secrets)
    where = {"provider": provider, "operation": operation, "status": status or None}
    if code in THROTTLED or status == 429:
        return RateLimited(message, retry_after=parse_retry_after(headers), **where)
    if code in DENIED or status in (401, 403):
        return AuthFailed(message, **where)
    if code in MISSING or status == 404:
        return NotFound(message, **where)
    if code in TIMED_OUT or status == 408:
        return ProviderTimeout(message, **where)
    if code in UNAVAILABLE or status >= 500:
        return TransientError(message, **where)
    return InvalidRequest(message, **where)  # ValidationException and every other refusal of the request
