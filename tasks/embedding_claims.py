"""Claim before embedding: two ingests of one tenant running at once (two workers on one work pool) never embed
the same text twice (migration 027).

An ingest claims the content hashes of each embedding step before calling the provider (`claim`: one INSERT ...
ON CONFLICT, in hash order so that concurrent claims cannot deadlock); the hashes another live claim holds are
not embedded. As soon as a step's vectors come back they are published on the claim rows (`publish`), before
the chunks are written, so a run waiting for them never waits on another run's write (no deadlock between two
runs each waiting for the other's texts). A waiting run (`collect`) takes published vectors, drops hashes whose
embedding is stored meanwhile, and claims any hash whose claim is gone or expired without a vector (its owner
died): that one it embeds itself. `release` drops an ingest's rows once its writes are done or it failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from psycopg_pool import ConnectionPool

from tasks.store import EMBEDDED_HASHES

__all__ = ["LEASE_S", "claim", "collect", "publish", "release"]

LEASE_S = 300.0  # one embedding step (ingest.embed_batch texts, with the provider's own retries) fits in it

CLAIM = """
INSERT INTO embedding_claims AS c (tenant_id, model_id, content_hash, owner, claimed_until)
SELECT %(tenant)s, %(model_id)s, h, %(owner)s, clock_timestamp() + make_interval(secs => %(lease)s)
FROM unnest(%(hashes)s::text[]) AS h ORDER BY h
ON CONFLICT (tenant_id, model_id, content_hash) DO UPDATE
    SET owner = EXCLUDED.owner, claimed_until = EXCLUDED.claimed_until
    WHERE c.embedding IS NULL AND (c.claimed_until < clock_timestamp() OR c.owner = EXCLUDED.owner)
RETURNING content_hash"""


def claim(pool: ConnectionPool, tenant: str, model_id: int, hashes: Sequence[str], owner: uuid.UUID,
          lease_s: float = LEASE_S) -> set[str]:
    """Claim `hashes` for `owner`; returns those it now holds (free, expired without a vector, or its own)."""
    if not hashes:
        return set()
    with pool.connection() as conn:
        rows = conn.execute(CLAIM, {"tenant": tenant, "model_id": model_id, "owner": owner, "lease": lease_s,
                                    "hashes": sorted(set(hashes))}).fetchall()
    return {r[0] for r in rows}


def publish(pool: ConnectionPool, tenant: str, model_id: int, owner: uuid.UUID,
            vectors: dict[str, np.ndarray]) -> None:
    """Put the vectors of hashes `owner` claimed on their claim rows, for runs waiting for them."""
    if not vectors:
        return
    with pool.connection() as conn, conn.cursor() as cur:
        cur.executemany("UPDATE embedding_claims SET embedding = %s WHERE tenant_id = %s AND model_id = %s"
                        " AND content_hash = %s AND owner = %s",
                        [(np.asarray(v, dtype=np.float32), tenant, model_id, h, owner)
                         for h, v in sorted(vectors.items())])


def collect(pool: ConnectionPool, tenant: str, model_id: int, hashes: Sequence[str], owner: uuid.UUID,
            lease_s: float = LEASE_S) -> tuple[dict[str, np.ndarray], set[str], set[str]]:
    """For hashes another run claimed: (vectors published meanwhile, hashes now claimed by `owner` — to embed
    itself —, hashes still held by a live claim without a vector). Hashes whose embedding is stored are in none."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}, set(), set()
    with pool.connection() as conn:
        published = {h: np.asarray(v, dtype=np.float32) for h, v in conn.execute(
            "SELECT content_hash, embedding FROM embedding_claims WHERE tenant_id = %s AND model_id = %s"
            " AND content_hash = ANY(%s) AND embedding IS NOT NULL", [tenant, model_id, wanted])}
        rest = [h for h in wanted if h not in published]
        stored = {r[0] for r in conn.execute(EMBEDDED_HASHES, {"tenant": tenant, "model_id": model_id,
                                                               "hashes": rest})} if rest else set()
    remaining = [h for h in rest if h not in stored]
    taken = claim(pool, tenant, model_id, remaining, owner, lease_s)
    return published, taken, set(remaining) - taken


def release(pool: ConnectionPool, owner: uuid.UUID) -> None:
    """Drop `owner`'s claims (its vectors are stored, or it failed: others may claim them now), and any claim
    left expired for an hour by a run that died."""
    with pool.connection() as conn:
        conn.execute("DELETE FROM embedding_claims WHERE owner = %s"
                     " OR claimed_until < clock_timestamp() - interval '1 hour'", [owner])
