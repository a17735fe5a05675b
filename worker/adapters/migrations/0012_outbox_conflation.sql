-- Balance snapshots are conflated (docs/adr/0003): a batch that writes an account's new
-- snapshot deletes the one it replaces (found by its message id) if the relay has not
-- numbered it yet, so a backlog holds at most one unsent snapshot per account instead of one
-- per batch. `conflatable` marks the only rows that may ever be deleted (reminders, invoices
-- and dead letters never are). A constant default: adding the column rewrites nothing.
ALTER TABLE outbox ADD COLUMN conflatable boolean NOT NULL DEFAULT false;
