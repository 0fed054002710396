"""Issue 18, item 4: one admission gate for REST and MCP, through a served gateway (uvicorn on loopback; client
addresses chosen with httpx's local_address, 127.0.0.x).

Each attack of the issue, reproduced: one key used on both surfaces gets its quota once; key-less MCP probes are
401s and lock nobody out; forwarded headers from an untrusted peer change nothing (15 bad keys with 15 XFF values
are locked out; registrations keep one bucket); behind a trusted proxy, the attacker locks out only his own
address; behind a proxy that forwards nothing, the attacker's guesses lock out new keys but not the keys known at
that address, and a right guess answers exactly like a wrong one. Every refusal stores nothing outside the gate's
own records (row counts of every table), and a lockout is logged.
"""

from __future__ import annotations

import contextlib
import logging
import time

import httpx
import pytest

from deployments.gateway import create_app
from tests.rest import API, no_emit, new_key, register
from tests.reliability.hostile import table_counts
from tests.serving import serve

ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
BAD = {"Authorization": "Bearer devmesh_" + "x" * 43}


def admitting(settings, **limits):
    return settings.model_copy(update={"admission": settings.admission.model_copy(update=limits)})


@contextlib.contextmanager
def gateway(settings):
    """The gateway served on 127.0.0.1; yields a function giving an httpx client whose address is 127.0.0.<n>."""
    from pydantic import SecretStr

    from blocks.webhooks import GitHubWebhook

    app = create_app(settings, webhook=GitHubWebhook(secrets=[SecretStr("admission-test-secret-01")]), emit=no_emit)
    clients: list[httpx.Client] = []
    with serve(app) as url:
        def client(n: int = 1) -> httpx.Client:
            c = httpx.Client(base_url=url, timeout=30,
                             transport=httpx.HTTPTransport(local_address=f"127.0.0.{n}"))
            clients.append(c)
            return c
        try:
            yield client
        finally:
            for c in clients:
                c.close()


def rest(client, headers, **extra):
    return client.get(f"{API}/contexts", headers={**headers, **extra})


def mcp(client, headers, **extra):
    return client.post("/mcp", json=INIT, headers={**ACCEPT, **headers, **extra})


def error(response) -> dict:
    assert set(response.json()) == {"error"}, response.text
    return response.json()["error"]


def test_one_bucket_per_key_across_rest_and_mcp(settings, pool, tenant):
    with gateway(settings) as client:
        c = client()
        org = register(c, tenant)
        tiny = new_key(c, org, ["read", "write"], rate_per_minute=1, burst=3)
        assert rest(c, tiny.headers).status_code == 200
        assert mcp(c, tiny.headers).status_code == 200
        assert rest(c, tiny.headers).status_code == 200
        for call in (mcp, rest):  # the quota of 3 is spent whichever surface asks next
            limited = call(c, tiny.headers)
            assert limited.status_code == 429 and error(limited)["code"] == "rate_limited"
            assert int(limited.headers["retry-after"]) >= 1
        with pool.connection() as conn:
            buckets = [r[0] for r in conn.execute("SELECT bucket FROM admission_buckets WHERE bucket LIKE %s",
                                                  [f"%{tiny.key_id}"])]
        assert buckets == [f"key:{tiny.key_id}"]


def test_requests_without_a_key_are_401s_and_lock_nobody_out(settings, pool, tenant):
    with gateway(admitting(settings, max_failures=3)) as client:
        c = client(5)
        org = register(client(1), tenant)
        fresh = new_key(client(1), org, ["read"])
        before = table_counts(pool)
        for call in (mcp, rest) * 10:  # twenty key-less probes from 127.0.0.5
            refused = call(c, {})
            assert refused.status_code == 401 and error(refused)["code"] == "unauthorized"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert rest(c, fresh.headers).status_code == 200 and mcp(c, fresh.headers).status_code == 200
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM admission_failures").fetchone()[0] == 0
        assert table_counts(pool) == before  # every table but the gate's own records


def test_forwarded_headers_from_an_untrusted_peer_change_nothing(settings, pool, tenant, caplog):
    with gateway(admitting(settings, register_rate_per_minute=1, register_burst=2)) as client:
        c = client(7)
        org = register(client(1), tenant)
        fresh = new_key(client(1), org, ["read"])
        before = table_counts(pool)
        with caplog.at_level(logging.WARNING, logger="devmesh.admission"):
            answers = [(mcp if i % 2 else rest)(c, BAD, **{"X-Forwarded-For": f"198.51.100.{i}",
                                                           "Forwarded": f"for=198.51.100.{i}"}).status_code
                       for i in range(15)]
        assert answers == [401] * 10 + [429] * 5  # the default 10 failures lock 127.0.0.7, whatever XFF says
        assert "client address 127.0.0.7 locked out" in caplog.text
        assert rest(c, fresh.headers, **{"X-Forwarded-For": "203.0.113.99"}).status_code == 429
        assert table_counts(pool) == before  # every table but the gate's own records
        # registrations: one bucket for 127.0.0.7, not one per X-Forwarded-For value
        codes = [c.post(f"{API}/auth/register/organization", headers={"X-Forwarded-For": f"192.0.2.{i}"}, json={
            "name": "x", "slug": f"{tenant}-r{i}", "admin_email": "a@b.example", "admin_name": "A",
            "password": "correct horse battery"}).status_code for i in range(4)]
        assert codes[:2] == [201, 201] and codes[2:] == [429, 429]


def test_behind_a_trusted_proxy_the_attacker_locks_out_only_his_own_address(settings, pool, tenant):
    proxied = admitting(settings, trusted_proxies=["127.0.0.2"], max_failures=3)
    with gateway(proxied) as client:
        proxy = client(2)  # the proxy: it appends the address it saw to X-Forwarded-For
        org = register(client(1), tenant)
        innocent = new_key(client(1), org, ["read"])
        for _ in range(3):  # the attacker, 198.51.100.66, spoofs a left-hand entry; the proxy appends his address
            assert rest(proxy, BAD, **{"X-Forwarded-For": "10.9.9.9, 198.51.100.66"}).status_code == 401
        assert rest(proxy, BAD, **{"X-Forwarded-For": "198.51.100.66"}).status_code == 429
        assert mcp(proxy, BAD, **{"X-Forwarded-For": "198.51.100.66"}).status_code == 429
        # another client behind the same proxy, with a key never used before: admitted on both surfaces
        assert rest(proxy, innocent.headers, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
        assert mcp(proxy, innocent.headers, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
        with pool.connection() as conn:
            locked = [r[0] for r in conn.execute("SELECT address FROM admission_failures")]
        assert locked == ["198.51.100.66"]  # not the proxy, not the spoofed 10.9.9.9


def test_behind_a_proxy_that_forwards_nothing_known_keys_keep_working(settings, pool, tenant):
    """One shared address for everyone (a proxy without X-Forwarded-For): the attacker's 3 bad keys lock it; the
    users whose keys authenticated from it before keep working; a key new to it is refused like a wrong guess,
    so a right guess learns nothing; the lock ends when its time has run out (the database's clock decides).
    The lock lasts 60 s, so a slow machine cannot see it end between the guesses and the checks; it is then cut to
    2 s left in the table, and the test polls for its end."""
    with gateway(admitting(settings, max_failures=3, lockout_s=60)) as client:
        shared = client(3)
        org = register(client(1), tenant)
        known = new_key(client(1), org, ["read"])
        unknown = new_key(client(1), org, ["read"])
        assert rest(shared, known.headers).status_code == 200  # a user behind the proxy, before the attack
        before = table_counts(pool)
        for _ in range(3):
            assert rest(shared, BAD).status_code == 401
        assert rest(shared, known.headers).status_code == 200 and mcp(shared, known.headers).status_code == 200
        wrong, right = rest(shared, BAD), rest(shared, unknown.headers)
        assert wrong.status_code == right.status_code == 429
        assert error(wrong)["code"] == error(right)["code"] == "locked_out"
        assert error(wrong)["message"] == error(right)["message"]
        assert wrong.headers["retry-after"] == right.headers["retry-after"]
        assert 1 <= int(wrong.headers["retry-after"]) <= 60
        assert table_counts(pool) == before  # every table but the gate's own records
    with pool.connection() as conn:  # 2 s of the lock left, by the database's clock
        cut = conn.execute("UPDATE admission_failures SET locked_until = extract(epoch FROM clock_timestamp()) + 2"
                           " WHERE locked_until > 0").rowcount
    assert cut == 1
    with gateway(admitting(settings, max_failures=3, lockout_s=60)) as client:
        again = client(3)
        deadline = time.monotonic() + 10
        while rest(again, unknown.headers).status_code == 429:
            assert time.monotonic() < deadline, "the lockout did not end"
            time.sleep(0.2)
        assert mcp(again, unknown.headers).status_code == 200


@pytest.mark.parametrize("header,value,expected", [
    ("x-forwarded-for", "203.0.113.5", "203.0.113.5"),
    ("x-forwarded-for", "1.1.1.1, 203.0.113.5", "203.0.113.5"),
    ("x-forwarded-for", "203.0.113.5, 127.0.0.2", "203.0.113.5"),  # a second trusted hop is skipped
    ("x-forwarded-for", "unknown", "127.0.0.2"),  # not an address: the proxy itself
    ("forwarded", 'for="[2001:db8::7]:4711";proto=https', "2001:db8::7"),
    ("forwarded", "for=192.0.2.60, for=198.51.100.17", "198.51.100.17"),
])
def test_client_address_from_a_trusted_proxy(settings, header, value, expected):
    from deployments.admission import client_address

    trusted = admitting(settings, trusted_proxies=["127.0.0.0/30"], forwarded_header=header).admission
    assert client_address("127.0.0.2", {header: value}, trusted) == expected
    assert client_address("192.0.2.1", {header: value}, trusted) == "192.0.2.1"  # an untrusted peer
    assert client_address("127.0.0.2", {header: value}, settings.admission) == "127.0.0.2"  # none trusted
    other = "forwarded" if header == "x-forwarded-for" else "x-forwarded-for"
    assert client_address("127.0.0.2", {other: "203.0.113.250"}, trusted) == "127.0.0.2"  # only the set header
