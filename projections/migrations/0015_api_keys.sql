-- API keys: one row per key, its state (name, owner, HMAC of the key, revoked) as jsonb. Numbered
-- apart from the migrations other branches were adding at the time (0008 audit, 0010 ledger).
-- Shaped like every read model; not users' own indexes (its email index means nothing here).
CREATE TABLE api_keys (LIKE users INCLUDING ALL EXCLUDING INDEXES, PRIMARY KEY (id));
CREATE INDEX api_keys_owner ON api_keys (owner_id, created_at, id);
-- Every authenticated request with a key finds it by its hash, among live keys. Not unique: a read
-- model must never refuse an event.
CREATE INDEX api_keys_hash ON api_keys ((doc->>'key_hash')) WHERE NOT deleted;
