-- Organizations (tenants) and API keys. Keys are stored only as sha256 hashes; passwords as scrypt hashes.

CREATE TABLE organizations (
    tenant_id     text PRIMARY KEY,          -- the organization's slug
    name          text NOT NULL,
    admin_email   text NOT NULL,
    admin_name    text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES organizations (tenant_id) ON DELETE CASCADE,
    name            text NOT NULL,
    prefix          text NOT NULL,           -- the first characters, to recognise a key in listings
    key_hash        text NOT NULL UNIQUE,
    scopes          text[] NOT NULL,
    rate_per_minute integer,                 -- NULL: the default
    burst           integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz,
    rotated_from    uuid,
    CHECK (scopes <@ ARRAY['read', 'write', 'operate', 'admin']::text[] AND cardinality(scopes) > 0)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
