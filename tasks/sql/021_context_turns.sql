-- 021: find a conversation's chunk by the message it starts at. Hybrid search of conversation turns
-- (tasks/fusion.py) reads the turns around each candidate; without it that read scans every chunk of the context.
CREATE INDEX chunks_message ON chunks (tenant_id, document_id, ((metadata -> 'message_range' ->> 0)::integer))
    WHERE metadata ? 'message_range';
