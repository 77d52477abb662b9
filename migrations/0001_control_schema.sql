-- pgaas control database schema (PostgreSQL 15+).
--
-- Table and column names follow the original product's `postgres_control` database so that its
-- rows can be imported; constraints are named so the API can map violations to 409/422 by name.
-- Tenant passwords are never stored here in plaintext; API keys only as SHA-256.

CREATE TYPE database_status AS ENUM ('provisioning', 'active', 'suspended', 'deleting', 'failed');
COMMENT ON TYPE database_status IS
    'Tenant lifecycle: provisioning -> active -> deleting; failed = the reconciler could not finish; suspended = switched off by an operator.';

-- Keeps updated_at honest whatever statement touches a row.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------------------------
CREATE TABLE databases (
    id              uuid            PRIMARY KEY DEFAULT gen_random_uuid(),
    database_name   text            NOT NULL,
    username        text            NOT NULL,
    password_hash   text,
    owner_email     text            NOT NULL,
    friendly_name   text            NOT NULL,
    max_connections integer         NOT NULL DEFAULT 20,
    status          database_status NOT NULL DEFAULT 'provisioning',
    created_at      timestamptz     NOT NULL DEFAULT now(),
    updated_at      timestamptz     NOT NULL DEFAULT now(),
    CONSTRAINT databases_database_name_key UNIQUE (database_name),
    CONSTRAINT databases_username_key UNIQUE (username),
    -- 8..32 hex digits: we generate 16; the original generated fewer, and its rows must still load.
    CONSTRAINT databases_database_name_check CHECK (database_name ~ '^tenant_[0-9a-f]{8,32}$'),
    CONSTRAINT databases_username_check CHECK (username ~ '^user_[0-9a-f]{8,32}$'),
    CONSTRAINT databases_max_connections_check CHECK (max_connections > 0)
);

COMMENT ON TABLE databases IS 'One row per tenant database and its login role.';
COMMENT ON COLUMN databases.id IS 'Tenant id, used in API paths.';
COMMENT ON COLUMN databases.database_name IS 'PostgreSQL database name, tenant_<hex>; generated, never client-chosen.';
COMMENT ON COLUMN databases.username IS 'PostgreSQL login role, user_<hex>, same random suffix as database_name.';
COMMENT ON COLUMN databases.password_hash IS 'bcrypt hash of the tenant password; NULL until provisioning has set the role''s password.';
COMMENT ON COLUMN databases.owner_email IS 'Contact address of the tenant owner, domain lowercased.';
COMMENT ON COLUMN databases.friendly_name IS 'Human label chosen by the client (1..100 characters).';
COMMENT ON COLUMN databases.max_connections IS 'Applied as the database''s CONNECTION LIMIT.';
COMMENT ON COLUMN databases.status IS 'Lifecycle state; rows not in active are work in progress for the reconciler or switched off.';
COMMENT ON COLUMN databases.created_at IS 'When the row was inserted (provisioning started).';
COMMENT ON COLUMN databases.updated_at IS 'Last change to the row; maintained by trigger databases_set_updated_at.';

CREATE TRIGGER databases_set_updated_at
    BEFORE UPDATE ON databases
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Keyset paging, newest first: WHERE (created_at, id) < ($1, $2) ORDER BY created_at DESC, id DESC.
CREATE INDEX databases_created_at_id_idx ON databases (created_at DESC, id DESC);
CREATE INDEX databases_owner_email_idx ON databases (owner_email);
CREATE INDEX databases_status_idx ON databases (status);

-- ---------------------------------------------------------------------------------------------
CREATE TABLE ip_whitelist (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    database_id uuid        NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    ip_address  cidr        NOT NULL,
    description text,
    added_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ip_whitelist_database_id_ip_address_key UNIQUE (database_id, ip_address),
    -- A /0 entry would be an allow-list that allows everything; refuse it at the source.
    CONSTRAINT ip_whitelist_ip_address_check CHECK (masklen(ip_address) > 0)
);

COMMENT ON TABLE ip_whitelist IS 'Client networks allowed to reach a tenant database; compiled into pg_hba.conf.';
COMMENT ON COLUMN ip_whitelist.id IS 'Entry id, used in API paths.';
COMMENT ON COLUMN ip_whitelist.database_id IS 'The tenant this entry belongs to; entries go with it.';
COMMENT ON COLUMN ip_whitelist.ip_address IS 'IPv4 or IPv6 network; cidr refuses host bits, so the value is normalised.';
COMMENT ON COLUMN ip_whitelist.description IS 'Free-text note from the client.';
COMMENT ON COLUMN ip_whitelist.added_at IS 'When the entry was added.';
-- The unique constraint's index (database_id, ip_address) also serves lookups by database_id.

-- ---------------------------------------------------------------------------------------------
CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL,
    key_prefix   text        NOT NULL,
    key_hash     bytea       NOT NULL,
    permissions  jsonb       NOT NULL DEFAULT '["read"]',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_key_prefix_key UNIQUE (key_prefix),
    CONSTRAINT api_keys_key_prefix_check CHECK (key_prefix ~ '^[0-9a-f]{8}$'),
    CONSTRAINT api_keys_key_hash_check CHECK (octet_length(key_hash) = 32),
    CONSTRAINT api_keys_permissions_check CHECK (
        jsonb_typeof(permissions) = 'array'
        AND permissions <@ '["read", "write", "admin"]'::jsonb
    )
);

COMMENT ON TABLE api_keys IS 'API keys; the plaintext is shown once at creation and never stored.';
COMMENT ON COLUMN api_keys.id IS 'Key id, recorded in audit_logs.';
COMMENT ON COLUMN api_keys.name IS 'Operator''s label for the key.';
COMMENT ON COLUMN api_keys.key_prefix IS 'The public 8-hex-digit part of pgaas_<prefix>_<secret>, for lookup.';
COMMENT ON COLUMN api_keys.key_hash IS 'SHA-256 of the full key string (32 bytes), compared in constant time.';
COMMENT ON COLUMN api_keys.permissions IS 'JSON array of scopes: read, write, admin (admin includes write includes read).';
COMMENT ON COLUMN api_keys.created_at IS 'When the key was issued.';
COMMENT ON COLUMN api_keys.expires_at IS 'After this instant the key is refused; NULL = no expiry.';
COMMENT ON COLUMN api_keys.last_used_at IS 'Last successful authentication with the key.';
COMMENT ON COLUMN api_keys.revoked_at IS 'When the key was revoked; NULL = live. Rows are kept so audit_logs still name them.';

-- ---------------------------------------------------------------------------------------------
CREATE TABLE audit_logs (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    api_key_id    uuid        REFERENCES api_keys (id) ON DELETE SET NULL,
    action        text        NOT NULL,
    resource_type text        NOT NULL,
    resource_id   text,
    ip_address    inet,
    outcome       text        NOT NULL,
    details       jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_logs_outcome_check CHECK (outcome IN ('success', 'failure'))
);

COMMENT ON TABLE audit_logs IS 'One row per mutation (and refused attempt), written in the same transaction as the change.';
COMMENT ON COLUMN audit_logs.id IS 'Monotonic entry number.';
COMMENT ON COLUMN audit_logs.api_key_id IS 'The key that made the request; NULL for the CLI or a deleted key.';
COMMENT ON COLUMN audit_logs.action IS 'What was attempted, e.g. database.create, whitelist.delete.';
COMMENT ON COLUMN audit_logs.resource_type IS 'Kind of resource acted on, e.g. database, whitelist, api_key.';
COMMENT ON COLUMN audit_logs.resource_id IS 'Id of the resource as text, with no foreign key: audit rows outlive what they describe.';
COMMENT ON COLUMN audit_logs.ip_address IS 'Client address of the request; NULL for local CLI use.';
COMMENT ON COLUMN audit_logs.outcome IS 'success or failure.';
COMMENT ON COLUMN audit_logs.details IS 'Structured extra context; never secrets.';
COMMENT ON COLUMN audit_logs.created_at IS 'When the entry was written.';

CREATE INDEX audit_logs_created_at_idx ON audit_logs (created_at DESC);
CREATE INDEX audit_logs_resource_id_idx ON audit_logs (resource_id);
CREATE INDEX audit_logs_action_idx ON audit_logs (action);
-- Without it, deleting an api_keys row scans the whole log to apply ON DELETE SET NULL.
CREATE INDEX audit_logs_api_key_id_idx ON audit_logs (api_key_id);

-- ---------------------------------------------------------------------------------------------
CREATE TABLE database_stats (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    database_id        uuid        NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    size_bytes         bigint      NOT NULL,
    active_connections integer     NOT NULL,
    total_queries      bigint      NOT NULL DEFAULT 0,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT database_stats_size_bytes_check CHECK (size_bytes >= 0),
    CONSTRAINT database_stats_active_connections_check CHECK (active_connections >= 0),
    CONSTRAINT database_stats_total_queries_check CHECK (total_queries >= 0)
);

COMMENT ON TABLE database_stats IS 'Periodic samples of each tenant database''s size and activity.';
COMMENT ON COLUMN database_stats.id IS 'Sample number.';
COMMENT ON COLUMN database_stats.database_id IS 'The tenant sampled; samples go with it.';
COMMENT ON COLUMN database_stats.size_bytes IS 'pg_database_size() at sampling time.';
COMMENT ON COLUMN database_stats.active_connections IS 'Backends connected to the database (pg_stat_activity).';
COMMENT ON COLUMN database_stats.total_queries IS 'xact_commit + xact_rollback from pg_stat_database: transactions since the last stats reset.';
COMMENT ON COLUMN database_stats.recorded_at IS 'When the sample was taken.';

CREATE INDEX database_stats_database_id_recorded_at_idx ON database_stats (database_id, recorded_at DESC);

-- ---------------------------------------------------------------------------------------------
CREATE TABLE hba_state (
    id         boolean     PRIMARY KEY DEFAULT true,
    generation bigint      NOT NULL DEFAULT 0,
    applied_at timestamptz,
    CONSTRAINT hba_state_single_row CHECK (id)
);

COMMENT ON TABLE hba_state IS 'Exactly one row: which generation of the rendered pg_hba.conf is in force.';
COMMENT ON COLUMN hba_state.id IS 'Always true; the primary key plus CHECK allow only one row.';
COMMENT ON COLUMN hba_state.generation IS 'Generation number written into the header of the pg_hba.conf in force; bumped on each apply.';
COMMENT ON COLUMN hba_state.applied_at IS 'When that generation was applied and the reload confirmed; NULL before the first apply.';

INSERT INTO hba_state DEFAULT VALUES;
