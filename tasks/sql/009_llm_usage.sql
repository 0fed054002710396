-- 009: chat model (LLM) token usage, summed per tenant, provider, model and UTC day.
-- Rows are upserted by adding to the counters, so concurrent writers never lose an increment.
CREATE TABLE llm_usage (
    tenant_id      text        NOT NULL,
    provider       text        NOT NULL,
    model          text        NOT NULL,  -- as the provider reported it in its answer
    day            date        NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    calls          bigint      NOT NULL DEFAULT 0 CHECK (calls >= 0),
    input_tokens   bigint      NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens  bigint      NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, provider, model, day)
);
