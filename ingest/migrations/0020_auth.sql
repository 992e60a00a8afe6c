-- API keys and console users (issue 5). Only hashes are stored: a key is shown once
-- when created (`healthmon keys create`), a password is hashed with argon2id.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id       text PRIMARY KEY,          -- the public part of the key, `hm_<key_id>_<secret>`
    secret_hash  text NOT NULL,             -- hex SHA-256 of the whole key (keys are 256-bit random)
    name         text NOT NULL DEFAULT '',
    role         text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    regions      text[] NOT NULL DEFAULT '{}',   -- empty: every region
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE IF NOT EXISTS users (
    username      text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    password_hash text NOT NULL,            -- argon2id, PHC string
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    regions       text[] NOT NULL DEFAULT '{}',
    disabled      boolean NOT NULL DEFAULT false,
    -- bumped on password change or logout-everywhere: older session cookies stop working
    session_epoch integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The alerts list filtered by region (region-limited keys) needs this.
CREATE INDEX IF NOT EXISTS alerts_region ON alerts (region, started_at);
