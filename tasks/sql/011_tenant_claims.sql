-- Tenants that cannot be claimed: an organization's look-alike skeleton (tasks/claims.py: 0→o, 1→l, rn→m, vv→w,
-- cl→d), checked at registration under an advisory lock, and one-time registration invites (stored as sha256).

ALTER TABLE organizations ADD COLUMN slug_skeleton text;
UPDATE organizations SET slug_skeleton =
    replace(replace(replace(replace(replace(lower(tenant_id), 'rn', 'm'), 'vv', 'w'), 'cl', 'd'), '0', 'o'), '1', 'l');
ALTER TABLE organizations ALTER COLUMN slug_skeleton SET NOT NULL;
CREATE INDEX organizations_skeleton ON organizations (slug_skeleton);

CREATE TABLE registration_invites (
    id             uuid PRIMARY KEY,
    token_hash     text NOT NULL UNIQUE,
    slug           text,                    -- NULL: any slug registration allows; else only this one
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    created_by     jsonb NOT NULL DEFAULT '{}',
    used_at        timestamptz,
    used_by_tenant text
);
