"""The process's runtime: `Runtime`, the one handle an entry point builds and passes down (settings, the store's
pool with the schema ensured, which embedder and model a tenant uses), and `call`, which runs a task as a task run
inside a flow run or as a plain function outside one."""

from __future__ import annotations

from prefect.context import FlowRunContext
from psycopg_pool import ConnectionPool

from blocks.embedders import Embedder, load_embedder, loaded_embedder
from blocks.errors import ConfigError, StoreUnavailable
from blocks.postgres import PgVectorStore
from blocks.settings import Settings
from tasks.migrate import ensure_schema
from tasks.registry import resolve_model, search_model, tenant_model

__all__ = ["Runtime", "call", "in_flow_run"]


class Runtime:
    """What a process's calls share: its settings and the store they name, built once at the entry point (CLI,
    REST ApiState, MCP, Memory, a flow run's entry) and passed down; nothing below deployments/ builds a pool from
    settings but this constructor.

    `pool()` goes through PgVectorStore.pool() each time: for the embedded server that starts it again if its
    postmaster died and drops the pool's connections to a dead one (finding the open pool costs reading
    postmaster.pid, not a connection); the schema is ensured once per pool (tasks.migrate remembers it).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.store = PgVectorStore.from_settings(self.settings)

    @classmethod
    def of(cls, given: "Runtime | Settings | None") -> "Runtime":
        """`given` if it is a Runtime, else one over the settings given (None: the environment's)."""
        return given if isinstance(given, Runtime) else cls(given)

    def pool(self) -> ConnectionPool:
        """The process-wide pool of the store, with the schema current."""
        pool = self.store.pool()
        ensure_schema(pool)
        return pool

    def failure(self, exc: BaseException) -> StoreUnavailable | None:
        """A StoreUnavailable if `exc` means the database as a whole failed (PgVectorStore.failure)."""
        return self.store.failure(exc)

    def describe(self) -> str:
        """Where the data lives, without credentials."""
        return self.store.describe()

    def embedder_name(self, tenant: str, requested: str | None = None) -> str:
        """The embedder to use for `tenant`: the one requested, else the tenant's default model's, else the
        setting (settings.embedder)."""
        if requested:
            return requested
        default = tenant_model(self.pool(), tenant)
        return default.embedder if default is not None and default.embedder else self.settings.embedder

    def embedder_for(self, tenant: str, requested: str | None = None) -> Embedder:
        """The embedder `embedder_name` names, loaded."""
        return load_embedder(self.embedder_name(tenant, requested))

    def model_for(self, tenant: str, name: str | None) -> tuple[Embedder, tuple[int, int]]:
        """(embedder, (model id, dimensions)) to search `tenant` with: the stored model `name`, or (None) the
        tenant's default model, else the configured embedder's. ConfigError when the model is not stored (`item`
        is "model" when it was named) or when no embedder here produces it."""
        pool = self.pool()
        # The configured embedder's model is the fallback, asked in the same query once the embedder is loaded
        # (a block slug is not loaded, nor the Prefect API called, for a tenant whose default has its own).
        configured = loaded_embedder(self.settings.embedder)
        found = search_model(pool, tenant, name, fallback=configured.model_id if configured else None)
        if found is not None and found[1]:  # the tenant never switched: the configured embedder's model
            info = found[0]
            embedder, model, stored = configured, (info.id, info.dimensions), info.name
        elif found is not None:
            info = found[0]
            embedder = load_embedder(info.embedder or self.settings.embedder)
            model, stored = (info.id, info.dimensions), info.name
        else:
            if name is not None:
                try:
                    resolve_model(pool, name)  # raises the error that names the stored models
                except ConfigError as exc:
                    exc.item = "model"
                    raise
            embedder = load_embedder(self.settings.embedder)
            model, stored = resolve_model(pool, embedder.model_id), embedder.model_id
        if embedder.model_id != stored:
            raise ConfigError(
                f"model {stored!r} is stored, but its embedder gives {embedder.model_id!r}; "
                "set DEVMESH_EMBEDDER to that model's embedder to search it"
            )
        return embedder, model


def in_flow_run() -> bool:
    """True inside a Prefect flow run."""
    return FlowRunContext.get() is not None


def call(task, *args, **kwargs):
    """task(...) in a flow run (tracked, retried); task.fn(...) outside, so the agent's hot path and plain
    scripts do not need a Prefect server."""
    if in_flow_run():
        return task(*args, **kwargs)
    return task.fn(*args, **kwargs)
