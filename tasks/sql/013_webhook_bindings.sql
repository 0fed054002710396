-- Webhooks per tenant: which tenant a repository's deliveries reach, and the block holding the secret they must be
-- signed with (tasks/webhook_bindings.py). A delivery reaches each bound tenant whose secret signed it; the
-- operator's GitHubWebhook block still routes what its own secret signed, but never to an organization's tenant:
-- such a delivery is recorded as 'unbound' (in the operator's tenant) and not ingested.

CREATE TABLE webhook_bindings (
    id           uuid PRIMARY KEY,
    repo_pattern text NOT NULL,             -- 'owner/repo' or a glob ('owner/*'), lower-case
    like_pattern text NOT NULL,             -- the same as a LIKE pattern, matched in the database
    tenant_id    text NOT NULL,
    secret_block text NOT NULL,             -- 'secret/NAME' (a Prefect Secret) or 'devmesh-github-webhook/NAME'
    created_by   jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (repo_pattern, tenant_id)
);
CREATE INDEX webhook_bindings_tenant ON webhook_bindings (tenant_id);

ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_status_check;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_status_check
    CHECK (status IN ('received', 'emitted', 'ignored', 'processed', 'failed', 'unbound'));
