"""One admission gate for the REST API and MCP over HTTP: client address → key → tenant → bucket → scope.

    address   the peer; a trusted proxy's forwarded header (Settings.admission.trusted_proxies, default none)
              names the client instead: read right to left, the first hop that is not a trusted proxy
    key       `Authorization: Bearer <key>` or `X-API-Key`; none at all: 401 (no lockout strike: nothing was
              guessed); a malformed, unknown or revoked one: 401 and a failure of the address, or 429 `locked_out`
              when the address is locked already; an expired one: 401 `key_expired` saying so (a failure too)
    tenant    the key's organization (tasks.tenancy.authenticate)
    bucket    one token bucket per key, `key:<id>`, whichever surface it calls (429 `rate_limited`), checked in the
              same statement as the address's lockout (429 `locked_out`, unless this key authenticated from the
              address recently: tasks/ratelimit.py)
    scope     403 `missing_scope` (REST routes; MCP checks each tool's scope itself)

The state lives in PostgreSQL (tasks/ratelimit.py), shared by every gateway replica. Every refusal is a
`Refusal` the surface turns into the one error body, {"error": {"code", "message", "item", "request_id"}}.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

from blocks.errors import AuthFailed, KeyExpired
from blocks.settings import AdmissionSettings
from tasks.ratelimit import Admission
from tasks.tenancy import Principal, authenticate

__all__ = ["AdmissionGate", "Refusal", "UNAUTHORIZED", "client_address", "presented_key", "retry_after"]

UNAUTHORIZED = "missing, invalid or revoked API key (Authorization: Bearer <key> or X-API-Key)"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="devmesh"'}


class Refusal(Exception):
    """A refusal at the gate: status, code, message, the item at fault and headers (Retry-After ...)."""

    def __init__(self, status: int, code: str, message: str, *, item: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.item, self.headers = status, code, message, item, headers or {}


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer <key>` (a bare value counts too) or `X-API-Key`; None when neither is
    sent or it is blank."""
    header = headers.get("authorization")
    if header and header.strip():
        scheme, _, value = header.strip().partition(" ")
        return (value.strip() if scheme.lower() == "bearer" else header.strip()) or None
    key = headers.get("x-api-key")
    return key.strip() or None if key is not None else None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # RFC 7239: "[2001:db8::1]:4711"
        text = text[1:text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_for(headers: Mapping[str, str], which: str) -> list[str]:
    """The hops of the forwarded header, client first (every line of it, in order)."""
    getall = getattr(headers, "getlist", None)
    lines = getall(which) if getall else ([headers[which]] if which in headers else [])
    hops = [h for line in lines for h in line.split(",")]
    if which == "forwarded":
        fors = []
        for hop in hops:
            pairs = dict(p.strip().partition("=")[::2] for p in hop.split(";") if "=" in p)
            fors.append(next((v for k, v in pairs.items() if k.strip().lower() == "for"), ""))
        return fors
    return hops


def client_address(peer: str, headers: Mapping[str, str], settings: AdmissionSettings) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy; then, walking the forwarded header from
    its right end (the hop the trusted proxy added), the first address that is not a trusted proxy. An entry that
    is not an address stops the walk at the last trusted hop (never a client-chosen string)."""
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies]
    trusted = lambda ip: ip is not None and any(ip in n for n in networks)  # noqa: E731
    if not networks or not trusted(_ip(peer)):
        return peer
    address = peer
    for hop in reversed(_forwarded_for(headers, settings.forwarded_header)):
        ip = _ip(hop)
        if ip is None:
            return address
        address = str(ip)
        if not trusted(ip):
            return address
    return address


class AdmissionGate:
    """The gate of one gateway: it reads the shared admission state from `shared["admission"]` (so a test or the
    hostile corpus can swap it for both surfaces at once) and authenticates against `pool()`."""

    def __init__(self, shared: dict[str, Any], settings: AdmissionSettings, pool):
        self.shared, self.settings, self.pool = shared, settings, pool
        shared.setdefault("admission", Admission(pool, settings))

    @property
    def admission(self) -> Admission:
        return self.shared["admission"]

    def address(self, peer: str | None, headers: Mapping[str, str]) -> str:
        return client_address(peer or "unknown", headers, self.settings)

    def admit(self, peer: str | None, headers: Mapping[str, str], scope: str | None = None) -> Principal:
        """The caller's Principal, or a Refusal (401, 403, 429). Blocking: call it from a worker thread."""
        key = presented_key(headers)
        if key is None:
            raise Refusal(401, "unauthorized", UNAUTHORIZED, headers=_CHALLENGE)
        address = self.address(peer, headers)
        try:
            principal = authenticate(self.pool(), key)
        except AuthFailed as exc:
            locked = self.admission.failed(address)
            if locked:
                raise Refusal(429, "locked_out", "too many failed authentications from this address; retry later",
                              headers=retry_after(locked)) from None
            if isinstance(exc, KeyExpired):  # its holder learns why: rotate it, rather than hunt for a typo
                raise Refusal(401, "key_expired", str(exc).removeprefix("devmesh authenticate: "),
                              headers=_CHALLENGE) from None
            raise Refusal(401, "unauthorized", UNAUTHORIZED, headers=_CHALLENGE) from None
        verdict = self.admission.admit(address, principal.key_id, principal.rate_per_minute, principal.burst)
        if verdict.locked_for:
            raise Refusal(429, "locked_out", "too many failed authentications from this address; retry later",
                          headers=retry_after(verdict.locked_for))
        if verdict.wait:
            raise Refusal(429, "rate_limited", "rate limit of this API key exceeded", headers=retry_after(verdict.wait))
        if scope is not None and not principal.allows(scope):
            raise Refusal(403, "missing_scope", f"this API key lacks the '{scope}' scope", item=scope)
        return principal

    def registration(self, peer: str | None, headers: Mapping[str, str]) -> None:
        """Take a token of the client address's registration bucket, or a 429 Refusal."""
        wait = self.admission.take(f"register:{self.address(peer, headers)}", self.settings.register_rate_per_minute,
                                   self.settings.register_burst)
        if wait:
            raise Refusal(429, "rate_limited", "too many registrations from this address", headers=retry_after(wait))
