"""The audit trail's signing key: Ed25519, kept in a Prefect Secret block the database never sees.

Why Ed25519 and not HMAC: an HMAC key verifies and forges alike, so everyone who can check the trail could also
rewrite it. An Ed25519 public key only verifies: `devmesh audit key --public` hands it to an auditor (or pins it
in each checkpoint), and holding it gives no power to sign. Signing costs ~50 µs a record, verifying ~100 µs.

The private key lives in a Prefect `Secret` block (default name `devmesh-audit-key`; Prefect encrypts block
values with PREFECT_SERVER_ENCRYPTION_KEY) as the urlsafe base64 of its 32 raw bytes. `load_or_create_audit_key`
creates it on first use (`devmesh up` does so at start-up); the value is registered with blocks.redact so that it
never reaches a log line, and no function here prints or returns it except `AuditKey.private_b64` for saving.
"""

from __future__ import annotations

import base64
import hashlib
import threading

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from blocks.errors import ConfigError
from blocks.redact import register_secrets

__all__ = ["AuditKey", "load_or_create_audit_key"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AuditKey:
    """An Ed25519 key pair (or only its public half, for verifying)."""

    def __init__(self, public: Ed25519PublicKey, private: Ed25519PrivateKey | None = None):
        self._public, self._private = public, private
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_b64 = _b64(raw)
        self.fingerprint = "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def generate(cls) -> AuditKey:
        private = Ed25519PrivateKey.generate()
        return cls(private.public_key(), private)

    @classmethod
    def from_private_b64(cls, text: str) -> AuditKey:
        try:
            private = Ed25519PrivateKey.from_private_bytes(_unb64(text.strip()))
        except ValueError:
            raise ConfigError("the audit key block does not hold an Ed25519 private key (32 bytes, urlsafe "
                              "base64)") from None
        return cls(private.public_key(), private)

    @classmethod
    def from_public_b64(cls, text: str) -> AuditKey:
        try:
            return cls(Ed25519PublicKey.from_public_bytes(_unb64(text.strip())))
        except ValueError:
            raise ConfigError("not an Ed25519 public key (32 bytes, urlsafe base64)") from None

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    def private_b64(self) -> str:
        """The private key, for saving into its Secret block (never print it)."""
        if self._private is None:
            raise ConfigError("this audit key holds only the public half")
        return _b64(self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def sign(self, message: bytes) -> str:
        if self._private is None:
            raise ConfigError("this audit key holds only the public half: it can verify, not sign")
        return _b64(self._private.sign(message))

    def verify(self, message: bytes, signature: str | None) -> bool:
        if not signature:
            return False
        try:
            self._public.verify(_unb64(signature), message)
            return True
        except (InvalidSignature, ValueError):
            return False

    def public_only(self) -> AuditKey:
        return AuditKey(self._public)


_lock = threading.Lock()


def load_or_create_audit_key(block_name: str) -> tuple[AuditKey, bool]:
    """(the key in Secret block `block_name`, whether it was created now). Two processes creating it at once both
    end up with the one that was saved first."""
    from prefect.blocks.system import Secret

    with _lock:
        created = False
        try:
            value = Secret.load(block_name).get()
        except ValueError:  # no such block: the first use
            key = AuditKey.generate()
            try:
                Secret(value=key.private_b64()).save(block_name, overwrite=False)
                created = True
            except ValueError:  # another process saved it first: use theirs
                pass
            value = Secret.load(block_name).get()
        if not isinstance(value, str):
            raise ConfigError(f"Secret block {block_name!r} must hold the audit key as a string")
        register_secrets([value.strip()])
        return AuditKey.from_private_b64(value), created
