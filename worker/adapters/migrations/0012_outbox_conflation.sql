-- Balance snapshots are conflated (docs/adr/0003): a batch that writes an account's new
-- snapshot deletes that account's older snapshots the relay has not numbered yet, so a backlog
-- holds at most one unsent snapshot per account instead of one per batch. `supersedes` marks
-- the only rows that may ever be deleted (reminders, invoices and dead letters never are); the
-- partial index holds exactly the rows such a delete may touch. A constant default: adding the
-- column rewrites nothing.
ALTER TABLE outbox ADD COLUMN supersedes boolean NOT NULL DEFAULT false;
CREATE INDEX outbox_conflatable ON outbox (topic, key)
    WHERE supersedes AND sent_at IS NULL AND failed_at IS NULL AND relay_seq IS NULL;
