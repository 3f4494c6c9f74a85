-- One row per AI generation, written by the application.
CREATE TABLE IF NOT EXISTS ai_monitoring (
  id                     bigserial PRIMARY KEY,
  session_id             text,
  tokens_used            integer     NOT NULL,
  generation_duration_ms integer     NOT NULL,
  success                boolean     NOT NULL,
  "timestamp"            timestamptz NOT NULL DEFAULT now(),
  model_version          text        NOT NULL
);
CREATE INDEX IF NOT EXISTS ai_monitoring_time_idx ON ai_monitoring ("timestamp");
