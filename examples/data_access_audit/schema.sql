-- An audit trail of data access, written by triggers or the API.
CREATE TABLE IF NOT EXISTS data_access_audit (
  id               bigserial PRIMARY KEY,
  user_id          uuid        NOT NULL,  -- who read
  accessed_user_id uuid,                  -- whose data was read
  resource_type    text        NOT NULL,  -- 'animals', 'journal_entries', ...
  access_type      text        NOT NULL,  -- 'own_data', 'cross_user_access', ...
  "timestamp"      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS data_access_audit_time_idx ON data_access_audit ("timestamp");
