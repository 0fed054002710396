-- Batched webhook handling: a handler run claims a route's pending deliveries many at a time (FOR UPDATE SKIP
-- LOCKED, oldest first) instead of one flow run per delivery; `handled` counts how often a delivery was finished
-- (processed or failed), so "exactly once" is a column to check, not an inference from flow runs. Only emitted
-- deliveries are claimed: each one's event reaches Prefect (and its UI) before it is processed.
ALTER TABLE webhook_deliveries ADD COLUMN handled integer NOT NULL DEFAULT 0;
CREATE INDEX webhook_deliveries_claimable ON webhook_deliveries (route, received_at)
    WHERE status = 'emitted';
