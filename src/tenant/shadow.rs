//! A tenant's shadow database: the scratch database migration tools want (Prisma's
//! `migrate dev` creates, diffs and wipes one), so they never run against the tenant's data.
//!
//! It is `<database>_shadow`, owned by the tenant's role, closed to PUBLIC like the main one and
//! recorded in `tenant_databases` (purpose `shadow`): the access files admit the tenant's role to
//! it from the same allow-list, the pooler carries it, the role's connection limit covers both
//! databases, its size counts against the tenant's quota, and it goes with the tenant. Creating
//! it twice returns the one there is; dropping it ends its sessions.

use serde_json::json;
use sqlx::Executor;

use super::row::ident;
use super::{AuditContext, Tenant, TenantError, TenantService, audit};
use crate::model::TenantId;

/// The shadow database's name for a tenant database.
pub fn shadow_name(database: &str) -> String {
    format!("{database}_shadow")
}

impl TenantService {
    /// The tenant's shadow database, if it has one.
    pub async fn shadow_of(&self, id: TenantId) -> Result<Option<String>, TenantError> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM tenant_databases WHERE database_id = $1 AND purpose = 'shadow'",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Create the tenant's shadow database (or return the one it has), reachable when this
    /// returns. Returns the tenant, the name, and whether it was made now.
    pub async fn create_shadow(
        &self,
        id: TenantId,
        ctx: &AuditContext,
    ) -> Result<(Tenant, String, bool), TenantError> {
        let _gate = self.gate(id).await?;
        let tenant = self.get(id).await?;
        if let Some(name) = self.shadow_of(id).await? {
            return Ok((tenant, name, false));
        }
        let name = shadow_name(tenant.database_name.as_str());
        let (db_q, role_q) = (ident(&name)?, ident(tenant.username.as_str())?);
        let mut conn = self.pool.acquire().await?;
        // A database of the tenant's under this name (an older restore's `into`) is data, not
        // a leftover: refuse rather than drop it.
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT purpose FROM tenant_databases WHERE name = $1")
                .bind(&name)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(purpose) = recorded {
            return Err(TenantError::Conflict(format!(
                "{name} already exists as a database of the tenant's ({purpose}); rename or drop it (`pgaas db drop-extra {name}`) before asking for a shadow database"
            )));
        }
        // A database by this name without its row is what a crash between the two left: nobody
        // can have used it (it is closed to everyone until the row opens it), so it goes.
        conn.execute(format!("DROP DATABASE IF EXISTS {db_q} WITH (FORCE)").as_str())
            .await?;
        // Closed until no neighbour can connect, as the main database is made.
        conn.execute(
            format!(
                "CREATE DATABASE {db_q} OWNER {role_q} CONNECTION LIMIT {} ALLOW_CONNECTIONS false",
                tenant.max_connections
            )
            .as_str(),
        )
        .await?;
        let made = async {
            conn.execute(format!("REVOKE ALL ON DATABASE {db_q} FROM PUBLIC").as_str())
                .await?;
            conn.execute(format!("ALTER DATABASE {db_q} ALLOW_CONNECTIONS true").as_str())
                .await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // The tenant must still be there, and not being deleted, when the row goes in.
            self.lock_active(&mut tx, id).await?;
            sqlx::query(
                "INSERT INTO tenant_databases (name, database_id, purpose) VALUES ($1, $2, 'shadow')",
            )
            .bind(&name)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                ctx,
                "database.shadow.create",
                "database",
                Some(&id.to_string()),
                true,
                json!({ "database_name": tenant.database_name.as_str(), "shadow": name }),
            )
            .await?;
            self.commit_with_access(tx).await
        }
        .await;
        if let Err(e) = made {
            if let Err(drop) = conn
                .execute(format!("DROP DATABASE IF EXISTS {db_q} WITH (FORCE)").as_str())
                .await
            {
                tracing::error!(database = %name, error = %drop, "a failed shadow create left its database; the next create removes it");
            }
            return Err(e);
        }
        Ok((tenant, name, true))
    }

    /// Drop the tenant's shadow database (its sessions end). Returns whether there was one.
    pub async fn drop_shadow(&self, id: TenantId, ctx: &AuditContext) -> Result<bool, TenantError> {
        let _gate = self.gate(id).await?;
        let tenant = self.get(id).await?;
        let Some(name) = self.shadow_of(id).await? else {
            return Ok(false);
        };
        let mut conn = self.pool.acquire().await?;
        // The database first: if this fails the row (and so the access lines) still describe
        // it; once it is gone, a line naming it admits nobody. Dropped as a tenant's main
        // database is: its tenant may have marked it IS_TEMPLATE, which DROP refuses.
        self.drop_database(&mut conn, &name).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("DELETE FROM tenant_databases WHERE name = $1")
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            ctx,
            "database.shadow.delete",
            "database",
            Some(&id.to_string()),
            true,
            json!({ "database_name": tenant.database_name.as_str(), "shadow": name }),
        )
        .await?;
        self.commit_with_access(tx).await?;
        Ok(true)
    }

    /// Write both access files and the pooler's from the rows `tx` holds, then commit; if the
    /// commit fails, put the files back as they were.
    async fn commit_with_access(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), TenantError> {
        let (files, pooler) = match &self.hba {
            Some(applier) => (
                Some(applier.apply(&mut tx).await?),
                Some(applier.apply_pooler(&mut tx).await?),
            ),
            None => (None, None),
        };
        if let Err(e) = tx.commit().await {
            if let Some(f) = files {
                match self.pool.acquire().await {
                    Ok(mut conn) => f.undo(&mut conn).await,
                    Err(a) => {
                        tracing::error!(error = %a, "could not put the access files back; run `pgaas render`")
                    }
                }
            }
            if let Some(p) = pooler {
                p.undo().await;
            }
            return Err(e.into());
        }
        Ok(())
    }
}
