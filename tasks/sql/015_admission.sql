-- Admission state shared by every gateway process (tasks/ratelimit.py), so that two replicas over one database
-- grant a key its quota once and hold a lockout together:
--   admission_buckets   a token bucket per API key (`key:<id>`, REST and MCP alike) and per client address for
--                       registrations (`register:<address>`); full_at: when it will be full again (safe to forget)
--   admission_failures  failed authentications per client address: a score decaying at max_failures per window,
--                       and the end of its lockout
--   admission_seen      which key authenticated from which address, and when: such a key is still admitted while
--                       that address is locked out (a proxy's shared address cannot lock out its known users)
-- Times are epoch seconds from the database's clock (one clock for every replica). UNLOGGED: no WAL for a
-- per-request update; after a crash of PostgreSQL they come back empty (full buckets, no lockouts), the state of a
-- fresh start. No tenant data: ids of keys and client addresses only, pruned by the gateway.
CREATE UNLOGGED TABLE admission_buckets (
    bucket   text PRIMARY KEY,
    tokens   double precision NOT NULL,
    stamp    double precision NOT NULL,
    full_at  double precision NOT NULL,
    granted  boolean NOT NULL
);

CREATE UNLOGGED TABLE admission_failures (
    address      text PRIMARY KEY,
    score        double precision NOT NULL,
    stamp        double precision NOT NULL,
    locked_until double precision NOT NULL
);

CREATE UNLOGGED TABLE admission_seen (
    address  text NOT NULL,
    key_id   text NOT NULL,
    seen_at  double precision NOT NULL,
    PRIMARY KEY (address, key_id)
);
