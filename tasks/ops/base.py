"""The shape of a DevOps operation: typed input, plan (dry run), idempotent execute, verify; and the registry.

Each provider module (`tasks.ops.github`, `tasks.ops.kubernetes`, `tasks.ops.aws`) registers its operations here;
the guard (`tasks.guard`) and the agent surfaces only ever see `Operation` and `Plan`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from blocks.errors import InputError
from blocks.redact import register_secrets, secret_values

__all__ = ["Connections", "OpInput", "Operation", "Plan", "REGISTRY", "get_operation", "operations", "parse_input",
           "register", "secret_values"]


class OpInput(BaseModel):
    """Base of every operation's input: unknown fields are refused, so a typo never silently does less.
    `repository` is taken for `repo` (the Developer Mesh guide's name), one or the other."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _repository_is_repo(cls, data: Any) -> Any:
        if isinstance(data, dict) and "repository" in data and "repo" in cls.model_fields:
            if "repo" in data:
                raise ValueError("give repo or repository, not both")
            data = {("repo" if k == "repository" else k): v for k, v in data.items()}
        return data


class Plan(BaseModel):
    """What an operation would do, computed without changing anything; the policy and the approver judge it.

    `facts` holds what the policy checks (repo, namespace, kind, images, replicas, current replicas, region,
    bucket, service ...). `request` is the exact call(s) that would be made, with no credentials in them.
    """

    operation: str
    target: str  # "github:owner/repo#12", "kubernetes:ns/Deployment/name", "aws:s3:bucket/key"
    summary: str
    request: dict[str, Any] = Field(default_factory=dict)
    diff: str | None = None
    facts: dict[str, Any] = Field(default_factory=dict)
    mutating: bool = True

    def digest(self) -> str:
        """sha256 over the canonical JSON of the plan: an approval is bound to exactly this."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def markdown(self) -> str:
        lines = [f"### {self.operation} → `{self.target}`", "", self.summary, ""]
        if self.diff:
            lines += ["```diff", self.diff.rstrip(), "```", ""]
        lines += ["```json", json.dumps(self.request, indent=2, sort_keys=True, default=str), "```"]
        return "\n".join(lines)


@dataclass
class Connections:
    """The credentials blocks an operation may use, each turned into a client on first use.

    github: blocks.github.GitHubConnection; kubernetes: blocks.kubernetes.KubernetesConnection;
    aws: prefect_aws.AwsCredentials. Any may be None when the caller never needs it.
    """

    github: Any = None
    kubernetes: Any = None
    aws: Any = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def secrets(self) -> list[str]:
        """Every secret value held by these blocks, for scrubbing errors, logs, artifacts and audit records."""
        found: list[str] = []
        for block in (self.github, self.kubernetes, self.aws):
            if block is not None:
                found += secret_values(block)
        register_secrets(found)
        return found

    def client(self, name: str, factory: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = factory()
        return self._cache[name]


@dataclass(frozen=True)
class Operation:
    """One operation.

    plan(conns, inp) -> Plan                     never changes anything (dry runs and reads only)
    run(conns, inp, key) -> dict                 does it. A mutating run MUST be idempotent for the same key:
                                                 called again after a timeout or a 5xx that followed a success,
                                                 it finds the first result instead of acting twice. The dict is
                                                 JSON-serialisable and holds no credentials.
    verify(conns, inp, result) -> dict | None    reads back what run did; raises when it is not so (a
                                                 Kubernetes deploy that does not become ready rolls back here
                                                 and raises RolledBack)
    facts(conns, inp) -> dict                    what the typed input fixes of the policy's facts (repo,
                                                 namespace, kind, images, replicas, region, bucket, service), plus
                                                 "target". Credential-free: it reads the input and at most a
                                                 block's static configuration (the AWS block's default region),
                                                 never a provider. The guard judges it with
                                                 OperationPolicy.precheck before plan() runs.
    Provider failures are raised as blocks.errors: TransientError (retried by the guard) or PermanentError.
    """

    name: str
    description: str
    input_model: type[OpInput]
    plan: Callable[[Connections, Any], Plan]
    run: Callable[[Connections, Any, str], dict[str, Any]]
    verify: Callable[[Connections, Any, dict[str, Any]], dict[str, Any] | None] | None = None
    mutating: bool = True
    destructive: bool = False
    facts: Callable[[Connections, Any], dict[str, Any]] | None = None

    @property
    def provider(self) -> str:
        return self.name.split(".", 1)[0]

    def schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()


REGISTRY: dict[str, Operation] = {}


def register(op: Operation) -> Operation:
    if op.name in REGISTRY:
        raise ValueError(f"operation {op.name} registered twice")
    REGISTRY[op.name] = op
    return op


PROVIDERS = ("aws", "github", "kubernetes")  # tasks.ops.<provider> modules; each registers its operations on import


def _load(providers: tuple[str, ...] = PROVIDERS) -> None:
    """Import these provider modules (each once). Lazily, by provider: a GitHub operation does not pay for the
    Kubernetes client's import (over a second), and nothing here loads an embedding model."""
    import importlib

    for provider in providers:
        importlib.import_module(f"tasks.ops.{provider}")


def _load_all() -> None:
    _load()


def operations() -> list[Operation]:
    _load_all()
    return sorted(REGISTRY.values(), key=lambda op: op.name)


def get_operation(name: str) -> Operation:
    if name not in REGISTRY:
        provider = name.split(".", 1)[0] if isinstance(name, str) else ""
        _load((provider,) if provider in PROVIDERS else PROVIDERS)
    try:
        return REGISTRY[name]
    except KeyError:
        _load_all()  # the error lists every operation
        raise InputError(f"unknown operation; known: {', '.join(sorted(REGISTRY))}", item=name) from None


def parse_input(op: Operation, arguments: dict[str, Any] | BaseModel) -> OpInput:
    """The operation's typed input, or an InputError naming each field that failed its schema."""
    if isinstance(arguments, op.input_model):
        return arguments
    if isinstance(arguments, BaseModel):
        arguments = arguments.model_dump()
    try:
        return op.input_model.model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(input)'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid arguments: {problems}", item=op.name) from None


def cli_arguments(op: Operation, data: dict[str, Any]) -> dict[str, Any]:
    """The arguments as `devmesh op run` gives them: for an operation taking a `manifest`, a plain Kubernetes object
    (apiVersion, kind ...) is that manifest, {"manifest": <the object>}; anything else stays as it is."""
    if "manifest" in op.input_model.model_fields and "manifest" not in data and {"apiVersion", "kind"} <= set(data):
        return {"manifest": data}
    return data
