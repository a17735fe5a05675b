-- A usage event's charge entry is its own de-duplication record (issue 14): the entry carries
-- the event's fingerprint and its input offset, and usage no longer writes a processed_events
-- row. Its key, (entry_id, partition) with entry_id = 'charge:' || event_id, was already unique:
-- a second charge for one event is refused by the same index that finds the first.
--
-- Usage rows written to processed_events before this migration stay where they are and are not
-- copied: every release wrote a usage event's charge entry in the transaction that wrote its
-- processed_events row, so the ledger already names each of them, and a charge entry without a
-- fingerprint sends the worker to processed_events for it (only a replay of an event applied
-- before the upgrade meets one). Copying them would rewrite every charge of the append-only
-- ledger under this migration's lock; keeping them costs nothing per new event.
DO $$
DECLARE
    orphans bigint;
BEGIN
    -- What the paragraph above relies on, checked rather than assumed: an applied usage event
    -- whose charge entry were missing would otherwise be applied a second time on replay.
    SELECT count(*) INTO orphans FROM processed_events p
    WHERE p.source = 'usage'
      AND NOT EXISTS (SELECT 1 FROM ledger_entries l WHERE l.entry_id = 'charge:' || p.event_id);
    IF orphans > 0 THEN
        RAISE EXCEPTION 'migration 0011: % applied usage events have no charge entry', orphans
            USING HINT = 'keep the previous release running and report this database';
    END IF;
END $$;

-- Nullable without a default: no rewrite, entries written before keep NULL. No constraint
-- requires them on new charges: a worker of the previous release still running after this
-- migration goes on writing the old way (a charge without them and a processed_events row),
-- which this release reads as it reads the rows from before; the worker itself refuses a batch
-- with an applied usage event and no charge entry (Changes.usage_by_charge).
ALTER TABLE ledger_entries
    ADD COLUMN fingerprint bytea,
    ADD COLUMN input_offset bigint;

-- Every applied input once, wherever its record is: account events and usage from before this
-- migration in processed_events, usage since in the ledger. For people and checks, not for the
-- worker's hot path: a usage event's id here is its entry's `ref`, which has no index; to find
-- one event, ask for its entry, `entry_id = 'charge:' || event_id`. A usage record's topic is
-- the usage topic (BILLING_TOPIC_USAGE).
CREATE VIEW applied_events AS
SELECT source, event_id, fingerprint, account_id, topic, partition, "offset", processed_at
FROM processed_events
UNION ALL
SELECT 'usage', ref, fingerprint, account_id, NULL, partition, input_offset, recorded_at
FROM ledger_entries
WHERE kind = 'charge' AND fingerprint IS NOT NULL;
