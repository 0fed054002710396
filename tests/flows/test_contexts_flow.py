"""The expire-contexts flow as a real flow run, and the context key loaded from a Prefect Secret block."""

from __future__ import annotations

import asyncio

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client

from blocks.cipher import ContextCipher, load_cipher
from blocks.errors import ConfigError
from blocks.settings import ChunkSettings
from flows.contexts import ExpireContextsRequest, expire_contexts
from tasks import contexts as C


@pytest.fixture
def flow_env(prefect_harness, settings):
    return settings


def _expire(pool, *ids):
    with pool.connection() as conn:
        conn.execute("UPDATE contexts SET expires_at = now() - interval '1 minute' WHERE id = ANY(%s)", [list(ids)])


def test_expire_flow_deletes_expired_contexts_in_batches(flow_env, pool, tenant, fake_embedder):
    made = []
    for i in range(3):
        ctx = C.create_context(pool, tenant, {"ttl_seconds": 3600})
        C.append_messages(pool, tenant, ctx.id, [{"role": "user", "content": f"incident {i} timeline step {k}"}
                                                  for k in range(6)],
                          embedder=fake_embedder, chunk=ChunkSettings(size=16, overlap=4))
        made.append(ctx)
    keep = C.create_context(pool, tenant, {})
    C.append_messages(pool, tenant, keep.id, [{"role": "user", "content": "keep this one"}], embedder=fake_embedder)
    expected_chunks = sum(C.get_context(pool, tenant, c.id, limit=0).context.chunk_count for c in made[:2])
    _expire(pool, made[0].id, made[1].id)
    state = expire_contexts(ExpireContextsRequest(tenant=tenant, batch_size=1), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary == {"tenant": tenant, "batches": 3, "contexts": 2, "messages": 12, "chunks": expected_chunks}

    async def _task_runs():
        async with get_client() as client:
            runs = await client.read_task_runs()
            return sorted(r.name for r in runs if r.flow_run_id == state.state_details.flow_run_id)

    assert asyncio.run(_task_runs()) == ["expire-batch-0", "expire-batch-1", "expire-batch-2"]
    with pool.connection() as conn:
        left = conn.execute("SELECT document_id FROM documents WHERE tenant_id = %s", [tenant]).fetchall()
        chunks = conn.execute("SELECT count(*) FROM chunks WHERE tenant_id = %s", [tenant]).fetchone()[0]
        stats = conn.execute("SELECT sum(n_chunks) FROM tenant_stats WHERE tenant_id = %s", [tenant]).fetchone()[0]
    assert {r[0] for r in left} == {C.document_id(made[2].id), C.document_id(keep.id)}
    assert stats == chunks
    assert {c.id for c in C.list_contexts(pool, tenant, {"include_expired": True}).items} == {made[2].id, keep.id}
    assert expire_contexts(ExpireContextsRequest(tenant=tenant))["contexts"] == 0


def test_context_key_comes_from_a_secret_block(flow_env, pool, tenant, fake_embedder):
    key = ContextCipher.generate_key()
    Secret(value=key).save("devmesh-test-context-key", overwrite=True)
    cipher = load_cipher("devmesh-test-context-key")
    assert ContextCipher(key).decrypt(cipher.encrypt("from the secret")) == "from the secret"
    ctx = C.create_context(pool, tenant, {"encrypted": True, "key_name": "devmesh-test-context-key"})
    C.append_messages(pool, tenant, ctx.id, [{"role": "user", "content": "sealed with the block's key"}],
                      embedder=fake_embedder)
    assert C.get_context(pool, tenant, ctx.id).messages[0].content == "sealed with the block's key"
    with pytest.raises(ConfigError, match="no Secret block 'devmesh-missing-key'"):
        C.create_context(pool, tenant, {"encrypted": True, "key_name": "devmesh-missing-key"})
