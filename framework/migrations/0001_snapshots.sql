-- Aggregate snapshots: a cache of aggregate state. Deleting all rows of an aggregate
-- type (or the whole table's rows) loses nothing; it only makes the next restore
-- read more events.
--
-- Besides one row per aggregate instance, each events partition has one watermark
-- row (empty aggregate_id): every event of that partition at or before
-- `events_offset` is covered by a snapshot row, so a restore may start reading the
-- partition just after it. The watermark lives in this table so that deleting the
-- snapshots deletes it too.
CREATE TABLE tributary_snapshots (
    aggregate_type   text        NOT NULL,
    events_partition integer     NOT NULL,
    -- '' for the partition's watermark row.
    aggregate_id     text        NOT NULL,
    -- Aggregate version (sequence of the last event covered); 0 for a watermark.
    version          bigint      NOT NULL CHECK (version >= 0),
    -- Upper bound of the offsets of the events covered (events partition).
    events_offset    bigint      NOT NULL,
    state            jsonb       NOT NULL,
    state_version    integer     NOT NULL,
    taken_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, events_partition, aggregate_id)
);
