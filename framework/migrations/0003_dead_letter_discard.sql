-- Discarding a dead letter: an operator marks a parked record handled without
-- applying it (`tributary dead-letters discard ID --reason TEXT`). The row stays as
-- an audit trail, like a replayed one. A dead letter is open while it is neither
-- replayed nor discarded.
ALTER TABLE tributary_dead_letters
    ADD COLUMN discarded_at   timestamptz,
    ADD COLUMN discard_reason text;

DROP INDEX tributary_dead_letters_open;
CREATE INDEX tributary_dead_letters_open
    ON tributary_dead_letters (projection, id)
    WHERE replayed_at IS NULL AND discarded_at IS NULL;
