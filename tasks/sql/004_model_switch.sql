-- 004: which embedder produced a model, each tenant's default model, and model switches (backfills).
ALTER TABLE embedding_models ADD COLUMN embedder text;

CREATE TABLE tenant_models (
    tenant_id         text        PRIMARY KEY,
    default_model_id  integer     NOT NULL REFERENCES embedding_models,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per switch; `cursor` is the last chunk id embedded, so a crashed backfill resumes there.
CREATE TABLE model_switches (
    id           bigserial   PRIMARY KEY,
    tenant_id    text        NOT NULL,
    model_id     integer     NOT NULL REFERENCES embedding_models,
    status       text        NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    cursor       bigint      NOT NULL DEFAULT 0,
    embedded     bigint      NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    error        text
);
CREATE UNIQUE INDEX model_switches_one_running ON model_switches (tenant_id) WHERE status = 'running';
