CREATE TABLE hosts (LIKE users INCLUDING ALL);

CREATE TABLE instances (LIKE users INCLUDING ALL);
CREATE INDEX instances_owner ON instances (owner_id, created_at, id);
