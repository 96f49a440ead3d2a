-- Aggregate snapshots: a cache of aggregate state. Deleting rows loses nothing; it
-- only makes the next restore read more events.
CREATE TABLE tributary_snapshots (
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    -- Aggregate version (sequence of the last event covered).
    version         bigint      NOT NULL CHECK (version > 0),
    -- Events partition and the offset of the last event covered.
    events_partition integer    NOT NULL,
    events_offset   bigint      NOT NULL,
    state           jsonb       NOT NULL,
    state_version   integer     NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE INDEX tributary_snapshots_partition
    ON tributary_snapshots (aggregate_type, events_partition);
