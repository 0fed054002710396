"""REST compatibility with the Developer Mesh guide: contexts with a client-chosen id and first content, metadata that
holds a transcript (bounded by the context's size, kept out of its chunks), texts stored at a position the client
chose, searches over several contexts with filters and a similarity threshold, key expiry, and the search timeout."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from blocks.settings import Settings
from tests.rest import (  # noqa: F401 - client and org are fixtures
    API, PASSWORD, assert_error, client, make_app, org, register,
)


def test_a_context_with_the_guides_body_content_and_a_chosen_id(client, org, pool, tenant):
    made = client.post(f"{API}/contexts", json={"content": "AI agent context data"}, headers=org.headers)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["message_count"] == 1 and body["chunk_count"] == 1 and body["name"] is None
    page = client.get(f"{API}/contexts/{body['id']}", headers=org.headers).json()
    assert [(m["role"], m["content"]) for m in page["messages"]] == [("user", "AI agent context data")]

    guide = {"id": "conv-s1", "user_id": "user123",
             "metadata": {"type": "ai_conversation", "model": "gpt-4-turbo", "session_id": "s1"}}
    named = client.post(f"{API}/contexts", json=guide, headers=org.headers)
    assert named.status_code == 201, named.text
    ctx = named.json()
    assert ctx["name"] == "conv-s1" and ctx["type"] == "ai_conversation"  # the type the guide keeps in metadata
    by_name = client.get(f"{API}/contexts/conv-s1", headers=org.headers).json()["context"]
    assert by_name["id"] == ctx["id"]
    taken = assert_error(client.post(f"{API}/contexts", json=guide, headers=org.headers), 409, "conflict")
    assert taken["item"] == "conv-s1"
    # another organization may use the same id (ids are per tenant: the primary key is (tenant, id)), and sees
    # only its own context by it
    other = register(client, f"{tenant}-b")
    assert client.post(f"{API}/contexts", json={**guide, "user_id": "someone"}, headers=other.headers).status_code \
        == 201
    theirs = client.get(f"{API}/contexts/conv-s1", headers=other.headers).json()["context"]
    assert theirs["tenant"] == f"{tenant}-b" and theirs["user_id"] == "someone"
    assert client.get(f"{API}/contexts/conv-s1", headers=org.headers).json()["context"]["user_id"] == "user123"
    for bad in ("has space", "../x", "", "x" * 201):
        assert_error(client.post(f"{API}/contexts", json={"id": bad}, headers=org.headers), 422)
    assert_error(client.get(f"{API}/contexts/conv-none", headers=org.headers), 404, "not_found")


def test_a_refused_first_message_leaves_no_context_behind(client, org, pool, tenant):
    r = client.post(f"{API}/contexts", json={"id": "conv-big", "max_bytes": 10, "content": "x" * 50},
                    headers=org.headers)
    assert_error(r, 409, "limit_exceeded")
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM contexts WHERE tenant_id = %s", [tenant]).fetchone()[0] == 0
    assert client.post(f"{API}/contexts", json={"id": "conv-big"}, headers=org.headers).status_code == 201


def test_metadata_merges_counts_against_the_size_and_keeps_the_transcript_out_of_chunks(client, org, pool, tenant):
    ctx = client.post(f"{API}/contexts", json={"id": "conv-m", "user_id": "u1", "max_bytes": 2000,
                                               "metadata": {"type": "ai_conversation"}, "content": "hello"},
                      headers=org.headers).json()
    messages = [{"role": "user", "content": "deploy payments"}]
    r = client.patch(f"{API}/contexts/conv-m", json={"metadata": {"messages": messages}}, headers=org.headers)
    assert r.status_code == 200 and r.json()["metadata"] == {"type": "ai_conversation", "messages": messages}
    with pool.connection() as conn:
        chunk_meta = conn.execute("SELECT metadata FROM chunks WHERE tenant_id = %s AND document_id = %s",
                                  [tenant, f"context:{ctx['id']}"]).fetchone()[0]
    assert chunk_meta["metadata"] == {"type": "ai_conversation"} and chunk_meta["context_name"] == "conv-m"
    huge = [{"role": "user", "content": "y" * 3000}]
    error = assert_error(client.patch(f"{API}/contexts/conv-m", json={"metadata": {"messages": huge}},
                                      headers=org.headers), 409, "limit_exceeded")
    assert "max_bytes is 2000" in error["message"] and error["item"] == "conv-m"
    assert client.get(f"{API}/contexts/conv-m", headers=org.headers).json()["context"]["metadata"]["messages"] \
        == messages  # nothing half-written


def test_texts_at_chosen_positions_replace_each_other_and_are_searchable(client, org, fake_embedder, pool, tenant):
    for sid in ("a", "b"):
        assert client.post(f"{API}/contexts", json={"id": f"conv-{sid}", "user_id": f"user-{sid}",
                                                    "metadata": {"type": "ai_conversation"}},
                           headers=org.headers).status_code == 201

    def store(cid, index, text, **metadata):
        r = client.post(f"{API}/contexts/{cid}/embeddings", json={"content_index": index, "text": text,
                                                                  "metadata": metadata}, headers=org.headers)
        assert r.status_code == 201, r.text
        return r.json()

    first = store("conv-a", 0, "user: the payments pod is OOMKilled", message_range=[0, 0], speakers=["user"])
    assert first["embedded"] and not first["replaced"] and first["model"] == fake_embedder.model_id
    again = store("conv-a", 0, "user: the payments pod is OOMKilled", message_range=[0, 0], speakers=["user"])
    assert again["replaced"] and not again["embedded"]  # same text: the stored vector is reused
    store("conv-a", 1, "assistant: raise the payments memory limit to 1Gi", message_range=[1, 1])
    store("conv-b", 0, "user: rotate the webhook secret", message_range=[0, 0])
    with pool.connection() as conn:
        positions = conn.execute("SELECT metadata->>'content_index' FROM chunks WHERE tenant_id = %s AND "
                                 "document_id LIKE 'context:%%' ORDER BY id", [tenant]).fetchall()
    assert sorted(p[0] for p in positions) == ["0", "0", "1"]

    def search(**body):
        r = client.post(f"{API}/search", json={"query": "payments OOMKilled memory", **body}, headers=org.headers)
        assert r.status_code == 200, r.text
        return r.json()["hits"]

    hits = search(context_ids=["conv-a", "conv-b"], mode="vector")
    assert {h["metadata"]["context_name"] for h in hits} == {"conv-a", "conv-b"}
    assert hits[0]["metadata"]["message_range"] == [0, 0] and hits[0]["metadata"]["content_index"] == 0
    assert all(h["similarity"] >= 0.5 for h in search(context_ids=["conv-a", "conv-b"], min_similarity=0.5))
    filtered = search(filters={"user_id": "user-b", "type": "ai_conversation"})
    assert {h["metadata"]["context_name"] for h in filtered} == {"conv-b"}
    assert_error(client.post(f"{API}/search", json={"query": "x", "context_ids": ["conv-zzz"]}, headers=org.headers),
                 404)
    assert_error(client.post(f"{API}/contexts/conv-a/embeddings", json={
        "content_index": 0, "text": "t", "metadata": {"sealed": "x"}}, headers=org.headers), 422)
    assert_error(client.post(f"{API}/contexts/conv-a/embeddings", json={
        "content_index": 0, "text": "t", "model": "claude-3-haiku"}, headers=org.headers), 422, "unknown_model")
    vectors = client.get(f"{API}/contexts/conv-a/embeddings", params={"include_vectors": True, "limit": 5},
                         headers=org.headers).json()["items"]
    assert len(vectors) == 2 and len(vectors[0]["vector"]) == fake_embedder.dimensions
    near = client.post(f"{API}/search/vector", json={"vector": vectors[0]["vector"], "model": vectors[0]["model"],
                                                     "filters": {"user_id": "user-a"}}, headers=org.headers)
    assert {h["metadata"]["context_name"] for h in near.json()["hits"]} == {"conv-a"}


def test_an_expired_key_is_told_so(settings, pool, tenant):
    expiring = settings.model_copy(update={"keys": settings.keys.model_copy(update={"rotation_days": 90})})
    with TestClient(make_app(expiring)) as client:
        org = register(client, tenant)
        listed = client.get(f"{API}/keys", headers=org.headers).json()["items"]
        assert listed[0]["expires_at"] is not None
        with pool.connection() as conn:
            conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", [org.key_id])
        error = assert_error(client.get(f"{API}/contexts", headers=org.headers), 401, "key_expired")
        assert "expired at" in error["message"] and org.key_id in error["message"]


def test_a_search_past_the_timeout_is_cancelled_with_a_clear_error(settings, pool, tenant):
    quick = settings.model_copy(update={"search": settings.search.model_copy(update={"timeout_s": 0.5})})
    assert isinstance(quick, Settings)
    with TestClient(make_app(quick)) as client:
        org = register(client, tenant)
        client.post(f"{API}/embeddings", json={"id": "doc", "text": "payments runbook"}, headers=org.headers)
        locked, release = threading.Event(), threading.Event()

        def hold_lock():  # an exclusive lock the search must wait for: it waits past its statement_timeout
            with pool.connection() as conn, conn.transaction():
                conn.execute("LOCK TABLE chunks, embeddings, chunk_postings IN ACCESS EXCLUSIVE MODE")
                locked.set()
                release.wait(30)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        try:
            assert locked.wait(10)
            r = client.post(f"{API}/search", json={"query": "payments", "mode": "keyword"}, headers=org.headers)
        finally:
            release.set()
            holder.join(30)
        error = assert_error(r, 504, "search_timeout")
        assert "longer than 0.5 s" in error["message"] and "vector_search_timeout" in error["message"]
        r = client.post(f"{API}/search", json={"query": "payments", "mode": "keyword"}, headers=org.headers)
        assert r.status_code == 200 and r.json()["count"] == 1


def test_registration_with_the_guides_curl_body(client, tenant):
    r = client.post(f"{API}/auth/register/organization", json={
        "organization_name": "My AI Company", "organization_slug": tenant, "admin_email": "admin@myai.com",
        "admin_name": "Admin User", "admin_password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json()["api_key"].startswith("devmesh_") and r.json()["organization"]["name"] == "My AI Company"
