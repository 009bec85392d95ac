-- The billing ledger. Three tables are the ledger itself and are append-only (the database refuses
-- UPDATE, DELETE and TRUNCATE on them): usage sessions as they opened, their ends, and postings
-- (double-entry transfers, integer micro-USD). The others are derived from those and from the
-- event stream, kept beside them in the same transactions so the ledger role need not recompute
-- them: what each billed resource uses (ledger_tracked), how far each session is posted
-- (ledger_progress), account balances and hourly rollups for the billing summaries.

CREATE TABLE ledger_sessions (
    id                 text PRIMARY KEY,
    user_id            text NOT NULL,
    resource_type      text NOT NULL,
    resource_id        text NOT NULL,
    product            text NOT NULL,
    meter              text NOT NULL,
    slot               text NOT NULL,
    tier               text NOT NULL,
    gpu_type_id        text,
    quantity           integer NOT NULL CHECK (quantity > 0),
    unit_price_micros  bigint NOT NULL CHECK (unit_price_micros >= 0),
    per_seconds        integer NOT NULL CHECK (per_seconds > 0),
    rate_card_version  text NOT NULL,
    started_at         timestamptz NOT NULL,
    opened_by_sequence bigint NOT NULL
);
CREATE INDEX ledger_sessions_resource ON ledger_sessions (resource_id, slot, started_at);
CREATE INDEX ledger_sessions_user ON ledger_sessions (user_id, started_at);

CREATE TABLE ledger_session_ends (
    session_id         text PRIMARY KEY REFERENCES ledger_sessions (id),
    ended_at           timestamptz NOT NULL,
    billed_seconds     bigint NOT NULL CHECK (billed_seconds >= 0),
    closed_by_sequence bigint NOT NULL
);

CREATE TABLE ledger_postings (
    id                text PRIMARY KEY,
    at                timestamptz NOT NULL,
    user_id           text NOT NULL,
    debit             text NOT NULL,
    credit            text NOT NULL CHECK (credit <> debit),
    amount_micros     bigint NOT NULL CHECK (amount_micros > 0),
    kind              text NOT NULL CHECK (kind IN ('usage', 'reversal', 'credit')),
    product           text,
    meter             text,
    resource_id       text,
    gpu_type_id       text,
    quantity          integer NOT NULL DEFAULT 0,
    unit_price_micros bigint NOT NULL DEFAULT 0,
    seconds           bigint NOT NULL DEFAULT 0,
    session_id        text REFERENCES ledger_sessions (id),
    rate_card_version text,
    reason            text,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_postings_user_at ON ledger_postings (user_id, at, id);
CREATE INDEX ledger_postings_at ON ledger_postings (at, id);
CREATE INDEX ledger_postings_session ON ledger_postings (session_id);
CREATE INDEX ledger_postings_resource ON ledger_postings (resource_id) WHERE resource_id IS NOT NULL;

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is refused; correct with a reversing posting',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER ledger_sessions_append_only BEFORE UPDATE OR DELETE ON ledger_sessions
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_sessions_no_truncate BEFORE TRUNCATE ON ledger_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_session_ends_append_only BEFORE UPDATE OR DELETE ON ledger_session_ends
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_session_ends_no_truncate BEFORE TRUNCATE ON ledger_session_ends
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Derived state (rebuildable from the stream and the tables above).
CREATE TABLE ledger_tracked (
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    user_id       text NOT NULL,
    host_id       text,
    doc           jsonb NOT NULL,
    PRIMARY KEY (resource_type, resource_id)
);
CREATE INDEX ledger_tracked_host ON ledger_tracked (host_id) WHERE resource_type = 'instance';

CREATE TABLE ledger_progress (
    session_id     text PRIMARY KEY REFERENCES ledger_sessions (id),
    user_id        text NOT NULL,
    resource_id    text NOT NULL,
    settled        boolean NOT NULL,
    -- micro-USD per hour while open, for spend rates: unit price x quantity x 3600 / per_seconds
    rate_per_hour_micros bigint NOT NULL,
    doc            jsonb NOT NULL
);
CREATE INDEX ledger_progress_open ON ledger_progress (user_id) WHERE NOT settled;
CREATE INDEX ledger_progress_resource ON ledger_progress (resource_id);

CREATE TABLE ledger_balances (
    account        text PRIMARY KEY,
    balance_micros bigint NOT NULL
);

-- Per user, product, resource and hour: what the billing summaries add up.
CREATE TABLE ledger_hourly (
    user_id       text NOT NULL,
    product       text NOT NULL,
    meter         text NOT NULL,
    resource_id   text NOT NULL,
    gpu_type_id   text NOT NULL DEFAULT '',
    hour          timestamptz NOT NULL,
    amount_micros bigint NOT NULL,
    seconds       bigint NOT NULL,
    -- GB x seconds for storage meters (for diskSpaceBilledGb)
    gb_seconds    bigint NOT NULL,
    PRIMARY KEY (user_id, product, meter, resource_id, gpu_type_id, hour)
);
CREATE INDEX ledger_hourly_user_hour ON ledger_hourly (user_id, hour);
