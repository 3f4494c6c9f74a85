-- Business events per user, written by the application.
CREATE TABLE IF NOT EXISTS user_activity_log (
  id            bigserial PRIMARY KEY,
  user_id       uuid        NOT NULL,
  activity_type text        NOT NULL,  -- 'login', 'itinerary_created', 'search_performed'
  metadata      jsonb       NOT NULL DEFAULT '{}',
  "timestamp"   timestamptz NOT NULL DEFAULT now(),
  session_id    text
);
CREATE INDEX IF NOT EXISTS user_activity_log_time_idx ON user_activity_log ("timestamp");
