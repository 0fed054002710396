"""Organizations and API keys: public registration (rate limited per client address, across gateway replicas; open,
by invite or closed as Settings.tenancy.registration says; reserved names, look-alikes and the operator's tenants
answer 409) and admin key management."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from blocks.errors import InputError
from deployments.admission import Refusal
from deployments.api.auth import Admin, peer, refused
from deployments.api.errors import ApiError
from deployments.api.schemas import KeyCreate, KeyCreated, KeyList, Registered
from deployments.api.state import ApiState, api_state
from tasks.claims import RegistrationRefused, SlugUnavailable
from tasks.tenancy import OrganizationCreate, create_key, list_keys, register_organization, revoke_key, rotate_key

__all__ = ["router"]

router = APIRouter()


@router.post("/auth/register/organization", status_code=201, response_model=Registered, tags=["organizations"])
def register(body: OrganizationCreate, request: Request, api: ApiState = Depends(api_state)):
    """Create an organization (its slug becomes the tenant) and its first admin key, shown once."""
    try:
        api.gate.registration(peer(request), request.headers)
    except Refusal as refusal:
        raise refused(refusal) from None
    try:
        organization, key = register_organization(api.pool(), body, api.claim_rules(),
                                                  expires_days=api.settings.keys.rotation_days)
    except RegistrationRefused as exc:
        raise ApiError(403, exc.code, exc.message, item="registration") from None
    except SlugUnavailable as exc:
        raise ApiError(409, f"slug_{exc.reason}", exc.message, item=body.slug) from None
    except InputError:
        raise ApiError(409, "slug_taken", "an organization with this slug exists", item=body.slug) from None
    meta = organization.pop("key")
    return {"organization": organization, "api_key": key, "key": meta}


@router.post("/keys", status_code=201, response_model=KeyCreated, tags=["keys"])
def new_key(body: KeyCreate, principal: Admin, api: ApiState = Depends(api_state)):
    """A new key of the caller's organization, shown once."""
    meta, key = create_key(api.pool(), principal.tenant, body.name, list(body.scopes),
                           rate_per_minute=body.rate_per_minute, burst=body.burst,
                           expires_days=api.settings.keys.rotation_days)
    return {"api_key": key, "key": meta}


@router.get("/keys", response_model=KeyList, tags=["keys"])
def keys(principal: Admin, api: ApiState = Depends(api_state)):
    """The organization's keys: prefixes, scopes, limits and dates; never the keys."""
    return {"items": list_keys(api.pool(), principal.tenant)}


@router.delete("/keys/{key_id}", status_code=204, tags=["keys"])
def revoke(key_id: str, principal: Admin, api: ApiState = Depends(api_state)):
    """Revoke a key at once."""
    try:
        revoked = revoke_key(api.pool(), principal.tenant, key_id)
    except InputError:
        revoked = False
    if not revoked:
        raise ApiError(404, "not_found", "no active key with this id", item=key_id[:64])
    return Response(status_code=204)


@router.post("/keys/{key_id}/rotate", status_code=201, response_model=KeyCreated, tags=["keys"])
def rotate(key_id: str, principal: Admin, api: ApiState = Depends(api_state)):
    """Issue a key's successor (same name, scopes and limits), shown once; the old key keeps working for
    keys.rotation_grace_hours (default 24), then stops."""
    keys = api.settings.keys
    try:
        meta, key = rotate_key(api.pool(), principal.tenant, key_id, grace_hours=keys.rotation_grace_hours,
                               expires_days=keys.rotation_days)
    except InputError:
        raise ApiError(404, "not_found", "no active key with this id", item=key_id[:64]) from None
    return {"api_key": key, "key": meta}

