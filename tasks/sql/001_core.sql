-- 001: documents, chunks, embeddings side by side per model, BM25 term statistics.
-- Released migrations are never edited: add 002_*.sql instead.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE documents (
    tenant_id     text        NOT NULL,
    document_id   text        NOT NULL,
    source        text,
    kind          text        NOT NULL,
    content_hash  text        NOT NULL,   -- sha256 of the whole text + chunker parameters
    chunk_count   integer     NOT NULL DEFAULT 0,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, document_id)
);

-- Immutable so it can feed a generated column: BM25 needs the document length in tokens,
-- length(tsvector) only counts distinct lexemes.
CREATE FUNCTION devmesh_tsv_length(tsvector) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN (SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0)::integer FROM unnest($1));

CREATE TABLE chunks (
    id            bigserial   PRIMARY KEY,
    tenant_id     text        NOT NULL,
    document_id   text        NOT NULL,
    seq           integer     NOT NULL,
    content       text        NOT NULL,
    content_hash  text        NOT NULL,
    token_count   integer     NOT NULL,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    tsv           tsvector    GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED,
    tsv_length    integer     GENERATED ALWAYS AS (devmesh_tsv_length(to_tsvector('english'::regconfig, content))) STORED,
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, document_id) REFERENCES documents ON DELETE CASCADE
);
CREATE INDEX chunks_document ON chunks (tenant_id, document_id, seq);
CREATE INDEX chunks_hash ON chunks (tenant_id, content_hash);
CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
CREATE INDEX chunks_metadata ON chunks USING gin (metadata jsonb_path_ops);

-- One row per embedding model; each gets its own partial HNSW index over
-- (embedding::vector(dimensions)) so models of different sizes live side by side, unpadded.
CREATE TABLE embedding_models (
    id          serial      PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    dimensions  integer     NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE embeddings (
    chunk_id   bigint  NOT NULL REFERENCES chunks ON DELETE CASCADE,
    model_id   integer NOT NULL REFERENCES embedding_models,
    tenant_id  text    NOT NULL,
    embedding  vector  NOT NULL,
    PRIMARY KEY (chunk_id, model_id)
);

-- BM25 statistics per tenant, kept by statement-level triggers (they fire for COPY too).
CREATE TABLE term_stats (
    tenant_id  text    NOT NULL,
    lexeme     text    NOT NULL,
    df         integer NOT NULL,
    PRIMARY KEY (tenant_id, lexeme)
);
CREATE TABLE tenant_stats (
    tenant_id   text   PRIMARY KEY,
    n_chunks    bigint NOT NULL,
    total_len   bigint NOT NULL
);

CREATE FUNCTION devmesh_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_stats AS s (tenant_id, n_chunks, total_len)
        SELECT tenant_id, count(*), sum(tsv_length) FROM new_rows GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;
    -- ORDER BY keeps the lock order stable, so concurrent ingests cannot deadlock on term rows.
    INSERT INTO term_stats AS t (tenant_id, lexeme, df)
        SELECT r.tenant_id, l.lexeme, count(*) FROM new_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme)
        GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, lexeme) DO UPDATE SET df = t.df + excluded.df;
    RETURN NULL;
END $$;

CREATE FUNCTION devmesh_stats_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenant_stats s SET n_chunks = s.n_chunks - o.n, total_len = s.total_len - o.len
        FROM (SELECT tenant_id, count(*) AS n, sum(tsv_length) AS len FROM old_rows GROUP BY tenant_id) o
        WHERE s.tenant_id = o.tenant_id;
    UPDATE term_stats t SET df = t.df - o.n
        FROM (SELECT r.tenant_id, l.lexeme, count(*) AS n
              FROM old_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme) GROUP BY 1, 2 ORDER BY 1, 2) o
        WHERE t.tenant_id = o.tenant_id AND t.lexeme = o.lexeme;
    RETURN NULL;
END $$;

CREATE TRIGGER chunks_stats_insert AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION devmesh_stats_add();
CREATE TRIGGER chunks_stats_delete AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION devmesh_stats_remove();
