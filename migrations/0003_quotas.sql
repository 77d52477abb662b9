-- Storage quotas and their enforcement state, and the size the stats collector last measured.

ALTER TABLE databases ADD COLUMN max_size_mb bigint NOT NULL DEFAULT 0;
ALTER TABLE databases ADD CONSTRAINT databases_max_size_mb_check CHECK (max_size_mb >= 0);
COMMENT ON COLUMN databases.max_size_mb IS
    'Storage quota in MB (maxSizeMb); 0 = none. Tenants made before quotas existed have none.';

ALTER TABLE databases ADD COLUMN quota_state text NOT NULL DEFAULT 'ok';
ALTER TABLE databases ADD CONSTRAINT databases_quota_state_check
    CHECK (quota_state IN ('ok', 'warning', 'read_only', 'blocked'));
COMMENT ON COLUMN databases.quota_state IS
    'ok; warning (past the warning share of the quota); read_only (past the quota: new sessions default to read-only); blocked (past the quota and its grace: the database refuses connections).';

ALTER TABLE databases ADD COLUMN size_bytes bigint;
COMMENT ON COLUMN databases.size_bytes IS
    'pg_database_size() as the stats collector last measured it; NULL before the first measurement.';

-- The collector's size measurements are not changes to the tenant: updated_at moves only when
-- one of these columns is set.
DROP TRIGGER databases_set_updated_at ON databases;
CREATE TRIGGER databases_set_updated_at
    BEFORE UPDATE OF database_name, username, password_hash, owner_email, friendly_name,
                     max_connections, status, max_size_mb, quota_state
    ON databases
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
