-- 003: embedding usage and its list-price cost, summed per tenant, provider, model and UTC day.
-- Rows are upserted by adding to the counters, so concurrent writers never lose an increment.
CREATE TABLE embedding_usage (
    tenant_id   text           NOT NULL,
    model       text           NOT NULL,
    provider    text           NOT NULL,
    day         date           NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    estimated   boolean        NOT NULL DEFAULT false,  -- tokens estimated: the provider reported none
    calls       bigint         NOT NULL DEFAULT 0 CHECK (calls >= 0),
    texts       bigint         NOT NULL DEFAULT 0 CHECK (texts >= 0),
    tokens      bigint         NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    cost_usd    numeric(20, 10) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    updated_at  timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model, provider, day, estimated)
);
