-- Plain PostgreSQL: native range partitioning on event time. Partitions are created
-- ahead and dropped for retention by the service (ingest/partitions.py); the default
-- partition only catches what maintenance has not reached yet.
CREATE TABLE IF NOT EXISTS readings (
    ts           timestamptz NOT NULL,
    device_id    text NOT NULL,
    metric       text NOT NULL,
    value        double precision,
    seq          bigint,
    received_at  timestamptz NOT NULL,
    ts_estimated boolean NOT NULL DEFAULT false,
    -- the same reading (device, metric, time) delivered twice is stored once
    UNIQUE (device_id, metric, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE IF NOT EXISTS readings_default PARTITION OF readings DEFAULT;
