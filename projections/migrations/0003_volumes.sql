CREATE TABLE volumes (LIKE users INCLUDING ALL);
CREATE INDEX volumes_owner ON volumes (owner_id, created_at, id);
