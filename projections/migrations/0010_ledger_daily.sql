-- Billing summaries by day, week or month read a daily rollup: over a month of minute accruals the
-- hourly one holds 24 times the rows a summary has to add up. Kept with the hourly rollup in the
-- same transactions (ledger/store.py), from the same new postings; `ledger verify` checks both
-- against the postings. (Numbered 0010: 0008 and 0009 are left to the audit log's branch.)
CREATE TABLE ledger_daily (
    user_id       text NOT NULL,
    product       text NOT NULL,
    meter         text NOT NULL,
    resource_id   text NOT NULL,
    gpu_type_id   text NOT NULL DEFAULT '',
    day           timestamptz NOT NULL,
    amount_micros bigint NOT NULL,
    seconds       bigint NOT NULL,
    gb_seconds    bigint NOT NULL,
    PRIMARY KEY (user_id, product, meter, resource_id, gpu_type_id, day)
) WITH (fillfactor = 50);
CREATE INDEX ledger_daily_user_day ON ledger_daily (user_id, day);

INSERT INTO ledger_daily (user_id, product, meter, resource_id, gpu_type_id, day, amount_micros,
                          seconds, gb_seconds)
SELECT user_id, product, meter, resource_id, gpu_type_id, date_trunc('day', hour, 'UTC'),
       sum(amount_micros), sum(seconds), sum(gb_seconds)
FROM ledger_hourly
GROUP BY user_id, product, meter, resource_id, gpu_type_id, date_trunc('day', hour, 'UTC');

-- Summaries group an instance's disks under its GPU type, and a serverless worker under its
-- endpoint: both are read from what the ledger tracks of the customer's resources.
CREATE INDEX ledger_tracked_user ON ledger_tracked (user_id, resource_type);

-- Every accrual cycle updates a row of each of these per open session (a minute's more usage):
-- room on each page keeps those updates HOT (no index entry to add), and their pages small.
ALTER TABLE ledger_hourly SET (fillfactor = 50);
ALTER TABLE ledger_progress SET (fillfactor = 50);
ALTER TABLE ledger_balances SET (fillfactor = 50);

-- A cycle inserts a posting per open session: checking each one's session by foreign key cost a
-- third as much as inserting them. Postings are only ever made from stored sessions, and
-- `ledger verify` reports any posting whose session is missing.
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_session_id_fkey;

-- Per customer, product, GPU type and day: the default summaries (instances and serverless by
-- GPU type) add up a few rows a day here instead of one per resource and meter. An instance's
-- disks count under its GPU type (from what the ledger tracks of the instance).
CREATE TABLE ledger_daily_gpu (
    user_id       text NOT NULL,
    product       text NOT NULL,
    gpu_type_id   text NOT NULL,
    day           timestamptz NOT NULL,
    amount_micros bigint NOT NULL,
    gpu_seconds   bigint NOT NULL,
    gb_seconds    bigint NOT NULL,
    PRIMARY KEY (user_id, product, gpu_type_id, day)
) WITH (fillfactor = 50);

INSERT INTO ledger_daily_gpu (user_id, product, gpu_type_id, day, amount_micros, gpu_seconds,
                              gb_seconds)
SELECT d.user_id, d.product, COALESCE(NULLIF(d.gpu_type_id, ''), t.doc->>'gpu_type_id', ''), d.day,
       sum(d.amount_micros),
       sum(CASE WHEN d.meter IN ('instance.gpu', 'serverless.worker') THEN d.seconds ELSE 0 END),
       sum(d.gb_seconds)
FROM ledger_daily d LEFT JOIN ledger_tracked t ON d.product = 'instances.storage'
    AND t.resource_type = 'instance' AND t.resource_id = d.resource_id
GROUP BY 1, 2, 3, 4;
