-- The balance feed and the usage forecast: a version per account (strictly increasing, so
-- consumers of the compacted balance topic drop older snapshots), the event time of its last
-- change, and charges per account and business date, grown by each batch.
ALTER TABLE accounts
    ADD COLUMN version bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    ADD COLUMN as_of timestamptz;

CREATE TABLE usage_daily (
    account_id  text NOT NULL REFERENCES accounts (account_id),
    day         date NOT NULL,
    amount_jpy  bigint NOT NULL CHECK (amount_jpy >= 0),
    PRIMARY KEY (account_id, day)
);

-- Charges already in the ledger, by date in the default business zone (Asia/Tokyo).
INSERT INTO usage_daily (account_id, day, amount_jpy)
SELECT account_id, (occurred_at AT TIME ZONE 'Asia/Tokyo')::date, -sum(amount_jpy)
FROM ledger_entries WHERE kind = 'charge'
GROUP BY 1, 2;
