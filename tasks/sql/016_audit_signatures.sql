-- Audit records signed with a key the database does not hold (tasks/audit.py, blocks/audit_key.py): key_id names
-- the Ed25519 key (its fingerprint), signature signs the record's hash. Records written before the key existed
-- keep both NULL and verify as "unauthenticated legacy records". Adding columns rewrites no row, so the
-- append-only triggers are untouched.
ALTER TABLE audit_log ADD COLUMN key_id text, ADD COLUMN signature text;
