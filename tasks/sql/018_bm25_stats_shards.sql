-- 018: BM25 statistics without row contention between concurrent writers of one tenant.
-- Before, every insert or delete of chunks upserted the one (tenant, lexeme) row of each of its terms and the one
-- tenant_stats row, and held those row locks until commit: two ingests into one tenant ran one after the other.
-- Now each row is split into up to 16 shards; a writing transaction takes the first shard nobody else holds
-- (a try-lock, which never waits) and adds its counts there, so concurrent writers touch disjoint rows.
-- Readers sum the shards of a term (at most 16 index entries). Deletes add negative counts to their own shard:
-- a shard may go below zero, the sum over shards stays exact.
ALTER TABLE term_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE term_stats DROP CONSTRAINT term_stats_pkey, ADD PRIMARY KEY (tenant_id, lexeme, shard);
ALTER TABLE tenant_stats ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE tenant_stats DROP CONSTRAINT tenant_stats_pkey, ADD PRIMARY KEY (tenant_id, shard);

-- The shard this transaction writes: the first of 0..15 whose advisory lock (class 0x626d3235, 'bm25') it holds
-- or can take at once; the lock lasts until commit, so no other live transaction writes that shard. When all 16
-- are held, shard 0 (its row locks then serialise, in the triggers' stable lexeme order: no deadlock).
CREATE FUNCTION devmesh_stats_shard() RETURNS smallint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    FOR s IN 0..15 LOOP
        IF pg_try_advisory_xact_lock(1651323445, s) THEN
            RETURN s;
        END IF;
    END LOOP;
    RETURN 0;
END $$;

CREATE OR REPLACE FUNCTION devmesh_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sh smallint := devmesh_stats_shard();
BEGIN
    INSERT INTO tenant_stats AS s (tenant_id, shard, n_chunks, total_len)
        SELECT tenant_id, sh, count(*), sum(token_count) FROM new_rows GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id, shard) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;
    INSERT INTO term_stats AS t (tenant_id, lexeme, shard, df)
        SELECT r.tenant_id, l.lexeme, sh, count(*) FROM new_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme)
        GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, lexeme, shard) DO UPDATE SET df = t.df + excluded.df;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION devmesh_stats_remove() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sh smallint := devmesh_stats_shard();
BEGIN
    INSERT INTO tenant_stats AS s (tenant_id, shard, n_chunks, total_len)
        SELECT tenant_id, sh, -count(*), -sum(token_count) FROM old_rows GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id, shard) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;
    INSERT INTO term_stats AS t (tenant_id, lexeme, shard, df)
        SELECT r.tenant_id, l.lexeme, sh, -count(*) FROM old_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme)
        GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, lexeme, shard) DO UPDATE SET df = t.df + excluded.df;
    RETURN NULL;
END $$;
