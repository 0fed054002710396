"""The process's Runtime: one handle over settings and the pool, and the model rules written once."""

from __future__ import annotations

import pytest

from blocks.embedders import register_embedder
from blocks.errors import ConfigError
from flows.ingest import DocumentSpec, IngestRequest, ingest_documents
from tasks.registry import ensure_model, set_embedder_name
from tasks.runtime import Runtime
from tests.factories import FakeEmbedder


def _make_default(pool, tenant: str, name: str, embedder: str) -> int:
    model_id = ensure_model(pool, name, 8)
    set_embedder_name(pool, model_id, embedder)
    with pool.connection() as conn:
        conn.execute("INSERT INTO tenant_models (tenant_id, default_model_id) VALUES (%s, %s)", [tenant, model_id])
    return model_id


def test_of_keeps_a_runtime_and_wraps_settings(settings):
    runtime = Runtime(settings)
    assert Runtime.of(runtime) is runtime
    assert Runtime.of(settings).settings is settings
    assert runtime.pool() is Runtime(settings).pool()  # one process-wide pool per store


def test_the_embedder_is_the_requested_one_else_the_tenants_default_else_the_setting(settings, tenant, pool):
    runtime = Runtime(settings)
    assert runtime.embedder_name(tenant) == "fake"  # no default model yet: the setting
    _make_default(pool, tenant, "runtime-test-model", "runtime-test-embedder")
    assert runtime.embedder_name(tenant) == "runtime-test-embedder"
    assert runtime.embedder_name(tenant, "local") == "local"
    assert runtime.embedder_name("t-other") == "fake"  # another tenant's default is not this one's


def test_model_for_a_named_unknown_model_says_so_and_names_the_argument(settings, tenant, fake_embedder):
    runtime = Runtime(settings)
    ingest_documents(IngestRequest(tenant=tenant, documents=[DocumentSpec(document_id="d", text="some text")]), runtime)
    with pytest.raises(ConfigError, match="unknown embedding model 'nope'; stored models: .*fake") as info:
        runtime.model_for(tenant, "nope")
    assert info.value.item == "model"
    embedder, (model_id, dims) = runtime.model_for(tenant, None)
    assert embedder.model_id == fake_embedder.model_id and dims == fake_embedder.dimensions
    assert runtime.model_for(tenant, fake_embedder.model_id)[1] == (model_id, dims)


def test_model_for_an_unregistered_default_is_a_config_error_without_item(settings, tenant):
    name = f"never-stored-{tenant}"
    register_embedder(name, FakeEmbedder(model_name=name))
    with pytest.raises(ConfigError, match=f"unknown embedding model '{name}'") as info:
        # the configured embedder's model was never stored: nothing to search, and the client named no model
        Runtime(settings.model_copy(update={"embedder": name})).model_for(tenant, None)
    assert info.value.item is None


def test_model_for_prefers_the_tenants_default_over_the_loaded_configured_embedders(settings, tenant, pool,
                                                                                    fake_embedder):
    runtime = Runtime(settings)
    configured = ensure_model(pool, fake_embedder.model_id, fake_embedder.dimensions)
    runtime.model_for(tenant, None)  # loads the configured embedder: its model is now asked in the same query
    name = f"default-of-{tenant}"
    register_embedder(name, FakeEmbedder(model_name=name, dims=8))
    default = _make_default(pool, tenant, name, name)
    embedder, model = runtime.model_for(tenant, None)
    assert embedder.model_id == name and model == (default, 8)
    embedder, model = runtime.model_for(f"{tenant}-never-switched", None)
    assert embedder.model_id == fake_embedder.model_id and model == (configured, fake_embedder.dimensions)
