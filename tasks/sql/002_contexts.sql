-- 002: conversation contexts and their messages. A context's chunks live in documents/chunks/embeddings
-- under document_id 'context:<id>' (kind 'conversation'), so search covers them like any document.
CREATE TABLE contexts (
    tenant_id         text        NOT NULL,
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    user_id           text,
    agent_id          text,
    session_id        text,
    type              text        NOT NULL DEFAULT 'conversation',
    metadata          jsonb       NOT NULL DEFAULT '{}',
    message_count     integer     NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    byte_count        bigint      NOT NULL DEFAULT 0 CHECK (byte_count >= 0),
    token_estimate    bigint      NOT NULL DEFAULT 0,
    -- Chunks written so far, which is also the seq of the next one: appends never read the old chunks.
    chunk_count       integer     NOT NULL DEFAULT 0,
    first_message_at  timestamptz,
    last_message_at   timestamptz,
    expires_at        timestamptz,
    max_messages      integer     NOT NULL DEFAULT 100000 CHECK (max_messages > 0),
    max_bytes         bigint      NOT NULL DEFAULT 52428800 CHECK (max_bytes > 0),
    encrypted         boolean     NOT NULL DEFAULT false,
    key_name          text,       -- name of the Secret block holding the Fernet key, when encrypted
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (message_count <= max_messages AND byte_count <= max_bytes),
    CHECK (NOT encrypted OR key_name IS NOT NULL)
);
CREATE INDEX contexts_list ON contexts (tenant_id, user_id, type, updated_at DESC);
CREATE INDEX contexts_agent ON contexts (tenant_id, agent_id, updated_at DESC);
CREATE INDEX contexts_created ON contexts (tenant_id, created_at, id);
CREATE INDEX contexts_metadata ON contexts USING gin (metadata jsonb_path_ops);
CREATE INDEX contexts_expiry ON contexts (expires_at) WHERE expires_at IS NOT NULL;

-- Plaintext messages keep `content` (and tool_arguments); encrypted ones keep only `sealed`, a Fernet token
-- of {"content": ..., "tool_arguments": ...}. Role, name, tool name, sizes and times stay readable.
CREATE TABLE context_messages (
    tenant_id       text        NOT NULL,
    context_id      uuid        NOT NULL,
    idx             integer     NOT NULL CHECK (idx >= 0),
    role            text        NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content         text,
    sealed          bytea,
    name            text,
    tool_name       text,
    tool_arguments  jsonb,
    byte_size       integer     NOT NULL,
    token_count     integer     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, context_id, idx),
    FOREIGN KEY (tenant_id, context_id) REFERENCES contexts ON DELETE CASCADE,
    CHECK ((content IS NULL) <> (sealed IS NULL))
);
