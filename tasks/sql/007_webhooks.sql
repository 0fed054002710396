-- Webhook deliveries: persisted before the 202, deduplicated by delivery id, emitted to Prefect after (outbox).

CREATE TABLE webhook_deliveries (
    delivery_id  text PRIMARY KEY,
    source       text NOT NULL DEFAULT 'github',
    event        text NOT NULL,
    action       text,
    repository   text,
    tenant_id    text NOT NULL,
    payload      jsonb NOT NULL,
    route        text,            -- the deployment the event runs; NULL for unknown events (recorded, not run)
    status       text NOT NULL CHECK (status IN ('received', 'emitted', 'ignored', 'processed', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    flow_run_id  uuid,
    received_at  timestamptz NOT NULL DEFAULT now(),
    emitted_at   timestamptz,
    processed_at timestamptz
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (received_at) WHERE status = 'received';
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- Where each repository's incremental sync stopped.
CREATE TABLE repository_sync (
    tenant_id     text NOT NULL,
    repository    text NOT NULL,
    issues_since  timestamptz,
    code_ref      text,
    code_sha      text,
    synced_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, repository)
);
