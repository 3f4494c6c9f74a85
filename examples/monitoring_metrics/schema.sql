-- The application records each database operation it performs.
CREATE TABLE IF NOT EXISTS monitoring_metrics (
  id             bigserial PRIMARY KEY,
  metric_type    text        NOT NULL,  -- 'database_operation'
  operation_name text        NOT NULL,  -- 'select_itineraries'
  duration_ms    integer     NOT NULL,
  success        boolean     NOT NULL,
  "timestamp"    timestamptz NOT NULL DEFAULT now(),
  environment    text
);
CREATE INDEX IF NOT EXISTS monitoring_metrics_timestamp_idx ON monitoring_metrics ("timestamp");
