"""Issue 18, item 7: slow clients and big requests, against the gateway served as `devmesh up` serves it
(deployments.gateway_server's uvicorn config: the guarded protocol), with short limits set through settings.

- slowloris: connections sending their headers a byte at a time get 408 (the API's error body) and are closed
  within the header timeout; a connection that sends nothing is closed;
- a slow body (REST and webhook) gets 408 within the body timeout, and nothing is stored;
- a request slower than its deadline gets 504 `deadline_exceeded` naming its request id;
- one append is capped in messages and bytes: 422 naming the cap, on REST and MCP, nothing stored.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np

from blocks.embedders import register_embedder
from blocks.settings import Settings
from tests.rest import API, register
from tests.factories import FakeEmbedder
from tests.reliability.hostile import table_counts
from tests.serving import served

HELD = threading.Event()  # the held embedder waits for it


class HeldEmbedder(FakeEmbedder):
    """The fake embedder, held until the test lets it go (a request that outlives its deadline)."""

    _block_type_name = "Held Fake Embedder"

    def embed(self, texts: list[str]) -> np.ndarray:
        HELD.wait(60)
        return super().embed(texts)


def limited(settings: Settings, **gateway) -> Settings:
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update=gateway)})


def read_until_closed(conn: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; (data, seconds it took). Fails past `within`."""
    started, data = time.monotonic(), b""
    conn.settimeout(0.1)
    while time.monotonic() - started < within:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError(f"the server kept the connection open for {within} s")
    return data, time.monotonic() - started


def parse(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_slowloris_headers_get_408_and_are_closed(settings):
    with served(limited(settings, header_timeout_s=0.5)) as (host, port):
        conns = []
        for _ in range(50):
            conn = socket.create_connection((host, port))
            conn.sendall(b"GET /api/v1/contexts HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            conns.append(conn)
        started = time.monotonic()
        answers = []
        for conn in conns:  # one more header byte each, then nothing: the server must give up on its own
            conn.sendall(b"X")
        for conn in conns:
            with conn:
                answers.append(read_until_closed(conn, within=10)[0])
        assert time.monotonic() - started < 5
        for answer in answers:
            status, body = parse(answer)
            assert status == 408 and body["error"]["code"] == "request_timeout" and body["error"]["item"] == "headers"
            assert "0.5 s" in body["error"]["message"] and body["error"]["request_id"]
        idle = socket.create_connection((host, port))  # connects and says nothing
        with idle:
            data, took = read_until_closed(idle, within=5)
        assert data == b"" and took < 3


def test_a_slow_body_gets_408_and_stores_nothing(settings, pool, tenant):
    with served(limited(settings, body_timeout_s=0.5)) as (host, port):
        org = register(httpx.Client(base_url=f"http://{host}:{port}"), tenant)
        before = table_counts(pool)
        for path, headers in ((f"{API}/contexts", f"Authorization: Bearer {org.key}\r\n"),
                              ("/webhooks/github", "X-GitHub-Event: issues\r\nX-GitHub-Delivery: slow-1\r\n")):
            conn = socket.create_connection((host, port))
            with conn:
                conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             f"{headers}Content-Length: 1000\r\n\r\n".encode() + b'{"user_id": "a')
                data, took = read_until_closed(conn, within=10)
            status, body = parse(data)
            assert status == 408 and body["error"]["item"] == "body" and took < 5, (path, data)
        assert table_counts(pool) == before  # every table but the gate's own records
        # the gateway keeps serving
        assert httpx.get(f"http://{host}:{port}/api/v1/contexts", headers=org.headers).status_code == 200


def test_a_request_past_its_deadline_gets_504_with_its_request_id(settings, pool, tenant, pg_home):
    register_embedder("held", HeldEmbedder())
    HELD.clear()
    slow = limited(Settings(home=pg_home, embedder="held"), request_deadline_s=1)
    try:
        with served(slow) as (host, port), httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as http:
            org = register(http, tenant)
            cid = http.post(f"{API}/contexts", json={"user_id": "ana"}, headers=org.headers).json()["id"]
            started = time.monotonic()
            late = http.post(f"{API}/contexts/{cid}/messages", headers={**org.headers, "X-Request-ID": "slow-42"},
                             json={"messages": [{"role": "user", "content": "the held embedder never answers"}]})
            assert time.monotonic() - started < 5
            assert late.status_code == 504 and late.headers["x-request-id"] == "slow-42"
            error = late.json()["error"]
            assert error["code"] == "deadline_exceeded" and error["request_id"] == "slow-42"
            assert "slow-42" in error["message"] and "check before retrying" in error["message"]
            HELD.set()  # the abandoned work finishes whole in the background, as the message warns
            deadline = time.monotonic() + 30
            while http.get(f"{API}/contexts/{cid}", headers=org.headers).json()["context"]["message_count"] != 1:
                assert time.monotonic() < deadline, "the abandoned append neither finished nor failed"
                time.sleep(0.1)
    finally:
        HELD.set()


def test_one_append_is_capped_in_messages_and_bytes(settings, pool, tenant):
    capped = settings.model_copy(update={"contexts": settings.contexts.model_copy(update={
        "max_append_messages": 20, "max_append_bytes": 4096})})
    accept = {"Accept": "application/json, text/event-stream"}
    with served(capped) as (host, port), httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as http:
        org = register(http, tenant)
        cid = http.post(f"{API}/contexts", json={"user_id": "ana"}, headers=org.headers).json()["id"]
        before = table_counts(pool)
        many = [{"role": "user", "content": f"message {i}"} for i in range(21)]
        big = [{"role": "user", "content": "x" * 3000}, {"role": "assistant", "content": "y" * 3000}]
        for messages, cap in ((many, "at most 20 messages per append"), (big, "at most 4096 bytes")):
            r = http.post(f"{API}/contexts/{cid}/messages", json={"messages": messages}, headers=org.headers)
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert cap in error["message"] and error["item"] == "messages" and "DEVMESH_CONTEXTS__" in error["message"]
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "context_append", "arguments": {"context_id": cid, "messages": messages}}}
            m = http.post("/mcp", json=call, headers={**org.headers, **accept})
            assert m.status_code == 200 and '"isError":true' in m.text.replace(" ", "") and cap in m.text
        assert table_counts(pool) == before  # every table but the gate's own records
        ok = http.post(f"{API}/contexts/{cid}/messages", json={"messages": many[:20]}, headers=org.headers)
        assert ok.status_code == 201 and ok.json()["message_count"] == 20
