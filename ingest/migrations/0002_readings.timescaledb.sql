-- TimescaleDB: a hypertable compressed by device, a retention policy and continuous
-- aggregates for downsampled history. {retention_days} and {compress_after_days} are
-- filled in from the settings by the migration runner (integers only).
CREATE TABLE IF NOT EXISTS readings (
    ts           timestamptz NOT NULL,
    device_id    text NOT NULL,
    metric       text NOT NULL,
    value        double precision,
    seq          bigint,
    received_at  timestamptz NOT NULL,
    ts_estimated boolean NOT NULL DEFAULT false,
    UNIQUE (device_id, metric, ts)
);
SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'), if_not_exists => true);
ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'metric, ts DESC'
);
SELECT add_compression_policy('readings', INTERVAL '{compress_after_days} days', if_not_exists => true);
SELECT add_retention_policy('readings', INTERVAL '{retention_days} days', if_not_exists => true);

CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket, device_id, metric,
       avg(value) AS avg, min(value) AS min, max(value) AS max,
       last(value, ts) AS last, count(value) AS count, count(*) AS samples
FROM readings GROUP BY 1, 2, 3
WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1h',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes', if_not_exists => true);

CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', ts) AS bucket, device_id, metric,
       avg(value) AS avg, min(value) AS min, max(value) AS max,
       last(value, ts) AS last, count(value) AS count, count(*) AS samples
FROM readings GROUP BY 1, 2, 3
WITH NO DATA;
SELECT add_continuous_aggregate_policy('readings_1d',
    start_offset => INTERVAL '90 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '6 hours', if_not_exists => true);
