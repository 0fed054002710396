-- 019: BM25 postings, so that an unfiltered keyword search scores every chunk holding a query term without
-- reading chunks or evaluating a tsquery per chunk (tasks/postings.py reads and scores them).
-- One row per (tenant, lexeme, segment): the chunks one INSERT statement added that hold the lexeme, as n packed
-- big-endian records of 14 bytes (chunk id int8, term frequency int2, chunk length int4 = token_count).
-- Written by the statement trigger that already counts document frequencies, in the chunks' own transaction:
-- a search sees a chunk's postings exactly when it sees the chunk. Deleting chunks leaves their entries behind
-- (rewriting packed rows per delete would cost more than the delete): searches drop ids that are no longer
-- chunks, and devmesh_compact_postings rebuilds a tenant's rows from its chunks (flows/housekeeping.py, hourly),
-- which also merges the small segments of single-chunk inserts.
CREATE TABLE chunk_postings (
    tenant_id text    NOT NULL,
    lexeme    text    NOT NULL,
    segment   bigint  NOT NULL,  -- the lowest chunk id of the segment (one statement's chunks are its own)
    n         integer NOT NULL,
    entries   bytea   NOT NULL,
    PRIMARY KEY (tenant_id, lexeme, segment)
);
-- Stored uncompressed: reading them is then a copy (pglz gains little on ids and costs a pass per read).
ALTER TABLE chunk_postings ALTER COLUMN entries SET STORAGE EXTERNAL;

-- Writers of a tenant's chunks hold its postings lock (class 0x706f7374, 'post') shared; a compaction holds it
-- alone, so no insert commits postings between its delete and its rebuild.
CREATE OR REPLACE FUNCTION devmesh_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sh smallint := devmesh_stats_shard();
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1886352244, hashtext(tenant_id))
        FROM (SELECT DISTINCT tenant_id FROM new_rows ORDER BY 1) t;
    INSERT INTO tenant_stats AS s (tenant_id, shard, n_chunks, total_len)
        SELECT tenant_id, sh, count(*), sum(token_count) FROM new_rows GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id, shard) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;
    WITH p AS MATERIALIZED (
        SELECT r.tenant_id, u.lexeme, min(r.id) AS segment, count(*)::integer AS n,
               string_agg(int8send(r.id) || int2send(coalesce(array_length(u.positions, 1), 1)::smallint)
                          || int4send(r.token_count), ''::bytea) AS entries
        FROM new_rows r, unnest(r.tsv) AS u GROUP BY 1, 2),
    postings AS (INSERT INTO chunk_postings (tenant_id, lexeme, segment, n, entries) SELECT * FROM p)
    INSERT INTO term_stats AS t (tenant_id, lexeme, shard, df)
        SELECT tenant_id, lexeme, sh, n FROM p ORDER BY 1, 2
    ON CONFLICT (tenant_id, lexeme, shard) DO UPDATE SET df = t.df + excluded.df;
    RETURN NULL;
END $$;

-- A tenant's postings rebuilt from its chunks (dropping deleted chunks' entries, one segment per lexeme); returns
-- the rows written. Each statement of a VOLATILE function reads a new snapshot: the rebuild sees every chunk
-- committed before the lock was granted, and no writer of the tenant commits while it is held.
CREATE FUNCTION devmesh_compact_postings(tenant text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    written integer;
BEGIN
    PERFORM pg_advisory_xact_lock(1886352244, hashtext(tenant));
    DELETE FROM chunk_postings WHERE tenant_id = tenant;
    INSERT INTO chunk_postings (tenant_id, lexeme, segment, n, entries)
        SELECT c.tenant_id, u.lexeme, min(c.id), count(*)::integer,
               string_agg(int8send(c.id) || int2send(coalesce(array_length(u.positions, 1), 1)::smallint)
                          || int4send(c.token_count), ''::bytea)
        FROM chunks c, unnest(c.tsv) AS u WHERE c.tenant_id = tenant GROUP BY 1, 2;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END $$;

SELECT devmesh_compact_postings(tenant_id) FROM (SELECT DISTINCT tenant_id FROM chunks) t;
