-- 035: a bulk load defers its tenant's document frequencies too, and chunk rows are stored uncompressed.
--
-- Counting every lexeme of every statement into term_stats (an upsert per lexeme per statement, ~40,000 per
-- 2,000-row batch of SciFact text) was about a third of the bulk COPY's time; one count from the tenant's
-- chunks when the load ends is part of the postings rebuild, which reads the same lexemes anyway. While a tenant
-- is listed in postings_deferred, its inserts and deletes now leave its term_stats alone (tenant_stats, one row,
-- still counts chunks and lengths), and its keyword searches take the GIN path, which then counts the query's
-- lexemes' document frequencies in the tenant's chunks (tasks/search.py): exact meanwhile.
-- devmesh_compact_postings rebuilds both the postings and term_stats of the tenant, under its postings lock, in
-- one transaction. Deletes now take that lock shared as inserts do (they skip term_stats while it is deferred).
-- The triggers read postings_deferred in a snapshot taken after the lock only under READ COMMITTED (each statement
-- its own snapshot); a REPEATABLE READ or SERIALIZABLE transaction (an external server's
-- default_transaction_isolation) read it before, and may not see a rebuild that committed since: such a
-- transaction always writes its postings and counts, which a later rebuild replaces anyway.
--
-- toast_tuple_target: a chunk row (text, its tsvector, metadata) is ~3 kB; above 2 kB PostgreSQL tried pglz on
-- the tsvector (which does not shrink) and then on the text, ~7% of the bulk COPY's time. Rows up to 8 kB are
-- now stored as they are: the chunks heap grows by a quarter (~+10% of the tenant's total with its vectors).
ALTER TABLE chunks SET (toast_tuple_target = 8160);

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
    IF current_setting('transaction_isolation') = 'read committed'
       AND NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT tenant_id FROM new_rows) t
                       WHERE NOT EXISTS (SELECT 1 FROM postings_deferred d WHERE d.tenant_id = t.tenant_id)) THEN
        RETURN NULL;  -- every tenant here is deferred: its rebuild counts these chunks
    END IF;
    -- (a statement mixing tenants writes every one's postings and counts: a deferred tenant's are rebuilt anyway)
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

CREATE OR REPLACE FUNCTION devmesh_stats_remove() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sh smallint := devmesh_stats_shard();
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1886352244, hashtext(tenant_id))
        FROM (SELECT DISTINCT tenant_id FROM old_rows ORDER BY 1) t;
    INSERT INTO tenant_stats AS s (tenant_id, shard, n_chunks, total_len)
        SELECT tenant_id, sh, -count(*), -sum(token_count) FROM old_rows GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id, shard) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;
    INSERT INTO term_stats AS t (tenant_id, lexeme, shard, df)
        SELECT r.tenant_id, l.lexeme, sh, -count(*) FROM old_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme)
        WHERE current_setting('transaction_isolation') <> 'read committed'
           OR r.tenant_id NOT IN (SELECT tenant_id FROM postings_deferred)
        GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, lexeme, shard) DO UPDATE SET df = t.df + excluded.df;
    RETURN NULL;
END $$;

-- The tenant's postings and document frequencies rebuilt from its chunks, one segment and one shard per lexeme
-- (the count of a lexeme's postings entries is its document frequency); ends a deferral. Returns the postings
-- rows written.
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
    DELETE FROM term_stats WHERE tenant_id = tenant;
    INSERT INTO term_stats (tenant_id, lexeme, shard, df)
        SELECT tenant_id, lexeme, 0, n FROM chunk_postings WHERE tenant_id = tenant ORDER BY lexeme;
    DELETE FROM postings_deferred WHERE tenant_id = tenant;
    RETURN written;
END $$;
