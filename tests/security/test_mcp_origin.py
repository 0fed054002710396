"""Issue 18, item 6: MCP over HTTP validates Host and Origin (the MCP specification's MUST against DNS
rebinding), through the served gateway. A rebound page's request is refused before its key is even looked at
(421 wrong Host, 403 wrong Origin; the API's error body; nothing stored, not even an admission record); loopback
names and the configured bind host are allowed by default, any port; operators list their own names.
"""

from __future__ import annotations

import httpx
import pytest

from deployments.mcp_server import transport_security
from tests.rest import register
from tests.reliability.hostile import table_counts
from tests.serving import served

ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def gateway_settings(settings, **gateway):
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update=gateway)})


def call(url: str, key: str, **headers) -> httpx.Response:
    return httpx.post(f"{url}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {key}", **headers},
                      timeout=30)


def test_a_rebound_page_is_refused_before_its_key_is_looked_at(settings, pool, tenant):
    with served(settings) as (host, port):
        url = f"http://{host}:{port}"
        org = register(httpx.Client(base_url=url), tenant)
        before = table_counts(pool)
        # the attacker's name now resolves to 127.0.0.1: the browser sends its own Host and Origin
        rebound = call(url, org.key, Host=f"attacker.example:{port}", Origin=f"http://attacker.example:{port}")
        assert rebound.status_code == 421
        error = rebound.json()["error"]
        assert error["code"] == "misdirected_request" and error["item"] == "Host"
        assert "attacker.example" in error["message"] and "MCP_ALLOWED_HOSTS" in error["message"]
        assert error["request_id"] == rebound.headers["x-request-id"]
        cross = call(url, org.key, Origin="http://attacker.example")  # the right Host, a foreign page
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "forbidden_origin"
        assert cross.json()["error"]["item"] == "Origin"
        assert table_counts(pool) == before  # refused ahead of the gate: no bucket touched, nothing stored
        for allowed in ({}, {"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"},
                        {"Origin": "http://localhost:5173"}, {"Origin": f"https://127.0.0.1:{port}"}):
            assert call(url, org.key, **allowed).status_code == 200, allowed


def test_operators_list_their_own_names(settings, pool, tenant):
    public = gateway_settings(settings, mcp_allowed_hosts=["mcp.example.com", "mcp.example.com:*"],
                              mcp_allowed_origins=["https://console.example.com"])
    with served(public) as (host, port):
        url = f"http://{host}:{port}"
        org = register(httpx.Client(base_url=url), tenant)
        assert call(url, org.key, Host="mcp.example.com").status_code == 200
        assert call(url, org.key, Host="mcp.example.com", Origin="https://console.example.com").status_code == 200
        assert call(url, org.key, Host="mcp.example.com", Origin="http://localhost:3000").status_code == 403
        assert call(url, org.key).status_code == 421  # 127.0.0.1 is not in their list


@pytest.mark.parametrize("bind,host,allowed", [
    ("127.0.0.1", "127.0.0.1:8787", True),
    ("127.0.0.1", "localhost", True),
    ("10.1.2.3", "10.1.2.3:8787", True),  # the configured bind host
    ("10.1.2.3", "10.1.2.4:8787", False),
    ("0.0.0.0", "0.0.0.0:8787", False),  # a wildcard bind names no host: list yours
    ("::1", "[::1]:8787", True),
])
def test_default_hosts_are_loopback_and_the_bind_host(settings, bind, host, allowed):
    from mcp.server.transport_security import TransportSecurityMiddleware

    security = transport_security(gateway_settings(settings, host=bind))
    assert security.enable_dns_rebinding_protection
    assert TransportSecurityMiddleware(security)._validate_host(host) is allowed
