-- Operations per tenant: the credential blocks and the policy block an operator granted a tenant (no row: the
-- tenant executes nothing that needs a credential; Settings.tenant alone has an implicit grant of the settings'
-- blocks). Approvers get an id, and a decision names who made it by kind and id as well as by name.

CREATE TABLE tenant_grants (
    tenant_id        text PRIMARY KEY,
    policy_block     text NOT NULL,          -- an OperationPolicy block
    github_block     text,                   -- a GitHubConnection block
    kubernetes_block text,                   -- a KubernetesConnection block
    aws_block        text,                   -- a prefect-aws AwsCredentials block
    granted_by       jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE approvers ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX approvers_id ON approvers (id);

ALTER TABLE approvals ADD COLUMN approver_id text;
ALTER TABLE approvals ADD COLUMN approver_kind text CHECK (approver_kind IN ('approver', 'api_key'));
