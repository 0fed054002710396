-- A run that claims a delivery holds it for a lease: a second run of the same delivery (Prefect's triggers dedupe
-- event ids only in memory, so an event re-emitted across a server crash can start a second run) is a duplicate
-- while the first holds it; a run that crashed is redriven once the lease has passed.
ALTER TABLE webhook_deliveries ADD COLUMN claimed_at timestamptz;
