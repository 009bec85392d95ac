-- Templates and instances hold their container spec as one nested `container` object now
-- (events/container.py), so the jsonb docs of their read models change shape. The stream is the
-- truth and its old events are upcast on read: empty both tables and move their checkpoints back to
-- the start, and the projector rebuilds them from sequence 1 when it next starts.
TRUNCATE templates, instances;
UPDATE projection_checkpoints SET last_sequence = 0, pending = NULL, halted = NULL
 WHERE name IN ('templates', 'instances');
