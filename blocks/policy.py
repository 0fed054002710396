"""The operation policy: default deny, allowlists (globs), caps, and which operations need a human's approval.

A Prefect block, so operators edit it in the UI or in code. Two pure functions judge an operation:
`precheck(operation, mutating, facts)` before anything is planned, on the facts the typed input fixes (operation,
repository, namespace, kind, images, region, bucket, service, replicas), so that nothing the static rules deny is
ever planned with a credential; and `evaluate(plan)` after planning, on every fact including the live ones (current
replicas, the kind a server's discovery found, the namespace it chose). Both are tested on their own
(tests/blocks/test_policy.py, property-based).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

__all__ = ["Decision", "OperationPolicy"]


@dataclass(frozen=True)
class Decision:
    """allowed or not; `rule` names the policy field that decided; `needs_approval` for allowed operations."""

    allowed: bool
    rule: str
    reason: str
    needs_approval: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "rule": self.rule, "reason": self.reason,
                "needs_approval": self.needs_approval}


def _matches(value: str | None, patterns: list[str], *, fold: bool = False) -> bool:
    if value is None:
        return False
    if fold:
        value, patterns = value.lower(), [p.lower() for p in patterns]
    return any(fnmatchcase(value, p) for p in patterns)


class OperationPolicy(Block):
    """What agents may do. Every list is an allowlist of globs; an empty list allows nothing (default deny)."""

    _block_type_name = "devmesh operation policy"
    _description = "Allowlists, caps and approval rules for devmesh's guarded DevOps operations (default deny)."

    allow_read_only: bool = Field(True, description="Allow every read-only operation wholesale.")
    operations: list[str] = Field(default_factory=list, description="Mutating operations allowed, e.g. 'github.*'.")
    require_approval: list[str] = Field(
        default_factory=list, description="Operations that pause for a human approval, e.g. 'kubernetes.*'."
    )
    approval_timeout_s: int = Field(3600, ge=1, le=7 * 86400, description="An unanswered approval is rejected.")
    github_repos: list[str] = Field(default_factory=list, description="'owner/repo' globs, e.g. 'acme/*'.")
    kubernetes_namespaces: list[str] = Field(default_factory=list)
    kubernetes_kinds: list[str] = Field(default_factory=list, description="e.g. 'Deployment', 'ConfigMap'.")
    images: list[str] = Field(default_factory=list, description="Image globs, e.g. 'ghcr.io/acme/*'.")
    aws_regions: list[str] = Field(default_factory=list)
    aws_buckets: list[str] = Field(default_factory=list)
    aws_services: list[str] = Field(default_factory=list, description="ECS 'cluster/service' globs.")
    max_replicas: int = Field(10, ge=0, description="Cap on replicas / desired count after the operation.")
    max_scale_step: int = Field(5, ge=0, description="Cap on |new - current| replicas in one operation.")
    max_issues_per_hour: int = Field(20, ge=0, description="Cap on github.create_issue per tenant per hour.")

    def evaluate(self, plan: Any, *, recent: dict[str, int] | None = None) -> Decision:
        """Judge a tasks.ops.base.Plan. `recent` counts succeeded operations of the last hour by name."""
        return self._judge(plan.operation, plan.mutating, plan.facts, recent or {}, plan.target, partial=False)

    def precheck(self, operation: str, mutating: bool, facts: dict[str, Any], *,
                 recent: dict[str, int] | None = None) -> Decision:
        """Judge an operation on the facts its typed input fixes, before it is planned (so before any credentialed
        call). A fact the input leaves open (absent or None) is left to `evaluate`, which sees the plan; whatever
        precheck denies, evaluate would deny too."""
        return self._judge(operation, mutating, facts, recent or {}, facts.get("target") or operation, partial=True)

    def _judge(self, op: str, mutating: bool, facts: dict[str, Any], recent: dict[str, int], target: str, *,
               partial: bool) -> Decision:
        if not mutating:
            if self.allow_read_only:
                return Decision(True, "allow_read_only", f"{op} is read-only")
            if not _matches(op, self.operations):
                return Decision(False, "operations", f"{op} is not in operations")
        elif not _matches(op, self.operations):
            return Decision(False, "operations", f"{op} is not in operations {self.operations}")
        denial = self._check_target(op, facts, recent, partial)
        if denial is not None:
            return denial
        needs = mutating and _matches(op, self.require_approval)
        return Decision(True, "require_approval" if needs else "operations",
                        f"{op} on {target} is allowed" + (" after approval" if needs else ""), needs)

    def _check_target(self, op: str, facts: dict[str, Any], recent: dict[str, int],
                      partial: bool = False) -> Decision | None:
        def outside(key: str, patterns: list[str], fold: bool = False) -> bool:
            value = facts.get(key)
            return not (partial and value is None) and not _matches(value, patterns, fold=fold)

        provider = op.split(".", 1)[0]
        if provider == "github":
            if outside("repo", self.github_repos, fold=True):
                return Decision(False, "github_repos", f"repository {facts.get('repo')!r} is not in github_repos")
            if op == "github.create_issue" and recent.get(op, 0) >= self.max_issues_per_hour:
                return Decision(False, "max_issues_per_hour",
                                f"{recent.get(op, 0)} issues in the last hour reach the cap {self.max_issues_per_hour}")
        elif provider == "kubernetes":
            if outside("namespace", self.kubernetes_namespaces):
                return Decision(False, "kubernetes_namespaces",
                                f"namespace {facts.get('namespace')!r} is not in kubernetes_namespaces")
            if outside("kind", self.kubernetes_kinds):
                return Decision(False, "kubernetes_kinds", f"kind {facts.get('kind')!r} is not in kubernetes_kinds")
        elif provider == "aws":
            if outside("region", self.aws_regions):
                return Decision(False, "aws_regions", f"region {facts.get('region')!r} is not in aws_regions")
            if "bucket" in facts and outside("bucket", self.aws_buckets):
                return Decision(False, "aws_buckets", f"bucket {facts['bucket']!r} is not in aws_buckets")
            if "service" in facts and outside("service", self.aws_services):
                return Decision(False, "aws_services", f"service {facts['service']!r} is not in aws_services")
        else:
            return Decision(False, "operations", f"no policy rules for provider {provider!r}")
        for image in facts.get("images") or []:
            if not _matches(image, self.images):
                return Decision(False, "images", f"image {image!r} is not in images")
        return self._check_replicas(facts)

    def _check_replicas(self, facts: dict[str, Any]) -> Decision | None:
        replicas, current = facts.get("replicas"), facts.get("current_replicas")
        if replicas is None:
            return None
        if replicas > self.max_replicas:
            return Decision(False, "max_replicas", f"{replicas} replicas exceed max_replicas {self.max_replicas}")
        if current is not None and abs(replicas - current) > self.max_scale_step:
            return Decision(False, "max_scale_step",
                            f"scaling {current} → {replicas} exceeds max_scale_step {self.max_scale_step}")
        return None
