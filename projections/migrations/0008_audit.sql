-- The audit log: one row per event of the stream, in the audit role's transaction with its
-- checkpoint (exactly once). Who did what to which resource, when and from where; never the
-- event's payload, so no secret or customer value can reach it. The database refuses UPDATE,
-- DELETE and TRUNCATE on it, as on the ledger.

CREATE TABLE audit_log (
    sequence       bigint PRIMARY KEY,
    event_id       text NOT NULL UNIQUE,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    logged_at      timestamptz NOT NULL DEFAULT now(),
    actor          text NOT NULL,
    action         text NOT NULL,
    event_version  integer NOT NULL,
    resource_type  text NOT NULL,
    resource_id    text NOT NULL,
    -- The user whose resource it is (NULL: the operator's, e.g. hosts, public templates).
    owner_id       text,
    correlation_id text NOT NULL,
    causation_id   text,
    source_address text
);
-- A customer's trail, newest first: what concerns their resources, and what they did.
CREATE INDEX audit_log_owner ON audit_log (owner_id, occurred_at DESC, sequence DESC)
    WHERE owner_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor, occurred_at DESC, sequence DESC);
CREATE INDEX audit_log_resource ON audit_log (resource_type, resource_id, occurred_at DESC);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Who owns each aggregate, fixed by its first event: a customer's when a customer made it (an
-- endpoint's worker names its owner), NULL when the system did. Events the system records later
-- about the resource (an agent's reports, placement) belong to that owner's trail.
CREATE TABLE audit_owners (
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    owner_id      text,
    PRIMARY KEY (resource_type, resource_id)
);

CREATE TRIGGER audit_owners_append_only BEFORE UPDATE OR DELETE ON audit_owners
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_owners_no_truncate BEFORE TRUNCATE ON audit_owners
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
