-- Idempotency-Key end to end: the key fixes the ids of what its request creates and commands
-- (`seed`), and a request holds its key only under a lease that a retry takes over once it lapses
-- (a request that died never leaves its key "in progress").
-- `lease_token` names the attempt holding the lease: only it renews or releases it.
ALTER TABLE idempotency_keys
    ADD COLUMN seed text,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN lease_token text;
