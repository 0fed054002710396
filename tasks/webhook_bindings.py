"""Webhooks per tenant: which tenant(s) a repository's deliveries reach, and the secret each must be signed with.

The operator binds a repository (or a glob such as 'acme/*') to a tenant and to the Prefect block holding that
binding's secret(s): a `Secret` block (one string, or a JSON list of strings while rotating) or a GitHubWebhook
block (its `secrets`). A delivery reaches every candidate whose secret signed it; the candidates are the bindings
matching its repository, and the operator's own GitHubWebhook block (Settings.gateway.webhook_block), whose route
(repo_tenants, then default_tenant) counts only for tenants that are not an organization: a delivery the static
config would hand to an organization is recorded as `unbound` in the operator's tenant and not ingested, so a
stranger's registration never receives deliveries implicitly. Nothing else is stored before a signature verifies.

Each tenant needs its own secret: whoever knows a secret can sign deliveries for every repository bound with it, so
binding a secret block that another tenant's binding uses is refused.

The gateway keeps the secrets it loaded for Settings.tenancy.webhook_cache_s seconds (default 5) and reads the
bindings from the database for every delivery, so a new or rotated secret or binding takes effect within seconds,
without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from blocks.errors import ConfigError, InputError
from blocks.webhooks import SIGNATURE_PREFIX, GitHubWebhook
from tasks.audit import append_audit

__all__ = ["Binding", "Routing", "SECRET_KINDS", "WebhookRouter", "bind_repository", "list_bindings", "load_secrets",
           "secret_ref", "unbind_repository"]

log = logging.getLogger("devmesh.webhooks")
SECRET_KINDS = {"secret": "a Prefect Secret block", "devmesh-github-webhook": "a GitHubWebhook block"}
_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_./*?")


@dataclass(frozen=True)
class Binding:
    id: str
    repo_pattern: str
    tenant: str
    secret_block: str


def secret_ref(kind: str, name: str) -> str:
    """'secret/NAME' or 'devmesh-github-webhook/NAME'."""
    if kind not in SECRET_KINDS:
        raise InputError(f"unknown secret block type; known: {', '.join(SECRET_KINDS)}", item=kind)
    if not name.strip() or "/" in name or len(name) > 200:
        raise InputError("a block name is 1-200 characters without '/'", item=name)
    return f"{kind}/{name}"


def _like(pattern: str) -> str:
    """A repository glob ('*' any run of characters, '?' one) as a LIKE pattern."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _check_pattern(pattern: str) -> str:
    pattern = pattern.strip().lower()
    owner, sep, name = pattern.partition("/")
    if not (sep and owner and name and "/" not in name and set(pattern) <= _PATTERN_CHARS and len(pattern) <= 200):
        raise InputError("expected 'owner/repo' or a glob such as 'owner/*' (letters, digits, - _ . * ?)",
                         item=pattern[:200])
    if owner.strip("*?") == "":
        raise InputError("the owner must be named: a pattern such as '*/x' would match other owners' repositories",
                         item=pattern)
    return pattern


def bind_repository(pool: ConnectionPool, pattern: str, tenant: str, secret_block: str, *,
                    actor: dict[str, Any]) -> Binding:
    """Bind repositories matching `pattern` to `tenant`, signed with the secret(s) of `secret_block` ('kind/name');
    binding the same pattern to the same tenant again replaces its secret block. Audited in the tenant's trail."""
    pattern = _check_pattern(pattern)
    kind, _, name = secret_block.partition("/")
    secret_block = secret_ref(kind, name)
    if not tenant or len(tenant) > 128 or tenant != tenant.strip():
        raise InputError("a tenant id is 1-128 characters without surrounding spaces", item=tenant[:128])
    with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('devmesh-webhook-bindings'))")
        shared = cur.execute("SELECT tenant_id FROM webhook_bindings WHERE secret_block = %s AND tenant_id <> %s"
                             " LIMIT 1", [secret_block, tenant]).fetchone()
        if shared:
            raise InputError(f"{secret_block} is bound to another tenant already; give each tenant its own secret "
                             "(whoever knows a secret can sign deliveries for every repository bound with it)",
                             item=secret_block)
        row = cur.execute(
            "INSERT INTO webhook_bindings (id, repo_pattern, like_pattern, tenant_id, secret_block, created_by)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (repo_pattern, tenant_id) DO UPDATE SET"
            " secret_block = EXCLUDED.secret_block, created_by = EXCLUDED.created_by, created_at = now()"
            " RETURNING id::text, repo_pattern, tenant_id, secret_block",
            [uuid.uuid4(), pattern, _like(pattern), tenant, secret_block, Jsonb(actor)]).fetchone()
    binding = Binding(row["id"], row["repo_pattern"], row["tenant_id"], row["secret_block"])
    append_audit(pool, tenant=tenant, actor=actor, operation="webhooks.bind", status="bound",
                 target=f"github:{pattern}", result={"binding_id": binding.id, "secret_block": secret_block})
    return binding


def unbind_repository(pool: ConnectionPool, pattern: str, *, actor: dict[str, Any],
                      tenant: str | None = None) -> list[Binding]:
    """Remove the bindings of `pattern` (to `tenant` only, if given); audited. InputError when there is none."""
    pattern = pattern.strip().lower()
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("DELETE FROM webhook_bindings WHERE repo_pattern = %s AND (%s::text IS NULL OR"
                           " tenant_id = %s) RETURNING id::text, repo_pattern, tenant_id, secret_block",
                           [pattern, tenant, tenant]).fetchall()
    if not rows:
        raise InputError("no such binding", item=pattern)
    removed = [Binding(r["id"], r["repo_pattern"], r["tenant_id"], r["secret_block"]) for r in rows]
    for b in removed:
        append_audit(pool, tenant=b.tenant, actor=actor, operation="webhooks.unbind", status="unbound",
                     target=f"github:{b.repo_pattern}", result={"binding_id": b.id, "secret_block": b.secret_block})
    return removed


def list_bindings(pool: ConnectionPool) -> list[dict[str, Any]]:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id::text, repo_pattern, tenant_id, secret_block, created_by, created_at"
                           " FROM webhook_bindings ORDER BY repo_pattern, tenant_id").fetchall()


async def _matching(pool: AsyncConnectionPool, repository: str) -> list[Binding]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id::text, repo_pattern, tenant_id, secret_block FROM webhook_bindings"
                                 " WHERE %s LIKE like_pattern ORDER BY tenant_id", [repository.lower()])
        return [Binding(*row) for row in await cur.fetchall()]


async def load_secrets(ref: str) -> list[str]:
    """The secret values a block holds ('secret/NAME': a string or a list of strings; 'devmesh-github-webhook/NAME':
    its secrets). ConfigError when it cannot be loaded or holds none."""
    kind, _, name = ref.partition("/")
    try:
        if kind == "secret":
            from prefect.blocks.system import Secret

            value = (await Secret.aload(name)).get()
            values = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
        elif kind == "devmesh-github-webhook":
            values = [s.get_secret_value() for s in (await GitHubWebhook.aload(name)).secrets]
        else:
            raise ConfigError(f"unknown secret block type {kind!r}")
    except ValueError as exc:
        raise ConfigError(f"webhook secret block {ref!r} cannot be loaded ({exc})") from None
    values = [v for v in values if isinstance(v, str) and len(v) >= 16]
    if not values:
        raise ConfigError(f"webhook secret block {ref!r} holds no secret of at least 16 characters")
    return values


def _signed(body: bytes, signature: str | None, secrets: list[str]) -> bool:
    """HMAC-SHA256 of the body under any of `secrets` equals the signature; every secret is tried, in constant
    time."""
    if not signature or not signature.startswith(SIGNATURE_PREFIX) or len(signature) != len(SIGNATURE_PREFIX) + 64:
        return False
    given = signature[len(SIGNATURE_PREFIX):].encode()
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
        ok |= hmac.compare_digest(expected, given)
    return ok


@dataclass(frozen=True)
class Routing:
    """Where a delivery goes: `tenants` (verified and routable), or `unbound` (verified by the operator's secret
    for an organization's tenant, which only a binding may feed), or neither (not verified: 401)."""

    tenants: tuple[str, ...] = ()
    unbound: str | None = None  # the tenant the static config named

    @property
    def verified(self) -> bool:
        return bool(self.tenants) or self.unbound is not None


class WebhookRouter:
    """The gateway's view of bindings and secrets. The operator's GitHubWebhook block is given (tests) or loaded by
    name and re-read every `ttl` seconds; bound secret blocks are cached for `ttl` seconds."""

    def __init__(self, pool: AsyncConnectionPool, *, ttl: float, block_name: str | None = None,
                 block: GitHubWebhook | None = None, fixed: bool = False, loader=load_secrets) -> None:
        """`block`: the operator's block as loaded at start-up (None: none); `fixed`: never re-read it (tests)."""
        self.pool, self.ttl, self.block_name, self.loader = pool, ttl, block_name, loader
        self._block, self._block_at, self._fixed = block, time.monotonic(), fixed or block_name is None
        self._secrets: dict[str, tuple[float, list[str]]] = {}
        self._lock = asyncio.Lock()

    @property
    def current(self) -> GitHubWebhook | None:
        """The operator's block as last read (registration reads the tenants it routes to)."""
        return self._block

    async def static(self) -> GitHubWebhook | None:
        """The operator's GitHubWebhook block, re-read when older than the TTL (None: there is none)."""
        if self._fixed or time.monotonic() - self._block_at < self.ttl:
            return self._block
        async with self._lock:
            if time.monotonic() - self._block_at >= self.ttl:
                try:
                    self._block = await GitHubWebhook.aload(self.block_name)
                except ValueError:
                    self._block = None
                except Exception as exc:  # noqa: BLE001 - the Prefect API is unreachable: keep the last copy
                    log.warning("re-reading webhook block %r failed (%s); keeping the last copy", self.block_name,
                                type(exc).__name__)
                self._block_at = time.monotonic()
        return self._block

    async def secrets(self, ref: str) -> list[str]:
        cached = self._secrets.get(ref)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            values = await self.loader(ref)
        except Exception as exc:  # noqa: BLE001 - a missing block or an unreachable Prefect API: no secret, 401
            log.warning("webhook secret block %s unusable: %s", ref, exc)
            values = cached[1] if cached is not None and not isinstance(exc, ConfigError) else []
        self._secrets[ref] = (time.monotonic(), values)
        return values

    async def route(self, body: bytes, signature: str | None, repository: str | None) -> Routing:
        """The tenants this delivery reaches: every binding of its repository whose secret signed it, and the
        static route when the operator's secret signed it (an organization's tenant: unbound instead)."""
        tenants: list[str] = []
        for binding in await _matching(self.pool, repository) if repository else []:
            if binding.tenant not in tenants and _signed(body, signature, await self.secrets(binding.secret_block)):
                tenants.append(binding.tenant)
        unbound = None
        hook = await self.static()
        if hook is not None and hook.verify(body, signature):
            tenant = hook.tenant_for(repository)
            if tenant in tenants:
                pass
            elif await self._is_organization(tenant):
                unbound = tenant
            else:
                tenants.append(tenant)
        return Routing(tuple(tenants), None if tenants else unbound)

    async def _is_organization(self, tenant: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT 1 FROM organizations WHERE tenant_id = %s", [tenant])
            return await cur.fetchone() is not None

    def max_body_bytes(self) -> int:
        return self._block.max_body_bytes if self._block is not None else 25 * 1024 * 1024
