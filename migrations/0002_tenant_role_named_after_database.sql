-- A tenant's role is named after its database (tenant_<hex> for both), so pg_hba.conf and
-- PgBouncer's hba file can tie each role to its own database with the `sameuser` keyword.
-- Tenants made before keep their user_<hex> roles; the access rules give each such pair a line.

ALTER TABLE databases DROP CONSTRAINT databases_username_check;
ALTER TABLE databases ADD CONSTRAINT databases_username_check
    CHECK (username ~ '^(tenant|user)_[0-9a-f]{8,32}$');

COMMENT ON COLUMN databases.username IS
    'PostgreSQL login role: the database''s own name (tenant_<hex>), or user_<hex> for tenants made before roles were named after their databases.';
