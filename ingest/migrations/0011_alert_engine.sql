-- The alert engine (alerts/engine.py): when a time-driven rule state next needs looking
-- at (no data, waste storage time, ...), so `tick` finds due states by index instead of
-- scanning every state.
ALTER TABLE rule_state ADD COLUMN IF NOT EXISTS due_at timestamptz;
CREATE INDEX IF NOT EXISTS rule_state_due ON rule_state (due_at) WHERE due_at IS NOT NULL;

-- Site alerts and the per-device offline alerts held back under them.
CREATE INDEX IF NOT EXISTS alerts_suppressed_by ON alerts (suppressed_by)
    WHERE suppressed_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS alerts_open_site ON alerts (site_id, rule_id)
    WHERE state <> 'resolved';
