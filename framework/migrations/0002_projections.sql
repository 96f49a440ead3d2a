-- Projection checkpoints: the next offset to apply per projection, topic and
-- partition. Written in the same transaction as the read-model changes, and only
-- if the row still holds the offset the worker started from (a worker that lost
-- its partition cannot advance it). Kafka's committed offsets are only advisory.
CREATE TABLE tributary_checkpoints (
    projection  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

-- Records a projection could not apply: undecodable, unknown event type, or the
-- handler failed on every attempt. The record is kept whole (key, value, headers)
-- so it can be replayed through the projection once the cause is fixed.
CREATE TABLE tributary_dead_letters (
    id            bigserial   PRIMARY KEY,
    projection    text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    record_offset bigint      NOT NULL,
    record_key    bytea,
    payload       bytea,
    header_names  text[]      NOT NULL,
    header_values bytea[]     NOT NULL,
    -- 'undecodable', 'unknown_type' or 'handler_failed'.
    reason        text        NOT NULL,
    error         text        NOT NULL,
    attempts      integer     NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT now(),
    -- Set when a replay applied the record; the row stays as an audit trail.
    replayed_at   timestamptz,
    replay_error  text,
    UNIQUE (projection, topic, partition, record_offset)
);

CREATE INDEX tributary_dead_letters_open
    ON tributary_dead_letters (projection, id) WHERE replayed_at IS NULL;
