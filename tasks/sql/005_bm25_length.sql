-- 005: BM25 document length from token_count (model tokens, stored anyway) instead of a second generated
-- column: tsv_length called to_tsvector a second time for every chunk stored, halving the write path's speed.
CREATE OR REPLACE FUNCTION devmesh_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_stats AS s (tenant_id, n_chunks, total_len)
        SELECT tenant_id, count(*), sum(token_count) FROM new_rows GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id) DO UPDATE
        SET n_chunks = s.n_chunks + excluded.n_chunks, total_len = s.total_len + excluded.total_len;
    INSERT INTO term_stats AS t (tenant_id, lexeme, df)
        SELECT r.tenant_id, l.lexeme, count(*) FROM new_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme)
        GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, lexeme) DO UPDATE SET df = t.df + excluded.df;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION devmesh_stats_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenant_stats s SET n_chunks = s.n_chunks - o.n, total_len = s.total_len - o.len
        FROM (SELECT tenant_id, count(*) AS n, sum(token_count) AS len FROM old_rows GROUP BY tenant_id) o
        WHERE s.tenant_id = o.tenant_id;
    UPDATE term_stats t SET df = t.df - o.n
        FROM (SELECT r.tenant_id, l.lexeme, count(*) AS n
              FROM old_rows r, unnest(tsvector_to_array(r.tsv)) AS l(lexeme) GROUP BY 1, 2 ORDER BY 1, 2) o
        WHERE t.tenant_id = o.tenant_id AND t.lexeme = o.lexeme;
    RETURN NULL;
END $$;

UPDATE tenant_stats s SET total_len = coalesce((SELECT sum(c.token_count) FROM chunks c WHERE c.tenant_id = s.tenant_id), 0);
ALTER TABLE chunks DROP COLUMN tsv_length;
