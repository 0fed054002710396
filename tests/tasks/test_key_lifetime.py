"""API keys expire (keys.rotation_days) and a rotated key keeps working through its grace period; the guide's
registration field names are accepted beside devmesh's. Time passes by moving the stored timestamps back."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks.errors import AuthFailed, InputError, KeyExpired
from tasks.tenancy import OrganizationCreate, authenticate, create_key, list_keys, register_organization, revoke_key, \
    rotate_key


@pytest.fixture
def org(pool, tenant):
    request = OrganizationCreate(name="Acme", slug=tenant, admin_email="ops@acme.example", admin_name="Ana",
                                 password="correct horse battery")
    register_organization(pool, request)
    return tenant


def _age(pool, key_id: str, column: str, hours: float) -> None:
    """Move a key's timestamp `hours` into the past, as if that time had gone by."""
    with pool.connection() as conn:
        conn.execute(f"UPDATE api_keys SET {column} = {column} - %s * interval '1 hour' WHERE id = %s",
                     [hours, key_id])


def test_a_key_expires_after_rotation_days_and_says_so(pool, org):
    meta, key = create_key(pool, org, "ci", ["read"], expires_days=90)
    listed = {k["id"]: k for k in list_keys(pool, org)}[meta["id"]]
    assert listed["expires_at"] == meta["expires_at"]
    assert 89.9 < (listed["expires_at"] - listed["created_at"]).total_seconds() / 86400 <= 90
    assert authenticate(pool, key).key_id == meta["id"]
    _age(pool, meta["id"], "expires_at", 90 * 24)
    with pytest.raises(KeyExpired, match=r"expired at .*rotate it \(POST /api/v1/keys/.*/rotate\)"):
        authenticate(pool, key)
    _, never = create_key(pool, org, "forever", ["read"])  # no rotation_days: no expiry
    assert authenticate(pool, never).tenant == org
    new_meta, new_key = rotate_key(pool, org, meta["id"], expires_days=90)  # an expired key can still be rotated
    assert authenticate(pool, new_key).key_id == new_meta["id"] and new_meta["expires_at"] is not None


def test_a_rotated_key_works_through_its_grace_period_then_stops(pool, org):
    meta, old = create_key(pool, org, "agent", ["read", "write"])
    new_meta, new = rotate_key(pool, org, meta["id"], grace_hours=24)
    assert authenticate(pool, old).key_id == meta["id"] and authenticate(pool, new).scopes == ("read", "write")
    with pytest.raises(InputError, match="no active key"):
        rotate_key(pool, org, meta["id"], grace_hours=24)  # retiring already: not twice
    _age(pool, meta["id"], "revoked_at", 23)
    assert authenticate(pool, old).tenant == org
    _age(pool, meta["id"], "revoked_at", 1.01)
    with pytest.raises(AuthFailed, match="invalid or revoked"):
        authenticate(pool, old)
    assert authenticate(pool, new).key_id == new_meta["id"]


def test_revoking_a_key_in_its_grace_period_stops_it_at_once(pool, org):
    meta, old = create_key(pool, org, "agent", ["read"])
    rotate_key(pool, org, meta["id"], grace_hours=24)
    assert revoke_key(pool, org, meta["id"])
    with pytest.raises(AuthFailed):
        authenticate(pool, old)
    assert not revoke_key(pool, org, meta["id"])


def test_registration_takes_the_guides_field_names_or_devmeshs_not_both(pool, tenant):
    guide = OrganizationCreate.model_validate({
        "organization_name": "My AI Company", "organization_slug": tenant, "admin_email": "admin@myai.com",
        "admin_name": "Admin User", "admin_password": "SecurePass123!"})
    assert (guide.name, guide.slug, guide.password) == ("My AI Company", tenant, "SecurePass123!")
    organization, key = register_organization(pool, guide, expires_days=30)
    assert organization["tenant"] == tenant and organization["key"]["expires_at"] is not None
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        OrganizationCreate.model_validate({"name": "A", "organization_name": "B", "slug": "abc", "admin_email":
                                           "a@b.co", "admin_name": "A", "password": "x" * 12})
