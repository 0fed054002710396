"""Operations per tenant: which credential blocks and which policy block an operator granted each tenant.

A tenant without a grant executes nothing that needs a credential (every operation does): the guard denies it
naming the missing grant. The operator's own tenant (Settings.tenant, which nobody can register) has an implicit
grant of the settings' blocks (settings.ops.*) as long as no explicit grant replaces it, so a single-operator setup
works as before; every other tenant needs `devmesh tenants grant`. Grants are rows (tenant_grants), changed only by
the operator's CLI, and every change is audited in the tenant's trail.

In-process callers may still pass a policy and connections (tests, embedding). `override_for` is how a surface
serving many tenants (REST, MCP) picks one: a mapping gives each tenant its own; a single object stands for the
operator's tenant only, so an override never lends the operator's credentials to a registered organization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from blocks.errors import ConfigError, InputError
from tasks.audit import append_audit

__all__ = ["Grant", "PROVIDERS", "get_grant", "list_grants", "load_policy", "override_for", "resolve_grant",
           "revoke_grant", "set_grant"]

PROVIDERS = ("github", "kubernetes", "aws")
_COLUMNS = ("policy_block", "github_block", "kubernetes_block", "aws_block")


@dataclass(frozen=True)
class Grant:
    """What a tenant may operate with: a policy block and, per provider, a credentials block (None: none)."""

    tenant: str
    policy_block: str
    github_block: str | None = None
    kubernetes_block: str | None = None
    aws_block: str | None = None
    implicit: bool = False  # the operator's tenant, from the settings' blocks

    def block(self, provider: str) -> str | None:
        return getattr(self, f"{provider}_block", None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row_grant(row: dict[str, Any]) -> Grant:
    return Grant(tenant=row["tenant_id"], **{c: row[c] for c in _COLUMNS})


def get_grant(pool: ConnectionPool, tenant: str) -> Grant | None:
    """The tenant's explicit grant, if the operator made one."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM tenant_grants WHERE tenant_id = %s", [tenant]).fetchone()
    return _row_grant(row) if row else None


def resolve_grant(pool: ConnectionPool, tenant: str, settings: Any) -> Grant | None:
    """The grant the guard uses for `tenant`: its explicit one; else, for Settings.tenant while no organization
    holds that id, the settings' blocks; else None (nothing may run)."""
    grant = get_grant(pool, tenant)
    if grant is not None or tenant != settings.tenant:
        return grant
    with pool.connection() as conn:
        claimed = conn.execute("SELECT 1 FROM organizations WHERE tenant_id = %s", [tenant]).fetchone()
    if claimed:
        return None
    ops = settings.ops
    return Grant(tenant=tenant, policy_block=ops.policy_block, github_block=ops.github_block,
                 kubernetes_block=ops.kubernetes_block, aws_block=ops.aws_block, implicit=True)


def list_grants(pool: ConnectionPool) -> list[dict[str, Any]]:
    """Every explicit grant with who made it and when."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT g.*, o.tenant_id IS NOT NULL AS organization FROM tenant_grants g"
                           " LEFT JOIN organizations o USING (tenant_id) ORDER BY g.tenant_id").fetchall()


def _check_tenant(tenant: str) -> str:
    if not tenant or len(tenant) > 128 or tenant != tenant.strip() or any(not c.isprintable() for c in tenant):
        raise InputError("a tenant id is 1-128 printable characters without surrounding spaces", item=tenant[:128])
    return tenant


def set_grant(pool: ConnectionPool, tenant: str, *, actor: dict[str, Any], policy_block: str | None = None,
              github_block: str | None = None, kubernetes_block: str | None = None,
              aws_block: str | None = None) -> Grant:
    """Create or change the tenant's grant (the fields given; a new grant needs a policy block), and audit it."""
    _check_tenant(tenant)
    given = {c: v for c, v in zip(_COLUMNS, (policy_block, github_block, kubernetes_block, aws_block))
             if v is not None}
    for column, value in given.items():
        if not value.strip() or len(value) > 200:
            raise InputError("a block name is 1-200 characters", item=column)
    if not given:
        raise InputError("nothing to grant: give --policy and/or a credentials block", item=tenant)
    with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        before = cur.execute("SELECT * FROM tenant_grants WHERE tenant_id = %s FOR UPDATE", [tenant]).fetchone()
        if before is None:
            if policy_block is None:
                raise InputError("a new grant needs a policy block (--policy NAME)", item=tenant)
            cur.execute("INSERT INTO tenant_grants (tenant_id, policy_block, github_block, kubernetes_block,"
                        " aws_block, granted_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                        [tenant, policy_block, github_block, kubernetes_block, aws_block, Jsonb(actor)])
        else:
            sets = ", ".join(f"{c} = %({c})s" for c in given)
            cur.execute(f"UPDATE tenant_grants SET {sets}, granted_by = %(actor)s, updated_at = now()"
                        " WHERE tenant_id = %(tenant)s RETURNING *", {**given, "actor": Jsonb(actor), "tenant": tenant})
        grant = _row_grant(cur.fetchone())
    append_audit(pool, tenant=tenant, actor=actor, operation="tenants.grant", status="granted",
                 target=f"tenant:{tenant}", result={"before": _public(before), "after": _public(grant.as_dict())})
    return grant


def revoke_grant(pool: ConnectionPool, tenant: str, *, actor: dict[str, Any],
                 providers: list[str] | None = None) -> Grant | None:
    """Drop the tenant's whole grant (providers None) or the credentials of some providers, and audit it; returns
    what is left. InputError when there is nothing to revoke."""
    unknown = sorted(set(providers or []) - set(PROVIDERS))
    if unknown:
        raise InputError(f"unknown provider; known: {', '.join(PROVIDERS)}", item=",".join(unknown))
    with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        before = cur.execute("SELECT * FROM tenant_grants WHERE tenant_id = %s FOR UPDATE", [tenant]).fetchone()
        if before is None:
            raise InputError("no grant to revoke", item=tenant)
        if providers:
            sets = ", ".join(f"{p}_block = NULL" for p in sorted(set(providers)))
            after = cur.execute(f"UPDATE tenant_grants SET {sets}, granted_by = %s, updated_at = now()"
                                " WHERE tenant_id = %s RETURNING *", [Jsonb(actor), tenant]).fetchone()
        else:
            cur.execute("DELETE FROM tenant_grants WHERE tenant_id = %s", [tenant])
            after = None
    append_audit(pool, tenant=tenant, actor=actor, operation="tenants.revoke", status="revoked",
                 target=f"tenant:{tenant}", result={"before": _public(before), "after": _public(after)})
    return _row_grant(after) if after else None


def _public(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return {c: row.get(c) for c in _COLUMNS} if row else None


def load_policy(grant: Grant):
    """The grant's OperationPolicy block; ConfigError naming it when it cannot be loaded."""
    from blocks.policy import OperationPolicy

    try:
        return OperationPolicy.load(grant.policy_block)
    except ValueError as exc:
        raise ConfigError(f"the policy block {grant.policy_block!r} of tenant {grant.tenant!r}'s grant cannot be "
                          f"loaded ({exc}); create it with OperationPolicy(...).save({grant.policy_block!r})") from None


def override_for(value: Any, tenant: str, operator_tenant: str) -> Any:
    """The override (policy or connections) for `tenant`: a mapping's entry for it; a single object only for the
    operator's tenant; else None, and the guard uses the tenant's grant."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(tenant)
    return value if tenant == operator_tenant else None
