-- Guarded DevOps operations: one row per idempotency key, approvers, approvals, and the audit trail.

CREATE TABLE operations (
    id              uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL,
    operation       text NOT NULL,
    arguments_hash  text NOT NULL,
    target          text,
    plan            jsonb,
    plan_hash       text,
    actor           jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL CHECK (status IN ('planned', 'denied', 'awaiting_approval', 'rejected',
                                                     'running', 'succeeded', 'failed')),
    result          jsonb,
    error           text,
    flow_run_id     uuid,
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX operations_recent ON operations (tenant_id, operation, updated_at) WHERE status = 'succeeded';

-- People who may approve; only a hash of their token is stored.
CREATE TABLE approvers (
    tenant_id  text NOT NULL,
    name       text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, name)
);

-- A decision, bound to the plan hash and the target it was made for.
CREATE TABLE approvals (
    operation_id uuid PRIMARY KEY REFERENCES operations (id) ON DELETE CASCADE,
    plan_hash    text NOT NULL,
    target       text NOT NULL,
    approver     text NOT NULL,
    decision     text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    comment      text,
    decided_at   timestamptz NOT NULL DEFAULT now()
);

-- Append-only and hash-chained: hash = sha256(prev_hash || canonical record); seq has no gaps.
CREATE TABLE audit_log (
    seq          bigint PRIMARY KEY,
    at           timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    actor        jsonb NOT NULL,
    operation    text NOT NULL,
    target       text,
    plan_hash    text,
    approval     jsonb,
    status       text NOT NULL,
    result       jsonb,
    error        text,
    flow_run_id  uuid,
    operation_id uuid,
    duration_ms  integer,
    prev_hash    text NOT NULL,
    hash         text NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
