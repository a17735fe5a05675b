-- Accounts, credit lots, the append-only ledger, processed events and the outbox.

CREATE TABLE accounts (
    account_id              text PRIMARY KEY,
    plan                    text NOT NULL DEFAULT 'prepay' CHECK (plan IN ('prepay', 'postpay')),
    opened                  boolean NOT NULL DEFAULT false,
    overdraft_jpy           bigint NOT NULL DEFAULT 0 CHECK (overdraft_jpy >= 0),
    postpay_due_jpy         bigint NOT NULL DEFAULT 0 CHECK (postpay_due_jpy >= 0),
    postpay_since           timestamptz,
    contract_id             text,
    reminder_enabled        boolean NOT NULL DEFAULT false,
    reminder_threshold_jpy  bigint CHECK (reminder_threshold_jpy >= 0),
    reminder_email          text,
    balance_jpy             bigint NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE lots (
    lot_id             text PRIMARY KEY,
    account_id         text NOT NULL REFERENCES accounts (account_id),
    source             text NOT NULL CHECK (source IN ('test_credits', 'purchase')),
    amount_jpy         bigint NOT NULL CHECK (amount_jpy > 0),
    remaining_jpy      bigint NOT NULL CHECK (remaining_jpy >= 0),
    forfeited_jpy      bigint NOT NULL DEFAULT 0 CHECK (forfeited_jpy >= 0),
    granted_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    forfeited          boolean NOT NULL DEFAULT false,
    expiring_notified  boolean NOT NULL DEFAULT false,
    CHECK (remaining_jpy + forfeited_jpy <= amount_jpy)
);
CREATE INDEX lots_by_account ON lots (account_id);
CREATE INDEX lots_open_by_expiry ON lots (expires_at) WHERE NOT forfeited;

CREATE TABLE ledger_entries (
    entry_id           text PRIMARY KEY,
    account_id         text NOT NULL REFERENCES accounts (account_id),
    kind               text NOT NULL CHECK (kind IN ('grant', 'charge', 'forfeit', 'payment')),
    amount_jpy         bigint NOT NULL,
    balance_after_jpy  bigint NOT NULL,
    occurred_at        timestamptz NOT NULL,
    ref                text NOT NULL,
    allocations        jsonb NOT NULL DEFAULT '[]',
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_by_account ON ledger_entries (account_id, recorded_at);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

CREATE TABLE processed_events (
    source       text NOT NULL CHECK (source IN ('usage', 'account')),
    event_id     text NOT NULL,
    fingerprint  bytea NOT NULL,
    account_id   text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    message_id  text NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         text,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Postpay usage waits here for its invoice; invoice_id is set when a month is closed.
CREATE TABLE postpay_usage (
    event_id        text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (account_id),
    period          text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    country         text NOT NULL,
    unit_price_jpy  bigint NOT NULL,
    segments        integer NOT NULL,
    amount_jpy      bigint NOT NULL,
    from_lots_jpy   bigint NOT NULL,
    invoice_id      text
);
CREATE INDEX postpay_uninvoiced ON postpay_usage (account_id) WHERE invoice_id IS NULL;

CREATE TABLE invoices (
    invoice_id  text PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (account_id),
    period      text NOT NULL,
    total_jpy   bigint NOT NULL CHECK (total_jpy >= 0),
    paid_jpy    bigint NOT NULL DEFAULT 0 CHECK (paid_jpy >= 0 AND paid_jpy <= total_jpy),
    issued_at   timestamptz NOT NULL,
    due_date    date NOT NULL,
    UNIQUE (account_id, period)
);

CREATE TABLE month_closes (
    period     text PRIMARY KEY,
    closed_at  timestamptz NOT NULL DEFAULT now(),
    invoices   integer NOT NULL
);
