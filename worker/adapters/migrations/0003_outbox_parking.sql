-- A row the broker can never accept (e.g. too large) is parked with its reason instead of
-- blocking everything behind it; ops see it in the backlog metrics and the worker's log.
ALTER TABLE outbox ADD COLUMN failed_at timestamptz, ADD COLUMN failure text;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NULL;
