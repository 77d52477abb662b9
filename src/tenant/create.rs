//! Provisioning, ordered so that a failure or a crash leaves either nothing or work the
//! reconciler recognises: the row, the role, the database (closed until CONNECT is revoked from
//! PUBLIC), then the row becomes active with its audit row. A failure undoes only what its
//! request made.

use serde_json::json;
use sqlx::{Executor, PgConnection};

use super::row::{BCRYPT_COST, SELECT_TENANT, TenantRow, ident, ownership_comment};
use super::{AuditContext, NewTenant, Provisioned, Tenant, TenantError, TenantService, audit};
use crate::{
    model::{DbName, RoleName, TenantId, TenantPassword, ValidationError, generate_tenant_names},
    pg::scram,
};

impl TenantService {
    pub(super) fn check_max_connections(&self, n: u32) -> Result<i32, TenantError> {
        let cap = self.settings.tenants.max_connections_cap;
        if n == 0 || n > cap {
            return Err(ValidationError::new(
                "maxConnections",
                format!("must be between 1 and {cap}"),
            )
            .into());
        }
        Ok(n as i32)
    }

    /// A storage quota in MB within `tenants.max_size_mb_cap` (0: none, only when the cap is 0).
    pub(super) fn check_max_size(&self, mb: u64) -> Result<i64, TenantError> {
        let cap = self.settings.tenants.max_size_mb_cap;
        if cap > 0 && (mb == 0 || mb > cap) {
            return Err(ValidationError::new(
                "maxSizeMb",
                format!("must be between 1 and {cap} (MB)"),
            )
            .into());
        }
        i64::try_from(mb).map_err(|_| ValidationError::new("maxSizeMb", "is too large").into())
    }

    pub async fn create(
        &self,
        new: NewTenant,
        ctx: &AuditContext,
    ) -> Result<Provisioned, TenantError> {
        let max = self.check_max_connections(
            new.max_connections
                .unwrap_or(self.settings.tenants.default_max_connections),
        )?;
        let max_size = self.check_max_size(
            new.max_size_mb
                .unwrap_or(self.settings.tenants.default_max_size_mb),
        )?;
        let password = TenantPassword::generate();
        // The hashes are CPU work; run them beside the DDL rather than before it.
        let pw = password.expose().to_string();
        let verifier_task = tokio::task::spawn_blocking(move || scram::scram_sha256_verifier(&pw));
        let pw = password.expose().to_string();
        let bcrypt_task = tokio::task::spawn_blocking(move || bcrypt::hash(pw, BCRYPT_COST));

        let id = TenantId::new_random();
        // Held until this request is done, so the reconciler never mistakes it for a crash.
        let mut lock = self.work_lock(id).await?;
        // Every statement of this request runs on the lock's connection: a request never holds
        // one pooled connection while waiting for another, so many at once cannot starve a pool.
        let conn = lock.conn();
        let (db, role) = match self.insert_row(conn, id, &new, max, max_size).await {
            Ok(names) => names,
            Err(e) => {
                lock.release().await;
                return Err(e);
            }
        };
        let verifier = verifier_task
            .await
            .map_err(TenantError::hash)?
            .map_err(TenantError::hash)?;

        let plan = Plan {
            id,
            db: &db,
            role: &role,
            max,
        };
        let mut created = Created::default();
        let result = self.provision(conn, &plan, &verifier, &mut created).await;
        let result = match result {
            Ok(()) => match bcrypt_task.await {
                Ok(Ok(hash)) => self.activate(conn, &plan, &hash, ctx).await,
                Ok(Err(e)) => Err(TenantError::hash(e)),
                Err(e) => Err(TenantError::hash(e)),
            },
            Err(e) => Err(e),
        };
        let failed = result.is_err();
        let result = match result {
            Ok(tenant) => Ok(Provisioned { tenant, password }),
            Err(e) => {
                self.undo_provision(conn, &plan, &created).await;
                audit::record_failure(
                    conn,
                    ctx,
                    "database.create",
                    "database",
                    Some(&id.to_string()),
                    json!({ "database_name": db.as_str(), "error": e.category() }),
                )
                .await;
                Err(e)
            }
        };
        lock.release().await;
        // The pooler's auth file was being refreshed beside CREATE DATABASE; the response waits
        // for it (holding no connection), so a pooled URL works as soon as it is handed out.
        if let Some(refresh) = created.pooler_refresh.take() {
            let _ = refresh.await;
        }
        if failed {
            self.refresh_pooler().await;
        }
        result
    }

    /// The `provisioning` row, once the connection budget has room for it (checked and
    /// reserved in one transaction under the budget lock).
    async fn insert_row(
        &self,
        conn: &mut PgConnection,
        id: TenantId,
        new: &NewTenant,
        max: i32,
        max_size: i64,
    ) -> Result<(DbName, RoleName), TenantError> {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        self.reserve_connections(&mut tx, None, max).await?;
        for _ in 0..3 {
            let (db, role) = generate_tenant_names();
            let inserted = sqlx::query(
                "INSERT INTO databases (id, database_name, username, owner_email, friendly_name,
                                        max_connections, max_size_mb, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'provisioning')
                 ON CONFLICT DO NOTHING",
            )
            .bind(id.as_uuid())
            .bind(db.as_str())
            .bind(role.as_str())
            .bind(new.owner_email.as_str())
            .bind(new.friendly_name.as_str())
            .bind(max)
            .bind(max_size)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                tx.commit().await?;
                return Ok((db, role));
            }
        }
        Err(TenantError::internal("could not draw unused tenant names"))
    }

    async fn provision(
        &self,
        conn: &mut PgConnection,
        plan: &Plan<'_>,
        verifier: &str,
        created: &mut Created,
    ) -> Result<(), TenantError> {
        let Plan { id, db, role, max } = *plan;
        let ddl = ProvisionDdl::new(id, db, role, max, verifier)?;
        // Role, its ownership mark, and our membership (needed to create a database it owns)
        // in one transaction: either all exist or none.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for stmt in &ddl.role {
            tx.execute(stmt.as_str()).await?;
        }
        tx.commit().await?;
        created.role = true;
        if self.hba.as_ref().is_some_and(|h| h.pgbouncer.is_some()) {
            let svc = self.clone();
            created.pooler_refresh = Some(tokio::spawn(async move { svc.refresh_pooler().await }));
        }
        let (first, rest) = ddl
            .database
            .split_first()
            .expect("CREATE DATABASE comes first");
        conn.execute(first.as_str()).await?;
        created.database = true;
        for stmt in rest {
            conn.execute(stmt.as_str()).await?;
        }
        Ok(())
    }

    async fn activate(
        &self,
        conn: &mut PgConnection,
        plan: &Plan<'_>,
        hash: &str,
        ctx: &AuditContext,
    ) -> Result<Tenant, TenantError> {
        let Plan { id, db, role, max } = *plan;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let updated = sqlx::query(
            "UPDATE databases SET status = 'active', password_hash = $2 WHERE id = $1 AND status = 'provisioning'",
        )
        .bind(id.as_uuid())
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(TenantError::internal(
                "the provisioning row disappeared while creating",
            ));
        }
        let row: TenantRow = sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            ctx,
            "database.create",
            "database",
            Some(&id.to_string()),
            true,
            json!({ "database_name": db.as_str(), "username": role.as_str(), "max_connections": max }),
        )
        .await?;
        tx.commit().await?;
        Tenant::try_from(row)
    }

    /// Remove what a failed create made, and only that.
    async fn undo_provision(&self, conn: &mut PgConnection, plan: &Plan<'_>, created: &Created) {
        let Plan { id, db, role, .. } = *plan;
        let result: Result<(), TenantError> = async {
            if created.database {
                conn.execute(
                    format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        ident(db.as_str())?
                    )
                    .as_str(),
                )
                .await?;
            }
            if created.role {
                super::roles::drop_role(conn, id, role.as_str()).await?;
            }
            sqlx::query("DELETE FROM databases WHERE id = $1 AND status = 'provisioning'")
                .bind(id.as_uuid())
                .execute(&mut *conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(tenant = %id, error = %e, "undoing a failed create left work for the reconciler");
        }
    }
}

/// The tenant a create is making.
#[derive(Clone, Copy)]
struct Plan<'a> {
    id: TenantId,
    db: &'a DbName,
    role: &'a RoleName,
    max: i32,
}

/// What this request made, so a failure undoes exactly that.
#[derive(Default)]
struct Created {
    role: bool,
    database: bool,
    /// The PgBouncer auth-file refresh started once the role existed.
    pooler_refresh: Option<tokio::task::JoinHandle<()>>,
}

/// The statements that make a tenant's role and database, in order (the provisioning bench runs
/// the same ones as its baseline).
pub struct ProvisionDdl {
    /// In one transaction: the role with its SCRAM verifier and limit, its ownership mark, and
    /// the API role's membership (needed to create a database it owns), made by the control
    /// DB's `pgaas_priv.create_tenant_role` (the API role holds no CREATEROLE).
    pub role: Vec<String>,
    /// Each on its own (`CREATE DATABASE` cannot run in a transaction): the database is created
    /// closed, so that until CONNECT is revoked from PUBLIC nobody may open a session in it (a
    /// session opened in that window would outlive the REVOKE), then opened. A create
    /// interrupted by a crash leaves it closed until the reconciler undoes it.
    pub database: Vec<String>,
}

impl ProvisionDdl {
    pub fn new(
        id: TenantId,
        db: &DbName,
        role: &RoleName,
        max: i32,
        verifier: &str,
    ) -> Result<Self, TenantError> {
        let role_q = ident(role.as_str())?;
        let db_q = ident(db.as_str())?;
        let comment = crate::pg::quote::quote_literal(&ownership_comment(id))?;
        Ok(Self {
            role: vec![super::roles::create_statement(
                id,
                role.as_str(),
                max,
                verifier,
            )?],
            database: vec![
                format!(
                    "CREATE DATABASE {db_q} OWNER {role_q} CONNECTION LIMIT {max} ALLOW_CONNECTIONS false"
                ),
                format!("COMMENT ON DATABASE {db_q} IS {comment}"),
                format!("REVOKE ALL ON DATABASE {db_q} FROM PUBLIC"),
                format!("ALTER DATABASE {db_q} ALLOW_CONNECTIONS true"),
            ],
        })
    }
}
