"""Which tenant ids a stranger may claim by registering an organization, and the invites that let one register.

A slug is normalised (NFKC, case-folded, NFKC again: Unicode's NFKC_Casefold) and must then be 3-64 ASCII letters,
digits or dashes: tenant ids travel in URLs, logs, metric labels and Prefect event resources, where ASCII keeps them
unambiguous. Before that, a bidirectional control or invisible character is refused by name, and a letter of another
script among Latin ones (Cyrillic 'а' in 'аcme') is refused as a mixed-script look-alike. Python's unicodedata gives
what this needs (NFKC, case folding, character names and categories); the look-alike libraries on PyPI answer a
wider question (any script, any confusable) than an ASCII-only rule leaves open.

Nobody may register:
- a reserved name (RESERVED, plus Settings.tenancy.reserved_slugs) or an ASCII look-alike of one ('defau1t',
  'adrnin': the skeleton maps 0→o, 1→l, rn→m, vv→w, cl→d, after Unicode's confusables for ASCII), nor a slug
  starting with 'devmesh';
- a look-alike of an existing organization's slug (same skeleton);
- one of the operator's tenants: Settings.tenant, the tenants the operator's GitHubWebhook block routes to, and
  every tenant id that already holds rows (documents, contexts, operations, audit records, grants, webhook
  bindings ... any table with a tenant_id) without an organization. An invite minted for that exact slug is the
  operator handing such a tenant over, and allows it (never Settings.tenant nor a reserved name).

Registration modes (Settings.tenancy.registration): open, invite (a one-time token, stored as its sha256, consumed in
the registration's transaction, optionally bound to one slug, with an expiry) or closed.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.errors import InputError

__all__ = ["ClaimRules", "INVITE_PREFIX", "RESERVED", "RegistrationRefused", "SlugUnavailable", "check_claim",
           "consume_invite", "invite_slug", "list_invites", "lock_registrations", "mint_invite", "normalize_slug",
           "skeleton", "tenant_holdings", "unclaimable_organizations"]

INVITE_PREFIX = "dminvite_"
RESERVED = frozenset({
    "default", "admin", "administrator", "system", "root", "devmesh", "api", "www", "operator", "operators",
    "support", "security", "billing", "help", "status", "mcp", "webhook", "webhooks", "metrics", "healthz", "docs",
    "internal", "public", "prefect", "postgres", "null", "none", "undefined", "tenant", "tenants", "org", "orgs",
    "organization", "organizations", "auth", "login", "signup", "register", "settings", "static", "assets", "mail",
    "email", "abuse", "postmaster", "hostmaster", "webmaster", "noreply", "no-reply", "localhost", "example",
    "github", "kubernetes", "aws", "audit", "approvers", "keys", "anonymous", "unknown", "everyone", "all",
})
RESERVED_PREFIX = "devmesh"
_ASCII_CONFUSABLES = (("rn", "m"), ("vv", "w"), ("cl", "d"), ("0", "o"), ("1", "l"))
# A slug's characters once normalised: ASCII letters, digits, dashes; 3-64, no dash at either end.
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_REGISTER_LOCK = 0x72656769737472  # advisory lock serialising registrations ("registr")
# Tables whose rows belong to an organization, not to data a tenant holds (an org row makes the slug taken anyway),
# and large tables without an index on tenant_id whose tenants another checked table always holds too: an embedding
# is of a chunk of its tenant; a webhook delivery goes to a tenant a binding or the operator's block names (both
# checked) and feeds its documents. So registration reads indexes only (tests/security/test_tenant_claims.py).
_NOT_CHECKED = frozenset({"organizations", "api_keys", "embeddings", "webhook_deliveries"})
# One message whether an organization or the operator's data holds the slug: no tenant enumeration through it.
TAKEN = "an organization or the operator already uses this slug (or one that looks like it)"


class SlugUnavailable(InputError):
    """The slug is reserved (`reason` "reserved") or already someone's (`reason` "taken")."""

    def __init__(self, message: str, *, item: str, reason: str) -> None:
        super().__init__(message, item=item)
        self.reason, self.message = reason, message


class RegistrationRefused(InputError):
    """Registration is closed, or needs an invite that was not given or is not valid (`code` says which)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, item="registration")
        self.code, self.message = code, message


def _describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')})"


def _script(char: str) -> str:
    """The script a letter belongs to, as the first word of its Unicode name (LATIN, CYRILLIC, GREEK ...)."""
    return unicodedata.name(char, "UNKNOWN").split(" ")[0]


def normalize_slug(raw: str) -> str:
    """The tenant id a requested slug stands for; ValueError says what is wrong with it."""
    text = raw.strip()
    for char in text:
        if unicodedata.category(char) in ("Cf", "Cc", "Zl", "Zp") or unicodedata.bidirectional(char) in (
                "LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"):
            raise ValueError(f"contains {_describe(char)}: bidirectional control, invisible and control characters "
                             "are refused")
    slug = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    foreign = [c for c in slug if not c.isascii()]
    if foreign:
        latin = any(c.isascii() and c.isalpha() for c in slug)
        scripts = sorted({_script(c) for c in foreign if c.isalpha()})
        if latin and scripts:
            raise ValueError(f"mixes scripts: {_describe(foreign[0])} among Latin letters is a look-alike; slugs "
                             "are ASCII letters, digits and dashes")
        raise ValueError(f"contains {_describe(foreign[0])}: slugs are ASCII letters, digits and dashes (the "
                         "organization's name may use any script)")
    if not (3 <= len(slug) <= 64 and set(slug) <= _ALLOWED and slug[0] != "-" and slug[-1] != "-"):
        raise ValueError("3-64 lower-case letters, digits or dashes, starting and ending with a letter or digit")
    return slug


def skeleton(slug: str) -> str:
    """What a slug looks like: ASCII look-alikes folded together ('defau1t' and 'default' have one skeleton)."""
    out = slug.lower()
    for seen, means in _ASCII_CONFUSABLES:
        out = out.replace(seen, means)
    return out


@dataclass(frozen=True)
class ClaimRules:
    """What registration checks besides the slug's shape: the mode, the operator's tenants (Settings.tenant and the
    static webhook routes) and the extra reserved names of the settings."""

    mode: str = "open"
    operator_tenants: frozenset[str] = frozenset({"default"})
    reserved: frozenset[str] = RESERVED
    extra_reserved: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Any, static_tenants: set[str] | frozenset[str] = frozenset()) -> ClaimRules:
        return cls(mode=settings.tenancy.registration,
                   operator_tenants=frozenset({settings.tenant, *static_tenants}),
                   extra_reserved=frozenset(s.strip().lower() for s in settings.tenancy.reserved_slugs if s.strip()))

    def reserved_reason(self, slug: str) -> str | None:
        names = self.reserved | self.extra_reserved
        if slug.startswith(RESERVED_PREFIX):
            return f"{slug!r} is reserved: slugs starting with {RESERVED_PREFIX!r} are the service's own"
        look = skeleton(slug)
        hit = next((name for name in sorted(names) if skeleton(name) == look), None)
        if hit is not None:
            what = "is a reserved name" if hit == slug else f"looks like the reserved name {hit!r}"
            return f"{slug!r} {what}; choose another slug"
        return None


def _holdings_query(conn) -> sql.Composed:
    tables = [r[0] for r in conn.execute(
        "SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t"
        " USING (table_schema, table_name) WHERE c.table_schema = current_schema() AND c.column_name = 'tenant_id'"
        " AND t.table_type = 'BASE TABLE' ORDER BY c.table_name").fetchall() if r[0] not in _NOT_CHECKED]
    parts = [sql.SQL("SELECT {name} WHERE EXISTS (SELECT 1 FROM {table} WHERE tenant_id = %(tenant)s)").format(
        name=sql.Literal(t), table=sql.Identifier(t)) for t in tables]
    return sql.SQL(" UNION ALL ").join(parts)


def tenant_holdings(conn, tenant: str) -> list[str]:
    """The tables holding rows of `tenant` (every table with a tenant_id but those of _NOT_CHECKED)."""
    return [r[0] for r in conn.execute(_holdings_query(conn), {"tenant": tenant}).fetchall()]


def check_claim(conn, slug: str, rules: ClaimRules, *, invited_for_slug: bool = False) -> None:
    """Raise SlugUnavailable unless a stranger may take `slug` (already normalised) now. Runs in the registration's
    transaction, under its lock. `invited_for_slug`: an invite minted for exactly this slug, which may hand over a
    tenant that holds data (never a reserved name nor one of rules.operator_tenants)."""
    reason = rules.reserved_reason(slug)
    if reason is not None:
        raise SlugUnavailable(reason, item=slug, reason="reserved")
    look = skeleton(slug)
    taken = any(skeleton(t.lower()) == look for t in rules.operator_tenants) or conn.execute(
        "SELECT 1 FROM organizations WHERE slug_skeleton = %s LIMIT 1", [look]).fetchone() is not None
    if taken or (not invited_for_slug and tenant_holdings(conn, slug)):
        raise SlugUnavailable(TAKEN, item=slug, reason="taken")


def unclaimable_organizations(conn, rules: ClaimRules) -> list[str]:
    """Organizations holding a tenant id these rules would refuse now (registered before them): for review."""
    orgs = [r[0] for r in conn.execute("SELECT tenant_id FROM organizations ORDER BY tenant_id").fetchall()]
    return [t for t in orgs if t in rules.operator_tenants or rules.reserved_reason(t) is not None]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint_invite(pool: ConnectionPool, *, slug: str | None, expires_in: timedelta,
                created_by: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A one-time registration token (returned once, stored as its sha256), optionally for one slug only."""
    if slug is not None:
        try:
            slug = normalize_slug(slug)
        except ValueError as exc:
            raise InputError(f"slug {exc}", item=slug) from None
    if not timedelta(minutes=1) <= expires_in <= timedelta(days=90):
        raise InputError("an invite expires after 1 minute to 90 days", item="expires")
    token = INVITE_PREFIX + secrets.token_urlsafe(32)
    invite_id = uuid.uuid4()
    expires_at = datetime.now(timezone.utc) + expires_in
    with pool.connection() as conn:
        conn.execute("INSERT INTO registration_invites (id, token_hash, slug, expires_at, created_by)"
                     " VALUES (%s, %s, %s, %s, %s)", [invite_id, _hash(token), slug, expires_at, Jsonb(created_by)])
    return {"id": str(invite_id), "slug": slug, "expires_at": expires_at.isoformat()}, token


def list_invites(pool: ConnectionPool) -> list[dict[str, Any]]:
    """Every invite without its token: slug, expiry, and who used it when."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id::text, slug, created_at, expires_at, created_by, used_at, used_by_tenant"
                           " FROM registration_invites ORDER BY created_at").fetchall()


def invite_slug(conn, token: str | None) -> tuple[bool, str | None]:
    """(valid, bound slug) of an unused, unexpired invite token, read without consuming it."""
    if not token or not token.startswith(INVITE_PREFIX):
        return False, None
    row = conn.execute("SELECT slug FROM registration_invites WHERE token_hash = %s AND used_at IS NULL"
                       " AND expires_at > now()", [_hash(token)]).fetchone()
    return (row is not None), (row[0] if row else None)


def consume_invite(conn, token: str | None, slug: str) -> None:
    """Use the invite for `slug` in the caller's transaction; RegistrationRefused when it is not valid for it (the
    same message for unknown, used, expired and other-slug tokens)."""
    done = conn.execute("UPDATE registration_invites SET used_at = now(), used_by_tenant = %s WHERE token_hash = %s"
                        " AND used_at IS NULL AND expires_at > now() AND (slug IS NULL OR slug = %s)",
                        [slug, _hash(token or ""), slug]).rowcount
    if done != 1:
        raise RegistrationRefused("the invite token is not valid for this slug (unknown, used, expired, or minted "
                                  "for another slug)", code="invalid_invite")


def lock_registrations(conn) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [_REGISTER_LOCK])
