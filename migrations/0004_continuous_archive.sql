-- Databases a tenant owns besides its own (a point-in-time restore into a new database, a
-- shadow database for migration tools), restore jobs, and restore drills.

CREATE TABLE tenant_databases (
    name        text        PRIMARY KEY,
    database_id uuid        NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    purpose     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_databases_name_check CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    CONSTRAINT tenant_databases_purpose_check CHECK (purpose IN ('restore', 'replaced', 'shadow'))
);
COMMENT ON TABLE tenant_databases IS
    'Databases a tenant owns besides its own; reachable by its role like its own (same allow-list), dropped with it.';
COMMENT ON COLUMN tenant_databases.name IS 'PostgreSQL database name: the tenant''s own name, _, a suffix.';
COMMENT ON COLUMN tenant_databases.database_id IS 'The tenant that owns it; extra databases go with it.';
COMMENT ON COLUMN tenant_databases.purpose IS 'restore (a point-in-time restore into a new database), replaced (the data a restore in place replaced, kept until the operator drops it) or shadow (for migration tools).';
COMMENT ON COLUMN tenant_databases.created_at IS 'When it was made.';
CREATE INDEX tenant_databases_database_id_idx ON tenant_databases (database_id);

CREATE TABLE restore_jobs (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    database_id  uuid        REFERENCES databases (id) ON DELETE SET NULL,
    database_name text       NOT NULL,
    target_time  timestamptz NOT NULL,
    into_name    text,
    status       text        NOT NULL DEFAULT 'queued',
    step         text,
    error        text,
    kept_as      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    CONSTRAINT restore_jobs_status_check CHECK (status IN ('queued', 'running', 'succeeded', 'failed'))
);
COMMENT ON TABLE restore_jobs IS 'Point-in-time restores of one tenant, as the API reports them.';
COMMENT ON COLUMN restore_jobs.id IS 'Job id, used in API paths.';
COMMENT ON COLUMN restore_jobs.database_id IS 'The tenant restored; NULL once it is deleted (the job row stays).';
COMMENT ON COLUMN restore_jobs.database_name IS 'The tenant database restored.';
COMMENT ON COLUMN restore_jobs.target_time IS 'The instant the data is restored to.';
COMMENT ON COLUMN restore_jobs.into_name IS 'The new database restored into; NULL when restored over the tenant''s own.';
COMMENT ON COLUMN restore_jobs.status IS 'queued, running, succeeded or failed.';
COMMENT ON COLUMN restore_jobs.step IS 'What the job is doing (or did last), for progress.';
COMMENT ON COLUMN restore_jobs.error IS 'Why it failed, in words an operator can act on; never server detail with secrets.';
COMMENT ON COLUMN restore_jobs.kept_as IS 'Restored over the tenant''s own database: the name the replaced data is kept under.';
COMMENT ON COLUMN restore_jobs.created_at IS 'When the job was asked for.';
COMMENT ON COLUMN restore_jobs.finished_at IS 'When it succeeded or failed.';
CREATE INDEX restore_jobs_database_id_idx ON restore_jobs (database_id);
CREATE UNIQUE INDEX restore_jobs_one_at_a_time ON restore_jobs (database_id) WHERE status IN ('queued', 'running');

CREATE TABLE backup_drills (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    succeeded   boolean,
    backup_label text,
    duration_ms bigint,
    detail      text
);
COMMENT ON TABLE backup_drills IS 'Restore drills: the newest backup restored into a scratch cluster and checked.';
COMMENT ON COLUMN backup_drills.id IS 'Drill number.';
COMMENT ON COLUMN backup_drills.started_at IS 'When the drill started.';
COMMENT ON COLUMN backup_drills.finished_at IS 'When it ended; NULL while it runs (or if it was killed).';
COMMENT ON COLUMN backup_drills.succeeded IS 'Whether the backup restored and every tenant database opened.';
COMMENT ON COLUMN backup_drills.backup_label IS 'The pgBackRest backup restored.';
COMMENT ON COLUMN backup_drills.duration_ms IS 'How long the restore and the checks took.';
COMMENT ON COLUMN backup_drills.detail IS 'What was checked, or what failed.';

CREATE TABLE archive_status (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),
    info         jsonb,
    repos        jsonb,
    error        text,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE archive_status IS 'What pgBackRest last reported about the repositories, refreshed by the worker (the API''s own user cannot read them).';
COMMENT ON COLUMN archive_status.id IS 'Always true: one row.';
COMMENT ON COLUMN archive_status.info IS 'The stanza from `pgbackrest info --output=json`.';
COMMENT ON COLUMN archive_status.repos IS 'Per repository: its window and newest backups, as pgaas computed them.';
COMMENT ON COLUMN archive_status.error IS 'Why the last refresh failed, when it did.';
COMMENT ON COLUMN archive_status.refreshed_at IS 'When it was last refreshed.';
