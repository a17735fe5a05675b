-- The relay numbers rows when it publishes them (relay_seq, from its own sequence, under its
-- advisory lock), and every message carries that number. Outbox ids are not in commit order
-- (two transactions take ids and commit in either order), publication numbers are: so the
-- highest number in the output log tells exactly which rows a crashed relay had published.
CREATE SEQUENCE outbox_relay_seq;
ALTER TABLE outbox ADD COLUMN relay_seq bigint;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (relay_seq NULLS LAST, id)
    WHERE sent_at IS NULL AND failed_at IS NULL;
