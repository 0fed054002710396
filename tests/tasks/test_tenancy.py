"""Organizations and API keys: hashed storage, scopes, revoke and rotate; token buckets and lockout."""

from __future__ import annotations

import pytest

from blocks.errors import AuthFailed, InputError
from blocks.settings import AdmissionSettings
from tasks.ratelimit import Admission, Verdict
from tasks.tenancy import OrganizationCreate, authenticate, create_key, list_keys, register_organization, revoke_key, \
    rotate_key


def org(slug="acme-corp"):
    return OrganizationCreate(name="Acme", slug=slug, admin_email="ops@acme.example", admin_name="Ana",
                              password="correct horse battery")


@pytest.fixture
def tenancy(pool):
    with pool.connection() as conn:
        conn.execute("TRUNCATE organizations, api_keys CASCADE")
    return pool


def test_register_returns_a_key_once_and_stores_only_hashes(tenancy):
    created, key = register_organization(tenancy, org())
    assert key.startswith("devmesh_") and len(key) == 51
    principal = authenticate(tenancy, key)
    assert principal.tenant == "acme-corp" and principal.scopes == ("admin",) and principal.allows("operate")
    with tenancy.connection() as conn:
        dumped = conn.execute("SELECT string_agg(k::text, ' ') FROM api_keys k").fetchone()[0]
        password = conn.execute("SELECT password_hash FROM organizations").fetchone()[0]
    assert key not in dumped and key[14:] not in dumped
    assert password.startswith("scrypt$") and "correct horse" not in password
    with pytest.raises(InputError, match="already uses this slug"):
        register_organization(tenancy, org())


def test_scopes_revoke_rotate(tenancy):
    register_organization(tenancy, org())
    meta, reader = create_key(tenancy, "acme-corp", "ci", ["read"], rate_per_minute=60, burst=5)
    p = authenticate(tenancy, reader)
    assert p.allows("read") and not p.allows("write") and (p.rate_per_minute, p.burst) == (60, 5)
    listed = {k["id"]: k for k in list_keys(tenancy, "acme-corp")}
    assert listed[meta["id"]]["prefix"] == reader[:14] and "key_hash" not in listed[meta["id"]]
    new_meta, new_key = rotate_key(tenancy, "acme-corp", meta["id"])
    with pytest.raises(AuthFailed):
        authenticate(tenancy, reader)
    assert authenticate(tenancy, new_key).scopes == ("read",)
    assert revoke_key(tenancy, "acme-corp", new_meta["id"]) and not revoke_key(tenancy, "acme-corp", new_meta["id"])
    with pytest.raises(AuthFailed):
        authenticate(tenancy, new_key)
    with pytest.raises(InputError):
        create_key(tenancy, "acme-corp", "x", ["root"])
    for bad in (None, "", "devmesh_short", "' OR 1=1 --", "devmesh_" + "A" * 43):
        with pytest.raises(AuthFailed, match="invalid or revoked"):
            authenticate(tenancy, bad)


def test_token_bucket_and_lockout_in_the_database(pool):
    now = [1000.0]
    admission = Admission(lambda: pool, AdmissionSettings(rate_per_minute=60, burst=3, max_failures=3,
                                                          failure_window_s=60, lockout_s=300), clock=lambda: now[0])
    assert [admission.take("k") for _ in range(3)] == [0, 0, 0]
    wait = admission.take("k")
    assert 0.9 < wait <= 1.0
    now[0] += 1.0
    assert admission.take("k") == 0
    assert admission.take("other") == 0  # buckets are per key
    for _ in range(3):  # three failures in quick succession: the third locks (answered 401 itself)
        assert admission.failed("1.2.3.4") == 0
    assert admission.failed("1.2.3.4") == 300  # already locked
    assert admission.admit("1.2.3.4", "never-seen-here") == Verdict(locked_for=300)
    now[0] += 301
    assert admission.admit("1.2.3.4", "never-seen-here") == Verdict()
    for _ in range(3):  # spread over more than the window, failures decay and lock nothing
        now[0] += 30
        assert admission.failed("5.6.7.8") == 0
    assert admission.admit("5.6.7.8", "k2") == Verdict()