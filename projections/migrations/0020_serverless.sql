-- Serverless: endpoints and jobs (read models, shaped like every other), and the tables the api
-- keeps for jobs beside them. Numbered above 0015 and apart from other branches' numbers.
CREATE TABLE endpoints (LIKE users INCLUDING ALL EXCLUDING INDEXES, PRIMARY KEY (id));
CREATE INDEX endpoints_owner ON endpoints (owner_id, created_at, id);

-- A job's row: its state as jsonb, and the fields queues, counts and retention are read by,
-- computed by PostgreSQL from the state (the projection writes only the usual columns).
CREATE TABLE jobs (LIKE users INCLUDING ALL EXCLUDING INDEXES, PRIMARY KEY (id));
ALTER TABLE jobs
    ADD COLUMN endpoint_id text GENERATED ALWAYS AS (doc->>'endpoint_id') STORED,
    ADD COLUMN status text GENERATED ALWAYS AS (doc->>'status') STORED,
    ADD COLUMN worker_id text GENERATED ALWAYS AS (doc->>'worker_id') STORED,
    ADD COLUMN expires_ms bigint GENERATED ALWAYS AS ((doc->>'expires_ms')::bigint) STORED;
CREATE INDEX jobs_endpoint_status ON jobs (endpoint_id, status);
CREATE INDEX jobs_expiry ON jobs (expires_ms) WHERE expires_ms IS NOT NULL;

-- Not read models (the api writes them): job inputs and results, by job and SHA-256 (the events
-- carry only the hash and size), deleted once the job's retention ends.
CREATE TABLE job_payloads (
    job_id     text NOT NULL,
    sha256     text NOT NULL,
    body       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, sha256)
);
CREATE INDEX job_payloads_age ON job_payloads (created_at);

-- A streaming handler's partial outputs, each handed to the client once by /stream.
CREATE TABLE job_stream (
    job_id     text NOT NULL,
    position   bigserial,
    body       bytea NOT NULL,
    delivered  boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, position)
);

-- The webhook outbox: written by the jobs projection with the event that made a job final
-- (exactly once), sent and retried by the api's webhook sender.
CREATE TABLE webhook_deliveries (
    job_id          text NOT NULL,
    sequence        bigint NOT NULL,
    url             text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, sequence)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- When each worker last pinged, and what it said it runs: the workers counted on an endpoint and
-- in /health (the dispatcher keeps its own view, from the same pings, for requeues).
CREATE TABLE worker_liveness (
    endpoint_id text NOT NULL,
    worker_id   text NOT NULL,
    last_seen   timestamptz NOT NULL,
    version     integer,
    running     text[] NOT NULL DEFAULT '{}',
    unhealthy   text,
    PRIMARY KEY (endpoint_id, worker_id)
);
