"""The embedding-model registry, its one home: the models stored (`embedding_models`: id, name, dimensions, the
embedder that produces each) and each tenant's default model (`tenant_models`)."""

from __future__ import annotations

from psycopg import Connection
from psycopg_pool import ConnectionPool

from blocks.errors import ConfigError
from tasks.indexes import build_model_index

__all__ = [
    "ModelInfo", "register_model", "ensure_model", "resolve_model", "model_names", "stored_embedder",
    "tenant_model", "set_embedder_name", "search_model", "tenant_has_vectors", "model_dimensions",
]

GET_MODEL = "SELECT id, dimensions FROM embedding_models WHERE name = %(name)s"
INSERT_MODEL = """
INSERT INTO embedding_models (name, dimensions) VALUES (%(name)s, %(dimensions)s)
ON CONFLICT (name) DO NOTHING RETURNING id"""
MODEL_NAMES = "SELECT name FROM embedding_models ORDER BY name"
MODEL_DIMENSIONS = "SELECT id, dimensions FROM embedding_models ORDER BY id"
MODEL_EMBEDDER = "SELECT embedder FROM embedding_models WHERE name = %(name)s"
TENANT_MODEL = """
SELECT m.id, m.name, m.dimensions, m.embedder FROM tenant_models t JOIN embedding_models m ON m.id = t.default_model_id
WHERE t.tenant_id = %(tenant)s"""
SET_EMBEDDER = ("UPDATE embedding_models SET embedder = %(embedder)s WHERE id = %(model_id)s"
                " AND embedder IS DISTINCT FROM %(embedder)s")
HAS_VECTORS = "SELECT EXISTS (SELECT 1 FROM embeddings WHERE tenant_id = %(tenant)s)"
# The model a search uses, in one round trip: the one named, else the tenant's default, else (a tenant that never
# switched) the model named `fallback`, the configured embedder's; the last column says whether it is that one.
SEARCH_MODEL = """
SELECT m.id, m.name, m.dimensions, m.embedder, false AS fallback FROM embedding_models m
WHERE m.name = %(name)s
   OR (%(name)s::text IS NULL AND m.id = (SELECT default_model_id FROM tenant_models WHERE tenant_id = %(tenant)s))
UNION ALL
SELECT m.id, m.name, m.dimensions, m.embedder, true FROM embedding_models m
WHERE %(name)s::text IS NULL AND m.name = %(fallback)s
ORDER BY fallback LIMIT 1"""


class ModelInfo(tuple):
    """(id, name, dimensions, embedder slug) of a stored model."""

    __slots__ = ()
    id = property(lambda self: self[0])
    name = property(lambda self: self[1])
    dimensions = property(lambda self: self[2])
    embedder = property(lambda self: self[3])


def register_model(conn: Connection, name: str, dimensions: int) -> int:
    """Id of embedding model `name`, creating it and its HNSW index the first time."""
    row = conn.execute(GET_MODEL, {"name": name}).fetchone()
    if row is None:
        inserted = conn.execute(INSERT_MODEL, {"name": name, "dimensions": dimensions}).fetchone()
        row = conn.execute(GET_MODEL, {"name": name}).fetchone()
        if inserted is not None:  # only the registering transaction builds it (two builds can collide)
            build_model_index(conn, row[0], row[1])
    conn.commit()
    if row[1] != dimensions:
        raise ConfigError(f"model {name!r} is registered with {row[1]} dimensions, the embedder gives {dimensions}")
    return row[0]


def ensure_model(pool: ConnectionPool, name: str, dimensions: int) -> int:
    """Id of an embedding model, registering it (and its HNSW index) on first use."""
    with pool.connection() as conn:
        return register_model(conn, name, dimensions)


def resolve_model(pool: ConnectionPool, name: str) -> tuple[int, int]:
    """(id, dimensions) of a stored embedding model; a clear error names the known ones."""
    with pool.connection() as conn:
        row = conn.execute(GET_MODEL, {"name": name}).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute(MODEL_NAMES)]
            raise ConfigError(f"unknown embedding model {name!r}; stored models: {', '.join(known) or 'none yet'}")
    return row


def model_names(pool: ConnectionPool) -> list[str]:
    """Names of the stored models, sorted."""
    with pool.connection() as conn:
        return [r[0] for r in conn.execute(MODEL_NAMES)]


def model_dimensions(pool: ConnectionPool) -> list[tuple[int, int]]:
    """(id, dimensions) of every stored model, by id."""
    with pool.connection() as conn:
        return [(row[0], row[1]) for row in conn.execute(MODEL_DIMENSIONS).fetchall()]


def stored_embedder(pool: ConnectionPool, name: str) -> str | None:
    """The embedder (name or block slug) recorded for stored model `name`; None if none or no such model."""
    with pool.connection() as conn:
        row = conn.execute(MODEL_EMBEDDER, {"name": name}).fetchone()
    return row[0] if row else None


def tenant_model(pool: ConnectionPool, tenant: str) -> ModelInfo | None:
    """The tenant's default model, or None when it never switched (then the configured embedder rules)."""
    with pool.connection() as conn:
        row = conn.execute(TENANT_MODEL, {"tenant": tenant}).fetchone()
    return ModelInfo(row) if row else None


def set_embedder_name(pool: ConnectionPool, model_id: int, embedder: str) -> None:
    """Remember which embedder (name or block slug) produces a model, so search can embed queries for it."""
    with pool.connection() as conn:
        conn.execute(SET_EMBEDDER, {"model_id": model_id, "embedder": embedder})


def search_model(pool: ConnectionPool, tenant: str, name: str | None,
                 fallback: str | None = None) -> tuple[ModelInfo, bool] | None:
    """(the stored model `name`, or (no name) the tenant's default, else the stored model `fallback`; whether it
    is the fallback), or None when there is no such model."""
    with pool.connection() as conn:
        row = conn.execute(SEARCH_MODEL, {"tenant": tenant, "name": name, "fallback": fallback}).fetchone()
    return (ModelInfo(row[:4]), row[4]) if row else None


def tenant_has_vectors(pool: ConnectionPool, tenant: str) -> bool:
    """Whether the tenant has embedded anything yet, in any model."""
    with pool.connection() as conn:
        return conn.execute(HAS_VECTORS, {"tenant": tenant}).fetchone()[0]
