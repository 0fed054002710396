"""Organizations (tenants) and their API keys.

A key is `devmesh_` + 43 random URL-safe characters, shown once and stored as its sha256 (a key has 256 bits of
entropy, so a fast hash is the right one — it is a password for machines, not for people). The admin's password
is stored with scrypt. Scopes: read (search, get), write (store, append), operate (run DevOps tools), admin
(keys and everything else).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from blocks.errors import AuthFailed, InputError, KeyExpired
from blocks.storable import StorableModel
from tasks.claims import (ClaimRules, RegistrationRefused, check_claim, consume_invite, invite_slug,
                          lock_registrations, normalize_slug, skeleton)

__all__ = ["KEY_PREFIX", "OrganizationCreate", "Principal", "SCOPES", "authenticate", "create_key", "list_keys",
           "list_organizations",
           "register_organization", "revoke_key", "rotate_key"]

KEY_PREFIX = "devmesh_"
SCOPES = ("read", "write", "operate", "admin")
_KEY = re.compile(r"^devmesh_[A-Za-z0-9_-]{43}$")


class OrganizationCreate(StorableModel):
    """A new organization; the Developer Mesh guide's names (organization_name, organization_slug, admin_password)
    are accepted beside devmesh's (name, slug, password), one of each."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(..., min_length=1, max_length=200, validation_alias=AliasChoices("name", "organization_name"))
    slug: str = Field(..., max_length=256, description="Letters, digits and dashes; normalised (NFKC, case-folded) "
                      "it becomes the tenant id. Reserved names, look-alikes and the operator's tenants are refused.",
                      validation_alias=AliasChoices("slug", "organization_slug"))
    admin_email: str = Field(..., max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    admin_name: str = Field(..., min_length=1, max_length=200)
    password: str = Field(..., min_length=12, max_length=1024,
                          validation_alias=AliasChoices("password", "admin_password"))
    invite: str | None = Field(None, max_length=200, description="The one-time invite token an operator gave you "
                               "(needed when registration is by invite).")

    @field_validator("slug")
    @classmethod
    def _slug(cls, v: str) -> str:
        return normalize_slug(v)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, the key, its scopes and its rate limit (None: the default)."""

    tenant: str
    key_id: str
    key_name: str
    scopes: tuple[str, ...]
    rate_per_minute: int | None = None
    burst: int | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def actor(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "api_key_id": self.key_id, "api_key_name": self.key_name}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _password_hash(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


def _check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InputError(f"scopes must be a non-empty subset of {list(SCOPES)}", item=",".join(unknown) or "scopes")
    return sorted(set(scopes), key=SCOPES.index)


def register_organization(pool: ConnectionPool, request: OrganizationCreate, rules: ClaimRules | None = None, *,
                          expires_days: int | None = None) -> tuple[dict[str, Any], str]:
    """Create the organization and its first (admin) key; returns (organization, key). The key is not kept.
    `rules` (default: open registration, 'default' the operator's tenant) decide whether the slug may be claimed:
    RegistrationRefused (closed, or no valid invite) or tasks.claims.SlugUnavailable (reserved or taken); the
    invite, if any, is consumed in the same transaction as the organization is created. `expires_days`: the key
    expires that many days from now (settings keys.rotation_days)."""
    rules = rules or ClaimRules()
    if rules.mode == "closed":
        raise RegistrationRefused("registration is closed on this service; ask its operator",
                                  code="registration_closed")
    if rules.mode == "invite" and not request.invite:
        raise RegistrationRefused("registration is by invite on this service: send the invite token an operator "
                                  "gave you in `invite`", code="invite_required")
    password_hash = _password_hash(request.password)  # outside the lock: scrypt takes ~50 ms
    with pool.connection() as conn, conn.transaction():
        lock_registrations(conn)
        valid, bound = invite_slug(conn, request.invite) if request.invite else (False, None)
        check_claim(conn, request.slug, rules, invited_for_slug=valid and bound == request.slug)
        if request.invite:
            consume_invite(conn, request.invite, request.slug)
        cur = conn.execute("INSERT INTO organizations (tenant_id, name, admin_email, admin_name, password_hash,"
                           " slug_skeleton) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id) DO NOTHING",
                           [request.slug, request.name, request.admin_email, request.admin_name, password_hash,
                            skeleton(request.slug)])
        if cur.rowcount == 0:
            raise InputError("an organization with this slug exists", item=request.slug)
        meta, key = _insert_key(conn, request.slug, "admin", ["admin"], None, None, None, expires_days)
    return {"tenant": request.slug, "name": request.name, "admin_email": request.admin_email,
            "key": meta}, key


def list_organizations(pool: ConnectionPool) -> list[dict[str, Any]]:
    """Every organization, oldest first: tenant, name, admin_email, created_at (never a password hash or key)."""
    with pool.connection() as conn:
        rows = conn.execute("SELECT tenant_id, name, admin_email, created_at FROM organizations ORDER BY created_at"
                            ).fetchall()
    return [dict(zip(("tenant", "name", "admin_email", "created_at"), row)) for row in rows]


def _insert_key(conn, tenant: str, name: str, scopes: list[str], rate: int | None, burst: int | None,
                rotated_from: str | None, expires_days: int | None = None) -> tuple[dict[str, Any], str]:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4()
    expires_at = conn.execute("INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, scopes, rate_per_minute,"
                              " burst, rotated_from, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                              " now() + %s::int * interval '1 day') RETURNING expires_at",
                              [key_id, tenant, name, key[:14], _hash(key), _check_scopes(scopes), rate, burst,
                               rotated_from, expires_days]).fetchone()[0]
    return {"id": str(key_id), "name": name, "prefix": key[:14], "scopes": _check_scopes(scopes),
            "rate_per_minute": rate, "burst": burst, "expires_at": expires_at}, key


def create_key(pool: ConnectionPool, tenant: str, name: str, scopes: list[str], *, rate_per_minute: int | None = None,
               burst: int | None = None, expires_days: int | None = None) -> tuple[dict[str, Any], str]:
    """A new key of `tenant`; returns (its listing, the key itself — shown once). It expires after `expires_days`
    (None: never)."""
    if not name.strip() or len(name) > 200:
        raise InputError("key name must be 1-200 characters", item="name")
    for field, value in (("rate_per_minute", rate_per_minute), ("burst", burst)):
        if value is not None and not 1 <= value <= 1_000_000:
            raise InputError("must be between 1 and 1,000,000", item=field)
    with pool.connection() as conn:
        return _insert_key(conn, tenant, name.strip(), scopes, rate_per_minute, burst, None, expires_days)


def list_keys(pool: ConnectionPool, tenant: str) -> list[dict[str, Any]]:
    """The tenant's keys without secrets (prefix, scopes, limits, created/last used/revoked/expiring; a rotated
    key's revoked_at is in the future during its grace period)."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT id::text, name, prefix, scopes, rate_per_minute, burst, created_at, last_used_at,"
                    " revoked_at, rotated_from::text, expires_at FROM api_keys WHERE tenant_id = %s"
                    " ORDER BY created_at", [tenant])
        return cur.fetchall()


def revoke_key(pool: ConnectionPool, tenant: str, key_id: str) -> bool:
    """Revoke a key at once (a rotated key still in its grace period too)."""
    with pool.connection() as conn:
        return conn.execute("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = %s AND id = %s"
                            " AND (revoked_at IS NULL OR revoked_at > now())", [tenant, _uuid(key_id)]).rowcount == 1


def rotate_key(pool: ConnectionPool, tenant: str, key_id: str, *, grace_hours: float = 0,
               expires_days: int | None = None) -> tuple[dict[str, Any], str]:
    """Issue a key's successor (same name, scopes and limits) and retire the key `grace_hours` from now (0: at
    once), in one transaction. A key already rotated cannot be rotated again; an expired one can."""
    with pool.connection() as conn, conn.transaction():
        row = conn.execute("UPDATE api_keys SET revoked_at = now() + %s * interval '1 hour' WHERE tenant_id = %s"
                           " AND id = %s AND revoked_at IS NULL"
                           " RETURNING name, scopes, rate_per_minute, burst",
                           [grace_hours, tenant, _uuid(key_id)]).fetchone()
        if row is None:
            raise InputError("no active key with this id", item=key_id)
        return _insert_key(conn, tenant, row[0], list(row[1]), row[2], row[3], key_id, expires_days)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InputError("not a key id", item=str(value)[:64]) from None


def authenticate(pool: ConnectionPool, key: str | None) -> Principal:
    """The principal of an active key, or AuthFailed (the same message for unknown, malformed and revoked keys);
    KeyExpired for a key presented after its expires_at, saying so (only its holder can present it)."""
    if not key or not _KEY.match(key):
        raise AuthFailed("invalid or revoked API key", provider="devmesh", operation="authenticate")
    digest = _hash(key)
    with pool.connection() as conn:
        row = conn.execute("SELECT id::text, tenant_id, name, scopes, rate_per_minute, burst, key_hash,"
                           " expires_at, expires_at <= now() FROM api_keys"
                           " WHERE key_hash = %s AND (revoked_at IS NULL OR revoked_at > now())", [digest]).fetchone()
    if row is None or not hmac.compare_digest(row[6], digest):
        raise AuthFailed("invalid or revoked API key", provider="devmesh", operation="authenticate")
    if row[8]:
        raise KeyExpired(f"this API key ({row[2]!r}, id {row[0]}) expired at {row[7].isoformat()} "
                         "(keys.rotation_days); an admin key of the organization can rotate it "
                         f"(POST /api/v1/keys/{row[0]}/rotate) or issue a new one",
                         provider="devmesh", operation="authenticate")
    return Principal(tenant=row[1], key_id=row[0], key_name=row[2], scopes=tuple(row[3]), rate_per_minute=row[4],
                     burst=row[5])
