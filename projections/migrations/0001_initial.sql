-- Read models are folds of each aggregate's evolve(): one row per aggregate, its state as jsonb,
-- plus the few columns the api filters and sorts by.
CREATE TABLE projection_checkpoints (
    name          text PRIMARY KEY,
    last_sequence bigint NOT NULL DEFAULT 0
);

CREATE TABLE users (
    id            text PRIMARY KEY,
    owner_id      text,
    created_at    timestamptz NOT NULL,
    deleted       boolean NOT NULL,
    last_sequence bigint NOT NULL,
    doc           jsonb NOT NULL
);

CREATE TABLE templates (LIKE users INCLUDING ALL);
CREATE INDEX templates_owner ON templates (owner_id, created_at, id);

CREATE TABLE registry_auths (LIKE users INCLUDING ALL);
CREATE INDEX registry_auths_owner ON registry_auths (owner_id, created_at, id);

CREATE TABLE blog_posts (LIKE users INCLUDING ALL);

-- Not a read model: the api's memory of POST responses for Idempotency-Key (24 h).
CREATE TABLE idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    status_code  integer,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
