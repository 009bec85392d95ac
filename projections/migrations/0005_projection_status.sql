-- What /health tells an operator about each projection: how far behind it is, when its projector
-- last said so, and why it is halted (an event it cannot apply), if it is.
ALTER TABLE projection_checkpoints
    ADD COLUMN pending bigint,
    ADD COLUMN reported_at timestamptz,
    ADD COLUMN halted text;
