//! The rows the access files are compiled from, and the generation they record (`hba_state`).

use sqlx::PgConnection;

use super::super::TenantAccess;

/// The tenants that need lines of their own (an allow-list, a role not named after its
/// database, a database of its own besides its main one, with the same allow-list), as the
/// connection's transaction sees the rows.
pub async fn load_tenants(conn: &mut PgConnection) -> Result<Vec<TenantAccess>, sqlx::Error> {
    let rows: Vec<(String, String, Option<ipnetwork::IpNetwork>)> = sqlx::query_as(
        "SELECT d.database_name, d.username, w.ip_address
         FROM databases d LEFT JOIN ip_whitelist w ON w.database_id = d.id
         WHERE w.id IS NOT NULL OR d.database_name <> d.username
         UNION ALL
         SELECT x.name, d.username, w.ip_address
         FROM tenant_databases x JOIN databases d ON d.id = x.database_id
         LEFT JOIN ip_whitelist w ON w.database_id = d.id
         ORDER BY 1, 3",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tenants: Vec<TenantAccess> = Vec::new();
    for (database, role, net) in rows {
        if tenants.last().is_none_or(|t| t.database != database) {
            tenants.push(TenantAccess {
                database,
                role,
                allow: Vec::new(),
            });
        }
        let t = tenants.last_mut().expect("pushed above");
        t.allow.extend(net);
    }
    Ok(tenants)
}

/// The tenants' SCRAM verifiers, for PgBouncer's auth file (see `control_db::bootstrap`).
pub async fn tenant_secrets(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT rolname, rolpassword FROM pgaas_priv.tenant_secrets()")
        .fetch_all(conn)
        .await
}

/// The generation of the file in force, as the control DB records it.
pub async fn current_generation(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT generation FROM hba_state")
        .fetch_one(conn)
        .await
}

/// A new generation, recorded as applied now (inside the applier's transaction).
pub(super) async fn next_generation(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE hba_state SET generation = generation + 1, applied_at = now() RETURNING generation",
    )
    .fetch_one(conn)
    .await
}
