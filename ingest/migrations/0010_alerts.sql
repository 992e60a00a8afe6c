-- Alert rules, per-rule state, alerts (one row per episode) and their timelines, silences.
CREATE TABLE IF NOT EXISTS rules (
    rule_id    text PRIMARY KEY,
    body       jsonb NOT NULL,             -- the pydantic rule model (alerts/rules.py)
    region     text,                       -- NULL: applies everywhere
    enabled    boolean NOT NULL DEFAULT true,
    builtin    boolean NOT NULL DEFAULT false,
    version    integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Evaluation state per rule and subject ("device:<id>", "site:<id>", "bag:<id>").
-- Rows are locked FOR UPDATE while evaluating, so workers sharing a subscription
-- serialise per subject.
CREATE TABLE IF NOT EXISTS rule_state (
    rule_id    text NOT NULL,
    subject    text NOT NULL,
    state      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, subject)
);

CREATE TABLE IF NOT EXISTS alerts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_id         text NOT NULL,
    subject         text NOT NULL,
    device_id       text,
    site_id         text,
    region          text,
    domain          text,
    metric          text,
    kind            text NOT NULL DEFAULT 'value',   -- value | offline | fault | event | site | system
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state           text NOT NULL CHECK (state IN ('firing', 'acknowledged', 'resolved')),
    started_at      timestamptz NOT NULL,   -- event time of the episode's first violation
    detected_at     timestamptz NOT NULL,   -- wall-clock time the service raised it
    retrospective   boolean NOT NULL DEFAULT false,
    acknowledged_at timestamptz,
    acknowledged_by text,
    ack_note        text,
    resolved_at     timestamptz,
    resolved_by     text,
    value           double precision,
    threshold       double precision,
    message         text NOT NULL DEFAULT '',
    standard        text NOT NULL DEFAULT '',       -- the clause the rule encodes
    suppressed_by   uuid,                           -- a site alert holding this one back
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One open episode per rule and subject, whatever the number of workers: the database
-- enforces it.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open_episode
    ON alerts (rule_id, subject) WHERE state <> 'resolved';
CREATE UNIQUE INDEX IF NOT EXISTS alerts_episode_start ON alerts (rule_id, subject, started_at);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, started_at);
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device_id, started_at);

-- The timeline: every state change and notification step. `id` orders the SSE stream
-- and serves as its Last-Event-ID.
CREATE TABLE IF NOT EXISTS alert_events (
    id       bigserial PRIMARY KEY,
    alert_id uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text NOT NULL,   -- fired, escalated, acknowledged, resolved, reminded, notified, ...
    state    text,            -- the alert's state after this step, for state changes
    actor    text,
    note     text,
    data     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events (alert_id, id);

CREATE TABLE IF NOT EXISTS silences (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    matchers   jsonb NOT NULL,   -- {"region":..,"site_id":..,"device_id":..,"domain":..,"rule_id":..}
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL CHECK (ends_at > starts_at),
    owner      text NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS silences_ends ON silences (ends_at);
