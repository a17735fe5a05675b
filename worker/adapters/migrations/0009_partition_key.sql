-- Every account-owned row carries the input partition its account's records arrive on, and
-- every key includes it, so that a distributed PostgreSQL (Citus) can place all rows of one
-- partition in one shard and enforce each key there (docs/adr/0002). The partition is the
-- key's last column: lookups by id alone keep their index.
ALTER TABLE accounts ADD COLUMN partition integer;
UPDATE accounts a SET partition = p.partition
FROM (SELECT DISTINCT ON (account_id) account_id, partition
      FROM processed_events ORDER BY account_id, processed_at DESC) p
WHERE a.account_id = p.account_id;
-- Created by a batch whose every event was refused (so it owns no rows): set by its next record.
UPDATE accounts SET partition = -1 WHERE partition IS NULL;
ALTER TABLE accounts ALTER COLUMN partition SET NOT NULL;

ALTER TABLE lots ADD COLUMN partition integer;
UPDATE lots t SET partition = a.partition FROM accounts a WHERE a.account_id = t.account_id;
ALTER TABLE lots ALTER COLUMN partition SET NOT NULL;

-- The one rewrite the append-only ledger gets: a new column filled in, no amount touched.
ALTER TABLE ledger_entries ADD COLUMN partition integer;
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_append_only;
UPDATE ledger_entries t SET partition = a.partition
FROM accounts a WHERE a.account_id = t.account_id;
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_append_only;
ALTER TABLE ledger_entries ALTER COLUMN partition SET NOT NULL;

ALTER TABLE postpay_usage ADD COLUMN partition integer;
UPDATE postpay_usage t SET partition = a.partition
FROM accounts a WHERE a.account_id = t.account_id;
ALTER TABLE postpay_usage ALTER COLUMN partition SET NOT NULL;

ALTER TABLE invoices ADD COLUMN partition integer;
UPDATE invoices t SET partition = a.partition FROM accounts a WHERE a.account_id = t.account_id;
ALTER TABLE invoices ALTER COLUMN partition SET NOT NULL;

ALTER TABLE usage_daily ADD COLUMN partition integer;
UPDATE usage_daily t SET partition = a.partition
FROM accounts a WHERE a.account_id = t.account_id;
ALTER TABLE usage_daily ALTER COLUMN partition SET NOT NULL;

-- Foreign keys, one by one (ADR 0002, section 3). Those of the rows written per charge go:
-- foreign-key checks were about a quarter of the database's CPU per event, nearly all of them
-- on these three tables; and what they guarded (no row for an account that does not exist,
-- or of another partition) holds by construction: a unit of work writes rows only for the
-- accounts it has locked, with the partition it read from them (worker/adapters/postgres.py;
-- tests/integration/test_partition_key.py and worker/adapters/strays.py check it).
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_account_id_fkey;
ALTER TABLE postpay_usage DROP CONSTRAINT postpay_usage_account_id_fkey;
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_account_id_fkey;
-- Those of rows written per grant and per invoice stay, on (account_id, partition): rare
-- writes, and a key with the distribution column is one Citus keeps within a shard.
ALTER TABLE lots DROP CONSTRAINT lots_account_id_fkey;
ALTER TABLE invoices DROP CONSTRAINT invoices_account_id_fkey;

ALTER TABLE accounts DROP CONSTRAINT accounts_pkey, ADD PRIMARY KEY (account_id, partition);
ALTER TABLE lots DROP CONSTRAINT lots_pkey, ADD PRIMARY KEY (lot_id, partition),
    ADD FOREIGN KEY (account_id, partition) REFERENCES accounts (account_id, partition);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey,
    ADD PRIMARY KEY (entry_id, partition);
ALTER TABLE postpay_usage DROP CONSTRAINT postpay_usage_pkey,
    ADD PRIMARY KEY (event_id, partition);
ALTER TABLE invoices DROP CONSTRAINT invoices_pkey, ADD PRIMARY KEY (invoice_id, partition),
    DROP CONSTRAINT invoices_account_id_period_key, ADD UNIQUE (account_id, period, partition),
    ADD FOREIGN KEY (account_id, partition) REFERENCES accounts (account_id, partition);
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey,
    ADD PRIMARY KEY (account_id, day, partition);
-- A redelivery has the same key, hence the same partition: de-duplication stays whole.
ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey,
    ADD PRIMARY KEY (source, event_id, partition);
