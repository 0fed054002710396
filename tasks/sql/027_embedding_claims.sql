-- Embedding claims (tasks/embedding_claims.py): concurrent ingests of one tenant embed each text once. A run
-- claims the content hashes it is about to embed, publishes their vectors here as soon as it has them, and drops
-- its rows when its writes are done; another run needing the same hash waits for the vector instead of embedding
-- it again, or takes the claim over once its lease has passed without one. UNLOGGED: a claim lost in a crash
-- only costs an embedding.
CREATE UNLOGGED TABLE embedding_claims (
    tenant_id     text        NOT NULL,
    model_id      integer     NOT NULL,
    content_hash  text        NOT NULL,
    owner         uuid        NOT NULL,
    claimed_until timestamptz NOT NULL,
    embedding     vector,
    PRIMARY KEY (tenant_id, model_id, content_hash)
);
CREATE INDEX embedding_claims_owner ON embedding_claims (owner);
