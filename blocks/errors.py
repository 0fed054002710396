"""One error tree for devmesh; entry points map it to exit codes, HTTP statuses or tool errors.

    AppError
    ├── ConfigError                 bad settings, unknown model, missing block
    ├── InputError                  bad user input: empty text, NUL bytes, binary file, wrong dimension,
    │                               unknown filter key ... (never retried; names the item)
    │   ├── ContextNotFound         no such conversation context in the tenant (names the id)
    │   ├── ContextExpired          the context's ttl has passed (the expire-contexts flow deletes it)
    │   ├── ContextLimitExceeded    max_messages, max_bytes or the per-message size would be exceeded
    │   └── ContextExists           a client-chosen context id is taken in the tenant
    ├── StoreError                  the database refused or is unreachable
    │   └── StoreUnavailable        the database as a whole cannot take the work (disk full, server gone or
    │                               restarting): no item can succeed, the message says what to do
    ├── SearchTimeout               a search ran past search.timeout_s (statement_timeout); the message is for
    │                               the caller (a narrower search may pass), unlike a StoreError's
    ├── GuardError                  OperationDenied | ApprovalRejected (ApprovalExpired) (never retried)
    └── ProviderError(.provider, .operation)
        ├── TransientError          RateLimited | ProviderTimeout | Conflict (retried)
        │                           Conflict (Kubernetes 409: re-read, re-apply)
        └── PermanentError          AuthFailed (KeyExpired) | InvalidRequest | NotFound | MalformedResponse |
                                    RolledBack (never retried)
"""

from __future__ import annotations

__all__ = [
    "AppError",
    "ConfigError",
    "InputError",
    "ContextNotFound",
    "ContextExpired",
    "ContextLimitExceeded",
    "ContextExists",
    "StoreError",
    "StoreUnavailable",
    "SearchTimeout",
    "GuardError",
    "OperationDenied",
    "ApprovalRejected",
    "ApprovalExpired",
    "ProviderError",
    "TransientError",
    "RateLimited",
    "ProviderTimeout",
    "PermanentError",
    "AuthFailed",
    "KeyExpired",
    "InvalidRequest",
    "NotFound",
    "MalformedResponse",
    "RolledBack",
    "Conflict",
    "is_transient",
]


class AppError(Exception):
    """Base of every error devmesh raises on purpose."""


class ConfigError(AppError):
    """Settings, blocks or models are missing or inconsistent; `item` is "model" when a model the caller named is
    not stored."""

    item: str | None = None


class InputError(AppError):
    """Input that can never succeed as given; `item` names what was wrong (a path, a document id)."""

    def __init__(self, message: str, *, item: str | None = None) -> None:
        self.item = item
        super().__init__(f"{item}: {message}" if item else message)


class ContextNotFound(InputError):
    """No context with this id in the tenant."""


class ContextExpired(InputError):
    """The context's ttl has passed; it is no longer readable or writable."""


class ContextLimitExceeded(InputError):
    """Appending would exceed a size limit; the message names the limit and nothing was written."""


class ContextExists(InputError):
    """A context with this client-chosen id already exists in the tenant."""


class StoreError(AppError):
    """The database failed or refused a statement."""


class StoreUnavailable(StoreError):
    """The database as a whole failed (disk full, server crashed or stopped): retrying item by item cannot help.

    What was committed before stays; an ingest re-run after the cause is fixed skips it and does the rest.
    """


class SearchTimeout(AppError):
    """A search's ranking query ran longer than search.timeout_s and was cancelled by the database."""


class GuardError(AppError):
    """A guarded operation may not run."""


class OperationDenied(GuardError):
    """The policy denied the operation; the message names the rule."""


class ApprovalRejected(GuardError):
    """A human rejected the operation, or the approval expired."""


class ApprovalExpired(ApprovalRejected):
    """No decision came within the policy's approval_timeout_s: rejected."""


class ProviderError(AppError):
    """An external provider (embedding API, GitHub, Kubernetes, AWS) failed; `status` is the HTTP status it
    answered, when it answered one (blocks/vendor_errors maps each vendor's exceptions here)."""

    def __init__(self, message: str, *, provider: str, operation: str, status: int | None = None) -> None:
        self.provider = provider
        self.operation = operation
        self.status = status
        super().__init__(f"{provider} {operation}: {message}")


class TransientError(ProviderError):
    """Worth retrying: rate limits, timeouts, 5xx."""


class RateLimited(TransientError):
    """The provider asked us to slow down; `retry_after` is in seconds when it said so."""

    def __init__(self, message: str, *, provider: str, operation: str, retry_after: float | None = None,
                 status: int | None = None):
        self.retry_after = retry_after
        super().__init__(message, provider=provider, operation=operation, status=status)


class ProviderTimeout(TransientError):
    """The provider did not answer in time."""


class PermanentError(ProviderError):
    """Retrying cannot help."""


class AuthFailed(PermanentError):
    """Credentials were refused."""


class KeyExpired(AuthFailed):
    """An API key presented after its expiry (keys.rotation_days): rotate it or issue a new one."""


class InvalidRequest(PermanentError):
    """The provider rejected the request as malformed."""


class NotFound(PermanentError):
    """The target does not exist."""


class RolledBack(PermanentError):
    """A deploy did not become ready in time and was rolled back; the message says to which revision."""


class Conflict(TransientError):
    """The target changed under us (Kubernetes 409 on a stale resourceVersion): re-read and try again."""


class MalformedResponse(PermanentError):
    """The provider answered 2xx with a body we cannot use (bad JSON, missing fields, wrong shape)."""


def is_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only TransientError, never validation or guard errors."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False
