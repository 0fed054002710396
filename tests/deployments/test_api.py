"""The REST API mounted in the gateway: registration, keys, scopes, limits, lockout, error shapes, contexts,
embeddings and search. Tools/operations: test_api_tools.py; tenant isolation: test_api_isolation.py; schema
fuzzing: test_api_fuzz.py. Their shared helpers and fixtures are in tests/rest.py."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.factories import FakeEmbedder
from tests.rest import API, PASSWORD, Org, admitting, assert_error, client, make_app, new_key, org, register

# -- registration, keys, scopes ----------------------------------------------------------------------------------

def test_register_then_the_key_works_and_is_shown_once(client, tenant, pool):
    org = register(client, tenant)
    assert org.key.startswith("devmesh_")
    assert client.get(f"{API}/contexts", headers=org.headers).status_code == 200
    assert client.get(f"{API}/contexts", headers={"X-API-Key": org.key}).status_code == 200
    listed = client.get(f"{API}/keys", headers=org.headers).json()["items"]
    assert [k["id"] for k in listed] == [org.key_id] and org.key not in str(listed)
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM api_keys WHERE key_hash = %s", [org.key]).fetchone()[0] == 0
    again = client.post(f"{API}/auth/register/organization", json={
        "name": "x", "slug": tenant, "admin_email": "a@b.example", "admin_name": "B", "password": PASSWORD})
    assert_error(again, 409, "slug_taken")
    bad = client.post(f"{API}/auth/register/organization", json={
        "name": "", "slug": "Not A Slug", "admin_email": "nope", "admin_name": "B", "password": "short"})
    fields = {f["field"] for f in assert_error(bad, 422, "validation_error")["fields"]}
    assert {"body.name", "body.slug", "body.admin_email", "body.password"} <= fields


def test_registration_is_rate_limited_per_client_address(settings, tenant):
    with TestClient(make_app(admitting(settings, register_rate_per_minute=1, register_burst=2))) as client:
        register(client, f"{tenant}-a")
        register(client, f"{tenant}-b")
        r = client.post(f"{API}/auth/register/organization", json={
            "name": "c", "slug": f"{tenant}-c", "admin_email": "a@b.example", "admin_name": "C", "password": PASSWORD})
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1


def test_scopes_name_what_is_missing(client, org):
    reader = new_key(client, org, ["read"])
    assert client.get(f"{API}/contexts", headers=reader.headers).status_code == 200
    error = assert_error(client.post(f"{API}/contexts", json={}, headers=reader.headers), 403, "missing_scope")
    assert error["item"] == "write" and "write" in error["message"]
    assert_error(client.get(f"{API}/keys", headers=reader.headers), 403, "missing_scope")
    writer = new_key(client, org, ["write"])
    assert client.post(f"{API}/contexts", json={}, headers=writer.headers).status_code == 201
    assert_error(client.get(f"{API}/contexts", headers=writer.headers), 403, "missing_scope")
    assert_error(client.post(f"{API}/keys", json={"name": "x", "scopes": ["root"]}, headers=org.headers), 422)


def test_revoke_and_rotate(client, org):
    reader = new_key(client, org, ["read"], rate_per_minute=600, burst=50)
    rotated = client.post(f"{API}/keys/{reader.key_id}/rotate", headers=org.headers)
    assert rotated.status_code == 201
    successor = Org(org.slug, rotated.json()["api_key"], rotated.json()["key"]["id"])
    assert rotated.json()["key"]["scopes"] == ["read"] and rotated.json()["key"]["rate_per_minute"] == 600
    # the old key keeps working through the grace period (keys.rotation_grace_hours), until it ends or is revoked
    assert client.get(f"{API}/contexts", headers=reader.headers).status_code == 200
    assert client.delete(f"{API}/keys/{reader.key_id}", headers=org.headers).status_code == 204
    old = assert_error(client.get(f"{API}/contexts", headers=reader.headers), 401, "unauthorized")
    assert client.get(f"{API}/contexts", headers=successor.headers).status_code == 200
    assert client.delete(f"{API}/keys/{successor.key_id}", headers=org.headers).status_code == 204
    revoked = assert_error(client.get(f"{API}/contexts", headers=successor.headers), 401, "unauthorized")
    missing = assert_error(client.get(f"{API}/contexts"), 401, "unauthorized")
    garbage = assert_error(client.get(f"{API}/contexts", headers={"X-API-Key": "devmesh_" + "A" * 43}), 401)
    assert old["message"] == revoked["message"] == missing["message"] == garbage["message"]
    assert_error(client.delete(f"{API}/keys/{successor.key_id}", headers=org.headers), 404, "not_found")
    assert_error(client.post(f"{API}/keys/{reader.key_id}/rotate", headers=org.headers), 404, "not_found")
    listed = {k["id"]: k for k in client.get(f"{API}/keys", headers=org.headers).json()["items"]}
    assert listed[reader.key_id]["revoked_at"] and listed[successor.key_id]["rotated_from"] == reader.key_id


def test_rate_limit_per_key_answers_429_with_retry_after(client, org):
    tiny = new_key(client, org, ["read"], rate_per_minute=1, burst=2)
    assert [client.get(f"{API}/contexts", headers=tiny.headers).status_code for _ in range(2)] == [200, 200]
    limited = client.get(f"{API}/contexts", headers=tiny.headers)
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert client.get(f"{API}/contexts", headers=org.headers).status_code == 200  # other keys are not affected


def test_repeated_bad_keys_lock_the_address_out(settings, tenant):
    with TestClient(make_app(admitting(settings, max_failures=3, failure_window_s=60, lockout_s=30))) as client:
        org = register(client, tenant)
        assert_error(client.get(f"{API}/contexts"), 401)  # a missing key is not a guess: it does not count
        for i in range(3):
            assert_error(client.get(f"{API}/contexts", headers={"X-API-Key": f"devmesh_guess{i}"}), 401)
        locked = client.get(f"{API}/contexts", headers=org.headers)  # even the right key, for a while
        assert_error(locked, 429, "locked_out")
        assert 1 <= int(locked.headers["retry-after"]) <= 30


# -- error shapes, request ids, limits ---------------------------------------------------------------------------

def test_every_error_has_one_shape_and_a_request_id(client, org):
    h = org.headers
    cases = [
        (client.get(f"{API}/contexts"), 401, "unauthorized"),
        (client.get(f"{API}/no-such-route", headers=h), 404, "not_found"),
        (client.get("/nowhere"), 404, "not_found"),
        (client.put(f"{API}/contexts", headers=h), 405, "method_not_allowed"),
        (client.get(f"{API}/contexts/{uuid.uuid4()}", headers=h), 404, "not_found"),
        (client.get(f"{API}/contexts/not-a-uuid", headers=h), 404, "not_found"),
        (client.post(f"{API}/contexts", content=b'{"user_id": ', headers={**h, "Content-Type": "application/json"}),
         400, "malformed_json"),
        (client.post(f"{API}/contexts", content=b"user_id=ana", headers={**h, "Content-Type": "text/plain"}),
         422, "validation_error"),
        (client.post(f"{API}/contexts", json=[1, 2], headers=h), 422, "validation_error"),
        (client.get(f"{API}/contexts", params={"limit": 0, "offset": -1}, headers=h), 422, "validation_error"),
        (client.post(f"{API}/search", json={"query": "x", "mode": "psychic", "limit": 10_000}, headers=h), 422,
         "validation_error"),
        (client.post(f"{API}/contexts", json={"metadata": {"k": "nul\u0000"}}, headers=h), 422, "validation_error"),
        (client.post(f"{API}/contexts", content=b'{"user_id": "\\ud800"}',  # a lone surrogate
                     headers={**h, "Content-Type": "application/json"}), 422, None),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    fields = assert_error(cases[10][0], 422)["fields"]
    assert {f["field"] for f in fields} == {"body.mode", "body.limit"}
    echoed = client.get(f"{API}/contexts", headers={**h, "X-Request-ID": "trace-42.a_b:c"})
    assert echoed.headers["x-request-id"] == "trace-42.a_b:c"
    replaced = client.get(f"{API}/nope", headers={**h, "X-Request-ID": "bad id\twith <junk>"})
    assert replaced.headers["x-request-id"] != "bad id\twith <junk>"
    assert assert_error(replaced, 404)["request_id"] == replaced.headers["x-request-id"]
    assert client.get("/healthz").headers["x-request-id"]


def test_bodies_over_the_limit_are_413_declared_or_streamed(client, org):
    big = b'{"id": "big", "text": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    declared = client.post(f"{API}/embeddings", content=big, headers={**org.headers, "Content-Type": "application/json"})
    assert_error(declared, 413, "payload_too_large")

    def stream():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    streamed = client.post(f"{API}/embeddings", content=stream(),
                           headers={**org.headers, "Content-Type": "application/json"})
    assert_error(streamed, 413, "payload_too_large")


def test_an_unexpected_failure_is_a_bare_500_without_internals(client, org, monkeypatch):
    import deployments.api.contexts as routes

    def boom(*args, **kwargs):
        raise RuntimeError(f"password=hunter2 {org.key}")

    monkeypatch.setattr(routes, "list_contexts", boom)
    response = client.get(f"{API}/contexts", headers=org.headers)
    error = assert_error(response, 500, "internal")
    assert "hunter2" not in response.text and org.key not in response.text and "RuntimeError" not in response.text
    assert error["request_id"]


# -- contexts ----------------------------------------------------------------------------------------------------

def test_search_by_the_time_a_turn_was_said(client, org):
    h = org.headers
    cid = client.post(f"{API}/contexts", json={"user_id": "ana"}, headers=h).json()["id"]
    said = [{"role": "user", "name": "Ana", "content": f"the payments deploy failed again, day {d}",
             "created_at": f"2024-05-0{d}T10:00:00Z"} for d in (1, 2, 3)]
    assert client.post(f"{API}/contexts/{cid}/messages", json={"messages": said}, headers=h).status_code == 201
    window = {"created_after": "2024-05-02T00:00:00Z", "created_before": "2024-05-03T00:00:00+00:00"}
    inside = client.post(f"{API}/contexts/{cid}/search", json={"query": "payments deploy failed", **window},
                         headers=h).json()
    assert [x["metadata"]["message_range"] for x in inside["hits"]] == [[1, 1]]
    assert inside["hits"][0]["created_at"].startswith("2024-05-02T10:00:00")
    across = client.post(f"{API}/search", json={"query": "payments deploy", "user_id": "ana",
                                                "created_after": "2024-05-03T00:00:00Z"}, headers=h).json()
    assert [x["metadata"]["message_range"] for x in across["hits"]] == [[2, 2]]
    assert_error(client.post(f"{API}/search", json={"query": "x", "created_after": "2024-05-03T00:00:00"},
                             headers=h), 422)
    assert_error(client.post(f"{API}/contexts/{cid}/search", json={"query": "x", "created_after": window["created_before"],
                                                                    "created_before": window["created_after"]},
                             headers=h), 422)


def test_contexts_crud_append_search_summary_similar_embeddings(client, org):
    h = org.headers
    created = client.post(f"{API}/contexts", json={"user_id": "ana", "agent_id": "copilot",
                                                    "metadata": {"team": "payments"}}, headers=h)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    assert created.json()["tenant"] == org.slug and created.json()["metadata"] == {"team": "payments"}
    other = client.post(f"{API}/contexts", json={"user_id": "ana", "type": "ticket"}, headers=h).json()["id"]
    third = client.post(f"{API}/contexts", json={"user_id": "bo"}, headers=h).json()["id"]

    appended = client.post(f"{API}/contexts/{cid}/messages", json={"messages": [
        {"role": "user", "content": "The payments deploy failed with OOMKilled"},
        {"role": "assistant", "content": "Raise the payments pod memory limit to 1Gi"}]}, headers=h)
    assert appended.status_code == 201, appended.text
    assert appended.json()["first_idx"] == 0 and appended.json()["message_count"] == 2
    client.post(f"{API}/contexts/{third}/messages", json={"messages": [
        {"role": "user", "content": "payments pod OOMKilled again, memory limit too low"}]}, headers=h)
    client.post(f"{API}/contexts/{other}/messages", json={"messages": [
        {"role": "user", "content": "order a new keyboard for the office"}]}, headers=h)
    assert_error(client.post(f"{API}/contexts/{cid}/messages", json={"messages": []}, headers=h), 422)
    assert_error(client.post(f"{API}/contexts/{cid}/messages", json={"messages": [{"role": "robot", "content": "x"}]},
                             headers=h), 422)

    page = client.get(f"{API}/contexts/{cid}", params={"offset": -1, "limit": 5}, headers=h).json()
    assert [m["content"] for m in page["messages"]] == ["Raise the payments pod memory limit to 1Gi"]
    assert page["context"]["message_count"] == 2 and page["next_offset"] is None

    first = client.get(f"{API}/contexts", params={"limit": 2}, headers=h).json()
    assert first["total"] == 3 and len(first["items"]) == 2 and first["next_cursor"]
    rest = client.get(f"{API}/contexts", params={"limit": 2, "cursor": first["next_cursor"]}, headers=h).json()
    assert {c["id"] for c in first["items"] + rest["items"]} == {cid, other, third}
    by_offset = client.get(f"{API}/contexts", params={"limit": 2, "offset": 2}, headers=h).json()
    assert [c["id"] for c in by_offset["items"]] == [c["id"] for c in rest["items"]]
    assert {c["id"] for c in client.get(f"{API}/contexts", params={"user_id": "ana"}, headers=h).json()["items"]} \
        == {cid, other}
    assert [c["id"] for c in client.get(f"{API}/contexts", params={"user_id": "ana", "type": "ticket"},
                                        headers=h).json()["items"]] == [other]
    assert [c["id"] for c in client.get(f"{API}/contexts", params={"agent_id": "copilot"},
                                        headers=h).json()["items"]] == [cid]
    assert [c["id"] for c in client.get(f"{API}/contexts", params={"metadata": '{"team": "payments"}'},
                                        headers=h).json()["items"]] == [cid]
    assert_error(client.get(f"{API}/contexts", params={"metadata": "[1]"}, headers=h), 422)
    assert_error(client.get(f"{API}/contexts", params={"cursor": "garbage!"}, headers=h), 422, "invalid_input")

    patched = client.patch(f"{API}/contexts/{cid}", json={"metadata": {"sev": 2}}, headers=h)
    assert patched.json()["metadata"] == {"team": "payments", "sev": 2}
    replaced = client.patch(f"{API}/contexts/{cid}", json={"metadata": {"sev": 1}, "replace": True}, headers=h)
    assert replaced.json()["metadata"] == {"sev": 1}

    hits = client.post(f"{API}/contexts/{cid}/search", json={"query": "OOMKilled memory"}, headers=h).json()
    assert hits["count"] >= 1 and all(x["document_id"] == f"context:{cid}" for x in hits["hits"])
    keyword = client.post(f"{API}/contexts/{cid}/search", json={"query": "keyboard", "mode": "keyword"},
                          headers=h).json()
    assert keyword["count"] == 0
    across = client.post(f"{API}/search", json={"query": "OOMKilled memory limit", "user_id": "ana"}, headers=h).json()
    assert {x["metadata"]["context_id"] for x in across["hits"]} <= {cid, other} and across["count"] >= 1
    scoped = client.post(f"{API}/search", json={"query": "OOMKilled", "context_id": third}, headers=h).json()
    assert {x["document_id"] for x in scoped["hits"]} == {f"context:{third}"}

    summary = client.get(f"{API}/contexts/{cid}/summary", headers=h).json()
    assert summary["message_count"] == 2 and summary["roles"] == {"user": 1, "assistant": 1}
    similar = client.get(f"{API}/contexts/{cid}/similar", params={"limit": 2}, headers=h).json()["items"]
    assert similar and similar[0]["context_id"] == third and cid not in {s["context_id"] for s in similar}

    chunks = client.get(f"{API}/contexts/{cid}/embeddings", headers=h).json()
    assert chunks["items"] and all(c["vector"] is None and c["model"] == "fake-words-64" for c in chunks["items"])
    with_vectors = client.get(f"{API}/contexts/{cid}/embeddings", params={"include_vectors": True, "limit": 1},
                              headers=h).json()
    assert len(with_vectors["items"][0]["vector"]) == 64

    assert client.delete(f"{API}/contexts/{cid}", headers=h).status_code == 204
    assert_error(client.get(f"{API}/contexts/{cid}", headers=h), 404, "not_found")
    assert_error(client.delete(f"{API}/contexts/{cid}", headers=h), 404, "not_found")
    assert_error(client.post(f"{API}/contexts/{cid}/messages", json={"messages": [{"role": "user", "content": "x"}]},
                             headers=h), 404)


def test_context_limits_and_expiry_map_to_statuses(client, org):
    h = org.headers
    small = client.post(f"{API}/contexts", json={"max_messages": 1}, headers=h).json()["id"]
    msg = {"messages": [{"role": "user", "content": "hello"}]}
    assert client.post(f"{API}/contexts/{small}/messages", json=msg, headers=h).status_code == 201
    assert_error(client.post(f"{API}/contexts/{small}/messages", json=msg, headers=h), 409, "limit_exceeded")


# -- embeddings and search ---------------------------------------------------------------------------------------

def test_embeddings_store_then_text_and_vector_search(client, org, fake_embedder: FakeEmbedder):
    h = org.headers
    one = client.post(f"{API}/embeddings", json={"id": "runbook/oom", "text": "When a pod is OOMKilled, raise its "
                      "memory limit.", "metadata": {"team": "sre"}}, headers=h)
    assert one.status_code == 201, one.text
    assert one.json()["documents"] == [{"id": "runbook/oom", "chunks": 1}] and one.json()["texts_embedded"] == 1
    batch = client.post(f"{API}/embeddings", json={"documents": [
        {"id": "runbook/disk", "text": "When a disk is full, rotate the logs and grow the volume.",
         "metadata": {"team": "sre"}},
        {"id": "faq/vacation", "text": "Vacation requests go through the HR portal.", "metadata": {"team": "hr"}},
        {"id": "bad/nul", "text": "nul \u0000 byte"}]}, headers=h)
    assert batch.status_code == 201, batch.text
    assert {d["id"] for d in batch.json()["documents"]} == {"runbook/disk", "faq/vacation"}
    assert [e["item"] for e in batch.json()["errors"]] == ["bad/nul"]
    unchanged = client.post(f"{API}/embeddings", json={"id": "runbook/oom", "text": "When a pod is OOMKilled, "
                            "raise its memory limit.", "metadata": {"team": "sre"}}, headers=h).json()
    assert unchanged["unchanged"] == 1 and unchanged["texts_embedded"] == 0
    assert_error(client.post(f"{API}/embeddings", json={"id": "only-bad", "text": "\u0000"}, headers=h), 422)
    assert_error(client.post(f"{API}/embeddings", json={"id": "context:x", "text": "spoof"}, headers=h), 422)
    assert_error(client.post(f"{API}/embeddings", json={"id": "a", "text": "b", "documents": []}, headers=h), 422)

    hits = client.post(f"{API}/search", json={"query": "pod OOMKilled memory"}, headers=h).json()["hits"]
    assert hits[0]["document_id"] == "runbook/oom"
    hr = client.post(f"{API}/search", json={"query": "full disk logs", "filters": {"team": "hr"}}, headers=h).json()
    assert {x["document_id"] for x in hr["hits"]} <= {"faq/vacation"}
    kw = client.post(f"{API}/search", json={"query": "vacation", "mode": "keyword", "limit": 1}, headers=h).json()
    assert [x["document_id"] for x in kw["hits"]] == ["faq/vacation"]
    only = client.post(f"{API}/search", json={"query": "memory", "document_ids": ["runbook/disk"]}, headers=h).json()
    assert {x["document_id"] for x in only["hits"]} <= {"runbook/disk"}
    assert_error(client.post(f"{API}/search", json={"query": "x", "model": "no-such-model"}, headers=h), 422,
                 "unknown_model")

    vector = fake_embedder.embed(["full disk: rotate logs, grow volume"])[0].tolist()
    by_vector = client.post(f"{API}/search/vector", json={"vector": vector, "model": "fake-words-64", "limit": 2},
                            headers=h).json()
    assert by_vector["hits"][0]["document_id"] == "runbook/disk" and by_vector["count"] == 2
    filtered = client.post(f"{API}/search/vector", json={"vector": vector, "model": "fake-words-64",
                                                         "filters": {"team": "hr"}}, headers=h).json()
    assert [x["document_id"] for x in filtered["hits"]] == ["faq/vacation"]
    wrong = assert_error(client.post(f"{API}/search/vector", json={"vector": [0.1] * 3, "model": "fake-words-64"},
                                     headers=h), 422, "dimension_mismatch")
    assert "64" in wrong["message"] and wrong["item"] == "vector"
    unknown = assert_error(client.post(f"{API}/search/vector", json={"vector": vector, "model": "ada-002"},
                                       headers=h), 422, "unknown_model")
    assert "fake-words-64" in unknown["message"]
    assert_error(client.post(f"{API}/search/vector", json={"vector": [0.0] * 64, "model": "fake-words-64"},
                             headers=h), 422, "invalid_vector")
    nan = client.post(f"{API}/search/vector", content=b'{"vector": [NaN], "model": "fake-words-64"}',
                      headers={**h, "Content-Type": "application/json"})
    assert nan.status_code in (400, 422)


def test_search_on_an_empty_tenant_answers_no_hits(client, org):
    for mode in ("hybrid", "vector", "keyword"):
        r = client.post(f"{API}/search", json={"query": "anything", "mode": mode}, headers=org.headers)
        assert r.status_code == 200 and r.json() == {"hits": [], "count": 0}, r.text


def test_openapi_documents_every_route_with_the_error_body(client):
    schema = client.get("/openapi.json").json()
    paths = [p for p in schema["paths"] if p.startswith(API)]
    assert len(paths) >= 18 and client.get("/docs").status_code == 200
    execute = schema["paths"][f"{API}/tools/{{name}}/execute"]["post"]
    assert {"401", "403", "404", "422", "429"} <= set(execute["responses"])
    assert execute["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])


def test_a_database_failure_is_a_generic_503_with_retry_after_and_logged_in_full(settings, caplog):
    from blocks.errors import StoreUnavailable

    detail = ("the database ran out of disk space (could not extend file: No space left on device; its volume has "
              "1024 bytes free); embedded PostgreSQL, data in /srv/secret-home/pgdata. Free space on that volume")
    app = make_app(settings)

    def broken():
        raise StoreUnavailable(detail)

    app.add_api_route("/test-store-failure", broken)
    with TestClient(app) as client, caplog.at_level("WARNING", logger="devmesh.api"):
        response = client.get("/test-store-failure")
    error = assert_error(response, 503, "store_unavailable")
    assert error["message"] == "the database is unavailable; retry later"
    assert response.headers["Retry-After"] == "30"
    assert "secret-home" not in response.text and "bytes free" not in response.text
    assert any(detail in r.getMessage() for r in caplog.records)  # the operator still gets all of it


def test_the_api_keeps_the_embedded_home_not_its_url(settings):
    from blocks.postgres import PgVectorStore
    from deployments.api.state import ApiState

    api = ApiState({}, settings)
    api.pool()
    assert api.settings.database_url is None
    assert PgVectorStore.from_settings(api.settings).server_log() is not None  # errors can read its PANIC lines
