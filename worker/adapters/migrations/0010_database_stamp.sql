-- One identity per database that a backup, a restore and pg_dump all keep (it is data), and
-- that another database does not share: every message the relay publishes carries it, so a
-- relay can tell its own output log from another database's before it trusts that log.
CREATE TABLE database_stamp (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    stamp uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO database_stamp DEFAULT VALUES;

-- Parked rows (the broker refused them) are counted for /metrics and listed for ops.
CREATE INDEX outbox_parked ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NOT NULL;
