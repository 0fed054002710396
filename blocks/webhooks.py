"""The GitHub webhook receiver's secrets and tenancy, as a Prefect block."""

from __future__ import annotations

import hashlib
import hmac
from fnmatch import fnmatchcase

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

__all__ = ["GitHubWebhook", "MIN_SECRET_CHARS", "SIGNATURE_PREFIX"]

SIGNATURE_PREFIX = "sha256="
MIN_SECRET_CHARS = 16


class GitHubWebhook(Block):
    """Secrets GitHub signs deliveries with (several at once while rotating), and which tenant a repo feeds."""

    _block_type_name = "devmesh GitHub webhook"
    _description = "Webhook secrets (rotation: list several) and repository → tenant mapping for devmesh's gateway."

    secrets: list[SecretStr] = Field(..., min_length=1, description="Every secret currently accepted.")
    default_tenant: str = Field("default", min_length=1, max_length=128)
    repo_tenants: dict[str, str] = Field(default_factory=dict,
                                         description="'owner/repo' glob → tenant; first match wins.")
    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Larger deliveries get 413 (GitHub caps at 25 MB).")

    @field_validator("secrets")
    @classmethod
    def _not_empty(cls, v: list[SecretStr]) -> list[SecretStr]:
        if any(len(s.get_secret_value()) < MIN_SECRET_CHARS for s in v):
            raise ValueError(f"webhook secrets must be at least {MIN_SECRET_CHARS} characters")
        return v

    def verify(self, body: bytes, signature: str | None) -> bool:
        """True when `signature` (X-Hub-Signature-256) is HMAC-SHA256 of the raw body under any accepted secret.
        Every secret is tried (no early exit) and compared in constant time."""
        if not signature or not signature.startswith(SIGNATURE_PREFIX) or len(signature) != len(SIGNATURE_PREFIX) + 64:
            return False
        given = signature[len(SIGNATURE_PREFIX):].encode()
        ok = False
        for secret in self.secrets:
            expected = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest().encode()
            ok |= hmac.compare_digest(expected, given)
        return ok

    def tenant_for(self, repository: str | None) -> str:
        if repository:
            for pattern, tenant in self.repo_tenants.items():
                if fnmatchcase(repository.lower(), pattern.lower()):
                    return tenant
        return self.default_tenant
