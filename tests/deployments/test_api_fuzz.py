"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis): for every operation, valid
and invalid generated requests, authenticated as an admin key, must never get a server error, and every answer
must conform to the documented status codes and response schemas (errors included).

Examples are bounded and derandomized, so runs repeat.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

import blocks.cipher
from blocks.cipher import DEFAULT_KEY_NAME, ContextCipher
from blocks.policy import OperationPolicy
from blocks.settings import Settings
from deployments.api import mount_api
from deployments.api.state import ApiState
from tests.rest import API, register

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# The schema is read at import, from a bare app with only the API mounted (no gateway lifespan: schemathesis keeps
# an app's lifespan running until the process exits). Each test binds the app to its own database and limits by
# replacing the app's ApiState (the routes look it up per request). schemathesis' from_fixture does not work with
# pytest 9 (it reads Function._nodeid), hence the module-level app.
APP = FastAPI(title="devmesh REST API")
mount_api(APP, {}, Settings())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).include(path_regex=f"^{API}/")


@pytest.fixture
def fuzz_org(settings, tenant, monkeypatch):
    """Generous limits (the fuzzer is one client), a default-deny policy, an in-memory context key (so
    encrypted=true needs no Prefect Secret block), an organization and a little data."""
    monkeypatch.setitem(blocks.cipher._cache, DEFAULT_KEY_NAME, ContextCipher(ContextCipher.generate_key()))
    generous = settings.admission.model_copy(update={"rate_per_minute": 10**6, "burst": 10**6, "max_failures": 10**9,
                                                     "register_rate_per_minute": 10**6, "register_burst": 10**6})
    APP.state.devmesh_api = ApiState({"ops_policy": OperationPolicy()},
                                     settings.model_copy(update={"admission": generous}))
    client = TestClient(APP)
    org = register(client, tenant)
    cid = client.post(f"{API}/contexts", json={"user_id": "ana"}, headers=org.headers).json()["id"]
    client.post(f"{API}/contexts/{cid}/messages", json={"messages": [{"role": "user", "content": "hello"}]},
                headers=org.headers)
    client.post(f"{API}/embeddings", json={"id": "doc", "text": "rotate the webhook secret"}, headers=org.headers)
    return org


# Hypothesis flags any change of the global `random` state while a case is drawn; here it is the pool's worker
# threads (psycopg_pool jitters connection lifetimes with `random`) running during the draw, not the strategies.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@schema.parametrize()
@hypothesis_settings(max_examples=20, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case, fuzz_org):
    case.call_and_validate(headers=fuzz_org.headers, checks=CHECKS)
