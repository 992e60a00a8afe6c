-- Sites, devices, events, rejected messages, and the latest value of each metric.
CREATE TABLE IF NOT EXISTS meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS sites (
    site_id    text PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    kind       text NOT NULL DEFAULT '',   -- hospital, clinic, water_plant, pool, public_place, ...
    region     text NOT NULL,
    address    text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sites_region ON sites (region);

CREATE TABLE IF NOT EXISTS devices (
    device_id           text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    domain              text NOT NULL
        CHECK (domain IN ('coldchain', 'air', 'water', 'pool', 'wastewater', 'waste')),
    site_id             text REFERENCES sites (site_id),
    profile             text NOT NULL DEFAULT '',
    expected_interval_s integer NOT NULL DEFAULT 60 CHECK (expected_interval_s > 0),
    name                text NOT NULL DEFAULT '',
    enabled             boolean NOT NULL DEFAULT true,
    auto_registered     boolean NOT NULL DEFAULT false,
    online              boolean,              -- NULL until the first status message
    status_changed_at   timestamptz,
    last_seen           timestamptz,          -- receive time of the last message of any kind
    mqtt_password_hash  text,                 -- never the clear password
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS devices_site ON devices (site_id);

-- Latest value per device and metric by *event* time, kept by the writer so that
-- "latest" never scans history and a late backlog never overwrites a newer value.
CREATE TABLE IF NOT EXISTS latest_readings (
    device_id   text NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric)
);

CREATE TABLE IF NOT EXISTS events (
    id          bigserial PRIMARY KEY,
    ts          timestamptz NOT NULL,
    device_id   text NOT NULL,
    type        text NOT NULL,
    bag_id      text NOT NULL DEFAULT '',
    attrs       jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL,
    -- the same event delivered twice is stored once
    UNIQUE (device_id, type, ts, bag_id)
);
CREATE INDEX IF NOT EXISTS events_bag ON events (bag_id) WHERE bag_id <> '';
CREATE INDEX IF NOT EXISTS events_device_ts ON events (device_id, ts);

CREATE TABLE IF NOT EXISTS rejected (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    device_id    text,
    reason       text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    metric       text,
    value        double precision,
    ts           timestamptz,
    payload      bytea NOT NULL DEFAULT ''::bytea,   -- bounded: the first N bytes
    payload_size integer NOT NULL DEFAULT 0          -- the whole message's size
);
CREATE INDEX IF NOT EXISTS rejected_received ON rejected (received_at);
CREATE INDEX IF NOT EXISTS rejected_device ON rejected (device_id, received_at);
CREATE INDEX IF NOT EXISTS rejected_reason ON rejected (reason, received_at);
