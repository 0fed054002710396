"""What the API's routes share: settings, the database pool, the admission gate, and operation overrides.

The gateway's state dict carries:
    admission        tasks.ratelimit.Admission: the buckets and lockouts in PostgreSQL, shared with MCP and with
                     every other gateway process (deployments/admission.py is the gate that uses it)
    ops_policy       an OperationPolicy to use instead of the tenant's granted policy block (tests, embedding):
                     a mapping {tenant: policy}, or one policy that stands for the operator's tenant (Settings.tenant)
                     only — never lent to a registered organization (tasks.grants.override_for)
    ops_connections  a tasks.ops.base.Connections to use instead of the tenant's granted credentials blocks, for the
                     providers whose block it holds (tests: `Connections(aws=AwsCredentials(...))` under moto); a
                     mapping {tenant: connections}, or one for the operator's tenant only, as ops_policy
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from psycopg_pool import ConnectionPool

from blocks.policy import OperationPolicy
from blocks.settings import Settings
from deployments.admission import AdmissionGate
from deployments.memory import Memory
from tasks.claims import ClaimRules
from tasks.grants import override_for
from tasks.ops.base import Connections
from tasks.runtime import Runtime

__all__ = ["ApiState", "api_state"]


class ApiState:
    """Per-app shared objects around the process's Runtime (tasks.runtime): its settings keep naming the store as
    configured (an external URL, or the embedded server's home: never its resolved URL), so that every call goes
    through PgVectorStore.pool(): for the embedded server that restarts it if its postmaster died and drops the
    pool's connections to a dead one, and errors name its log (a PANIC on a full disk). Finding the open pool costs
    reading postmaster.pid, not a connection."""

    def __init__(self, shared: dict[str, Any], runtime: Runtime | Settings) -> None:
        self.shared = shared
        self.runtime = Runtime.of(runtime)
        self.settings = settings = self.runtime.settings
        if "gate" not in shared:
            shared["gate"] = AdmissionGate(shared, settings.admission, self.pool)

    @property
    def gate(self) -> AdmissionGate:
        return self.shared["gate"]

    def pool(self) -> ConnectionPool:
        """The process-wide sync pool of the store (schema ensured)."""
        return self.runtime.pool()

    def claim_rules(self) -> ClaimRules:
        """Registration's rules: the settings' mode and reserved names; the operator's tenants are Settings.tenant
        and those the gateway's GitHubWebhook block routes to."""
        router = self.shared.get("router")  # the gateway's (tasks.webhook_bindings.WebhookRouter)
        hook = router.current if router is not None else None
        static = {hook.default_tenant, *hook.repo_tenants.values()} if hook is not None else set()
        return ClaimRules.from_settings(self.settings, static)

    def memory(self, tenant: str) -> Memory:
        """The tenant's Memory facade (cheap: the pool is found by its URL)."""
        return Memory(tenant=tenant, runtime=self.runtime)

    def ops_policy(self, tenant: str) -> OperationPolicy | None:
        """The override policy for `tenant`, else None (the guard loads the tenant's granted policy)."""
        return override_for(self.shared.get("ops_policy"), tenant, self.settings.tenant)

    def ops_connections(self, provider: str, tenant: str) -> Connections | None:
        """The override connections of `tenant` when they hold `provider`'s block, else None (the guard loads the
        tenant's granted block)."""
        conns = override_for(self.shared.get("ops_connections"), tenant, self.settings.tenant)
        return conns if conns is not None and getattr(conns, provider, None) is not None else None


def api_state(request: Request) -> ApiState:
    """FastAPI dependency: the ApiState of the app serving this request."""
    return request.app.state.devmesh_api
