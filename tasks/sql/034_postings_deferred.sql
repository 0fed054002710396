-- 034: a bulk load defers its tenant's BM25 postings (019) and rebuilds them in one pass when done, as it already
-- drops the GIN index and builds it after: packing the postings row by row in the insert trigger cost the bulk
-- path a quarter of its speed, and one rebuild from chunks costs a third of that.
-- While a tenant is listed here, its inserts still count document frequencies but write no postings, and its
-- unfiltered keyword searches take the GIN path (tasks/postings.py sees the row in the snapshot it reads the
-- postings in). devmesh_compact_postings rebuilds the tenant's postings and removes the row in one transaction,
-- under the tenant's postings lock; writers read the row only once they hold that lock shared, so an insert
-- either wrote its postings or committed before the rebuild read the chunks. A load cut short leaves the row:
-- the hourly compaction (tenants_to_compact) rebuilds that tenant, searches stay exact meanwhile.
CREATE TABLE postings_deferred (
    tenant_id text        PRIMARY KEY,
    since     timestamptz NOT NULL DEFAULT now()
);

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
    -- (a statement of its own, after the lock: it reads postings_deferred in a snapshot taken once the lock is held)
    IF NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT tenant_id FROM new_rows) t
                   WHERE NOT EXISTS (SELECT 1 FROM postings_deferred d WHERE d.tenant_id = t.tenant_id)) THEN
        INSERT INTO term_stats AS t (tenant_id, lexeme, shard, df)
            SELECT r.tenant_id, l.lexeme, sh, count(*) FROM new_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme)
            GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (tenant_id, lexeme, shard) DO UPDATE SET df = t.df + excluded.df;
        RETURN NULL;
    END IF;
    -- (a statement mixing tenants writes every one's postings: a deferred tenant's are rebuilt anyway)
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

CREATE OR REPLACE FUNCTION devmesh_compact_postings(tenant text) RETURNS integer LANGUAGE plpgsql AS $$
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
    DELETE FROM postings_deferred WHERE tenant_id = tenant;
    RETURN written;
END $$;
