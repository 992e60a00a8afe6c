-- Notifications (alerts/notify): configuration (channels, contact groups, routes), the
-- outbox cursor, per-alert escalation progress, grouping batches, the delivery ledger
-- and its attempt log, and channel health. See docs/notifications.md.

-- Loaded by `healthmon notify load FILE`; `version` changes on every load so a running
-- notifier reloads.
CREATE TABLE IF NOT EXISTS notify_settings (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS notify_channels (
    channel_id text PRIMARY KEY,
    type       text NOT NULL CHECK (type IN ('webhook', 'dingtalk', 'wecom', 'email', 'mqtt')),
    config     jsonb NOT NULL DEFAULT '{}'::jsonb,
    fallback   text,                       -- channel tried when this one finally fails
    enabled    boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS notify_contact_groups (
    group_id   text PRIMARY KEY,
    name       text NOT NULL DEFAULT '',
    tier       text NOT NULL DEFAULT '',   -- duty | head | district | ... (the escalation ladder)
    match      jsonb NOT NULL DEFAULT '{}'::jsonb,   -- which alerts this group covers
    channels   text[] NOT NULL DEFAULT '{}',
    members    jsonb NOT NULL DEFAULT '[]'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS notify_routes (
    route_id          text PRIMARY KEY,
    position          integer NOT NULL,
    match             jsonb NOT NULL DEFAULT '{}'::jsonb,
    ladder            jsonb NOT NULL,      -- [{"after_s": 0, "tier": "duty", "groups": []}, ...]
    reminder_every_s  double precision,
    max_reminders     integer,
    group_wait_s      double precision NOT NULL DEFAULT 30,
    continue_matching boolean NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The outbox cursor over alert_events.id. Ids above the cursor that were already handled
-- (an older id was still missing: an uncommitted transaction) are kept in processed_above.
CREATE TABLE IF NOT EXISTS notify_cursor (
    name            text PRIMARY KEY,
    last_event_id   bigint NOT NULL DEFAULT 0,
    processed_above bigint[] NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Escalation progress per alert and route. level -1: not notified yet.
CREATE TABLE IF NOT EXISTS notify_alert_state (
    alert_id          uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    route_id          text NOT NULL,
    level             integer NOT NULL DEFAULT -1,
    first_notified_at timestamptz,
    last_notified_at  timestamptz,
    reminders         integer NOT NULL DEFAULT 0,
    silenced_by       uuid,
    done              boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, route_id)
);
CREATE INDEX IF NOT EXISTS notify_alert_state_open ON notify_alert_state (alert_id) WHERE NOT done;

-- Grouping: alerts of one site and hazard arriving within group_wait_s share one batch.
CREATE TABLE IF NOT EXISTS notify_batches (
    id         bigserial PRIMARY KEY,
    group_key  text NOT NULL,
    route_id   text,
    level      integer NOT NULL DEFAULT 0,
    purpose    text NOT NULL,
    alert_ids  uuid[] NOT NULL,
    due_at     timestamptz NOT NULL,
    flushed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS notify_batches_open ON notify_batches (group_key)
    WHERE flushed_at IS NULL;
CREATE INDEX IF NOT EXISTS notify_batches_due ON notify_batches (due_at) WHERE flushed_at IS NULL;

-- The delivery ledger: one row per message to one contact group over one channel.
-- queued -> sent -> accepted | failed (sent -> queued again while retries remain);
-- silenced: muted by silence_id, nothing sent.
CREATE TABLE IF NOT EXISTS notifications (
    id              bigserial PRIMARY KEY,
    batch_id        bigint REFERENCES notify_batches (id) ON DELETE SET NULL,
    alert_ids       uuid[] NOT NULL,
    route_id        text,
    level           integer NOT NULL DEFAULT 0,
    purpose         text NOT NULL,
    channel_id      text,
    group_id        text,
    state           text NOT NULL
        CHECK (state IN ('queued', 'sent', 'accepted', 'failed', 'silenced')),
    silence_id      uuid,
    message         jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 1,
    next_attempt_at timestamptz,
    last_error      text,
    fallback_of     bigint REFERENCES notifications (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (next_attempt_at)
    WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS notifications_alerts ON notifications USING gin (alert_ids);
CREATE INDEX IF NOT EXISTS notifications_batch ON notifications (batch_id);

-- The delivery log: every attempt, its outcome and the receiver's answer.
CREATE TABLE IF NOT EXISTS notification_attempts (
    id              bigserial PRIMARY KEY,
    notification_id bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    at              timestamptz NOT NULL,
    ok              boolean NOT NULL,
    status_code     integer,
    error           text NOT NULL DEFAULT '',
    duration_ms     double precision NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS notification_attempts_n ON notification_attempts (notification_id, attempt);

CREATE TABLE IF NOT EXISTS notify_channel_health (
    channel_id           text PRIMARY KEY,
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_error           text NOT NULL DEFAULT '',
    last_failure_at      timestamptz,
    last_success_at      timestamptz
);
