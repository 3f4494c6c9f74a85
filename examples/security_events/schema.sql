-- Security events written by the application, including failed logins with the email in details.
CREATE TABLE IF NOT EXISTS security_events (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  event_type  text NOT NULL,  -- 'auth_failure', 'login', ...
  user_id     uuid,
  ip_address  inet,
  user_agent  text,
  details     jsonb,          -- {"email": ..., "failure_reason": ...}
  risk_score  integer CHECK (risk_score >= 0 AND risk_score <= 100),
  "timestamp" timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS security_events_type_time_idx ON security_events (event_type, "timestamp");
CREATE INDEX IF NOT EXISTS security_events_time_idx ON security_events ("timestamp");
