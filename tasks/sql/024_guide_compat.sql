-- 024: what the Developer Mesh guide's clients need.
-- A context may carry the id its client chose ("conv-<session>"); its uuid is then derived from that name
-- (tasks/context_models.py context_uuid), so the primary key already makes a name unique per tenant: the index
-- states it and serves listing by name.
ALTER TABLE contexts ADD COLUMN name text;
CREATE UNIQUE INDEX contexts_name ON contexts (tenant_id, name) WHERE name IS NOT NULL;

-- API keys expire (settings keys.rotation_days, set when a key is issued); a rotated key's revoked_at lies in the
-- future until its grace period ends (keys.rotation_grace_hours).
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
