//! Create, read, list, change, rotate and delete tenants, each step ordered so that a failure
//! or crash leaves either nothing or work the reconciler recognises (see the module docs).

use serde_json::json;
use sqlx::{Executor, PgConnection};

use super::{
    AuditContext, ListQuery, NewTenant, Provisioned, Tenant, TenantError, TenantPage, TenantPatch,
    TenantService, audit, types::MAX_PAGE,
};
use crate::{
    model::{
        DbName, RoleName, TenantId, TenantPassword, TenantStatus, ValidationError,
        generate_tenant_names,
    },
    pg::{quote::quote_ident, scram},
};

/// bcrypt cost for the at-rest password hash (the original's column, which nothing in pgaas
/// reads back). A slow hash protects guessable secrets; this one is 190 random bits, beyond any
/// search at any cost, so the cost only decides how much CPU each create spends: cost 10 took
/// ~50 ms of a core here, competing with PostgreSQL on a small host. Cost 6 takes ~3 ms.
const BCRYPT_COST: u32 = 6;

const SELECT_TENANT: &str =
    "SELECT id, database_name, username, owner_email, friendly_name, max_connections,
        status::text AS status, created_at, updated_at FROM databases";

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: uuid::Uuid,
    database_name: String,
    username: String,
    owner_email: String,
    friendly_name: String,
    max_connections: i32,
    status: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = TenantError;
    fn try_from(r: TenantRow) -> Result<Self, TenantError> {
        Ok(Tenant {
            id: TenantId::from_uuid(r.id),
            database_name: DbName::try_from(r.database_name).map_err(TenantError::internal)?,
            username: RoleName::try_from(r.username).map_err(TenantError::internal)?,
            owner_email: r.owner_email,
            friendly_name: r.friendly_name,
            max_connections: r.max_connections,
            status: r.status.parse().map_err(TenantError::internal)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

pub(super) fn ident(name: &str) -> Result<String, TenantError> {
    quote_ident(name).map_err(TenantError::internal)
}

/// The comment that marks a role or database as made by pgaas for this tenant; nothing without
/// it is ever dropped.
pub(super) fn ownership_comment(id: TenantId) -> String {
    format!("pgaas tenant {id}")
}

impl TenantService {
    fn check_max_connections(&self, n: u32) -> Result<i32, TenantError> {
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

    pub async fn create(
        &self,
        new: NewTenant,
        ctx: &AuditContext,
    ) -> Result<Provisioned, TenantError> {
        let max = self.check_max_connections(
            new.max_connections
                .unwrap_or(self.settings.tenants.default_max_connections),
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
        let mut names = None;
        for _ in 0..3 {
            let (db, role) = generate_tenant_names();
            let inserted = sqlx::query(
                "INSERT INTO databases (id, database_name, username, owner_email, friendly_name, max_connections, status)
                 VALUES ($1, $2, $3, $4, $5, $6, 'provisioning')
                 ON CONFLICT DO NOTHING",
            )
            .bind(id.as_uuid())
            .bind(db.as_str())
            .bind(role.as_str())
            .bind(new.owner_email.as_str())
            .bind(new.friendly_name.as_str())
            .bind(max)
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 1 {
                names = Some((db, role));
                break;
            }
        }
        let (db, role) =
            names.ok_or_else(|| TenantError::internal("could not draw unused tenant names"))?;
        let verifier = verifier_task
            .await
            .map_err(TenantError::internal)?
            .map_err(TenantError::internal)?;

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
                Ok(Err(e)) => Err(TenantError::internal(e)),
                Err(e) => Err(TenantError::internal(e)),
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

    async fn provision(
        &self,
        conn: &mut PgConnection,
        plan: &Plan<'_>,
        verifier: &str,
        created: &mut Created,
    ) -> Result<(), TenantError> {
        let Plan { id, db, role, max } = *plan;
        let role_q = ident(role.as_str())?;
        let db_q = ident(db.as_str())?;
        let group_q = ident(crate::control_db::TENANT_GROUP)?;
        // New tenants have no allow-list: members of the open group from the start.
        let open_q = ident(crate::control_db::OPEN_GROUP)?;
        let comment = ownership_comment(id);
        // Role, its ownership mark, and our membership (needed to create a database it owns)
        // in one transaction: either all exist or none.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        tx.execute(
            format!(
                "CREATE ROLE {role_q} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION CONNECTION LIMIT {max} PASSWORD '{}' IN ROLE {group_q}, {open_q}",
                verifier.replace('\'', "''")
            )
            .as_str(),
        )
        .await?;
        tx.execute(format!("COMMENT ON ROLE {role_q} IS '{comment}'").as_str())
            .await?;
        tx.execute(format!("GRANT {role_q} TO CURRENT_USER").as_str())
            .await?;
        tx.commit().await?;
        created.role = true;
        if self.hba.as_ref().is_some_and(|h| h.pgbouncer.is_some()) {
            let svc = self.clone();
            created.pooler_refresh = Some(tokio::spawn(async move { svc.refresh_pooler().await }));
        }

        conn.execute(
            format!("CREATE DATABASE {db_q} OWNER {role_q} CONNECTION LIMIT {max}").as_str(),
        )
        .await?;
        created.database = true;
        conn.execute(format!("COMMENT ON DATABASE {db_q} IS '{comment}'").as_str())
            .await?;
        conn.execute(format!("REVOKE ALL ON DATABASE {db_q} FROM PUBLIC").as_str())
            .await?;
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
                conn.execute(format!("DROP ROLE IF EXISTS {}", ident(role.as_str())?).as_str())
                    .await?;
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

    pub async fn get(&self, id: TenantId) -> Result<Tenant, TenantError> {
        let row: Option<TenantRow> = sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or(TenantError::NotFound(id))?.try_into()
    }

    /// A tenant by id or by its database name (`tenant_...`), as operators type them.
    pub async fn find(&self, id_or_name: &str) -> Result<Tenant, TenantError> {
        if let Ok(id) = id_or_name.parse::<TenantId>() {
            return self.get(id).await;
        }
        let name = DbName::try_from(id_or_name)?;
        let row: Option<TenantRow> =
            sqlx::query_as(&format!("{SELECT_TENANT} WHERE database_name = $1"))
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.ok_or_else(|| {
            TenantError::Validation(ValidationError::new(
                "database",
                format!("no database named {}", name.as_str()),
            ))
        })?
        .try_into()
    }

    pub async fn list(&self, q: &ListQuery) -> Result<TenantPage, TenantError> {
        let limit = if q.limit == 0 {
            super::types::DEFAULT_PAGE
        } else {
            q.limit
        };
        if limit > MAX_PAGE {
            return Err(
                ValidationError::new("limit", format!("must be between 1 and {MAX_PAGE}")).into(),
            );
        }
        let cursor = q.cursor.as_deref().map(parse_cursor).transpose()?;
        let status = q.status.map(|s| s.as_str().to_string());
        let filter =
            "($1::text IS NULL OR status::text = $1) AND ($2::text IS NULL OR owner_email = $2)";
        let total: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM databases WHERE {filter}"))
                .bind(&status)
                .bind(&q.owner_email)
                .fetch_one(&self.pool)
                .await?;
        let (ts, cid) = cursor.unzip();
        let rows: Vec<TenantRow> = sqlx::query_as(&format!(
            "{SELECT_TENANT} WHERE {filter}
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
             ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6"
        ))
        .bind(&status)
        .bind(&q.owner_email)
        .bind(ts)
        .bind(cid)
        .bind(i64::from(limit) + 1)
        .bind(if cursor.is_some() {
            0
        } else {
            i64::try_from(q.offset).unwrap_or(i64::MAX)
        })
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let mut items = rows
            .into_iter()
            .take(limit as usize)
            .map(Tenant::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        items.shrink_to_fit();
        let next_cursor = if more {
            items.last().map(make_cursor)
        } else {
            None
        };
        Ok(TenantPage {
            items,
            total,
            next_cursor,
        })
    }

    /// Lock a tenant's row for the rest of `tx`, refusing tenants mid-provisioning or deleting.
    pub(super) async fn lock_active(
        &self,
        tx: &mut PgConnection,
        id: TenantId,
    ) -> Result<Tenant, TenantError> {
        let row: Option<TenantRow> =
            sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1 FOR UPDATE"))
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let tenant: Tenant = row.ok_or(TenantError::NotFound(id))?.try_into()?;
        match tenant.status {
            TenantStatus::Active | TenantStatus::Suspended => Ok(tenant),
            s => Err(TenantError::State(format!(
                "database {id} is {s}; try again when it is active"
            ))),
        }
    }

    pub async fn update(
        &self,
        id: TenantId,
        patch: TenantPatch,
        ctx: &AuditContext,
    ) -> Result<Tenant, TenantError> {
        let max = patch
            .max_connections
            .map(|n| self.check_max_connections(n))
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        let before = self.lock_active(&mut tx, id).await?;
        if let Some(n) = max {
            tx.execute(
                format!(
                    "ALTER ROLE {} CONNECTION LIMIT {n}",
                    ident(before.username.as_str())?
                )
                .as_str(),
            )
            .await?;
            tx.execute(
                format!(
                    "ALTER DATABASE {} CONNECTION LIMIT {n}",
                    ident(before.database_name.as_str())?
                )
                .as_str(),
            )
            .await?;
        }
        sqlx::query(
            "UPDATE databases SET friendly_name = COALESCE($2, friendly_name), owner_email = COALESCE($3, owner_email),
                    max_connections = COALESCE($4, max_connections)
             WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(patch.friendly_name.as_ref().map(|f| f.as_str()))
        .bind(patch.owner_email.as_ref().map(|e| e.as_str()))
        .bind(max)
        .execute(&mut *tx)
        .await?;
        let mut changed = serde_json::Map::new();
        if let Some(f) = &patch.friendly_name {
            changed.insert("friendly_name".into(), json!(f.as_str()));
        }
        if let Some(e) = &patch.owner_email {
            changed.insert("owner_email".into(), json!(e.as_str()));
        }
        if let Some(n) = max {
            changed.insert("max_connections".into(), json!(n));
        }
        audit::record(
            &mut tx,
            ctx,
            "database.update",
            "database",
            Some(&id.to_string()),
            true,
            changed.into(),
        )
        .await?;
        let row: TenantRow = sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        row.try_into()
    }

    /// A new password, shown once. Sessions already open stay open.
    pub async fn rotate_password(
        &self,
        id: TenantId,
        ctx: &AuditContext,
    ) -> Result<(Tenant, TenantPassword), TenantError> {
        let password = TenantPassword::generate();
        let pw = password.expose().to_string();
        let (verifier, hash) = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((
                scram::scram_sha256_verifier(&pw).map_err(|e| e.to_string())?,
                bcrypt::hash(&pw, BCRYPT_COST).map_err(|e| e.to_string())?,
            ))
        })
        .await
        .map_err(TenantError::internal)?
        .map_err(TenantError::Internal)?;
        let mut tx = self.pool.begin().await?;
        let tenant = self.lock_active(&mut tx, id).await?;
        tx.execute(
            format!(
                "ALTER ROLE {} PASSWORD '{}'",
                ident(tenant.username.as_str())?,
                verifier.replace('\'', "''")
            )
            .as_str(),
        )
        .await?;
        sqlx::query("UPDATE databases SET password_hash = $2 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            ctx,
            "database.rotate_password",
            "database",
            Some(&id.to_string()),
            true,
            json!({}),
        )
        .await?;
        tx.commit().await?;
        self.refresh_pooler().await;
        // Read again: the row's updated_at moved with the new hash.
        let tenant = self.get(tenant.id).await.unwrap_or(tenant);
        Ok((tenant, password))
    }

    pub async fn delete(&self, id: TenantId, ctx: &AuditContext) -> Result<(), TenantError> {
        let mut lock = self.work_lock(id).await?;
        let result = self.delete_locked(lock.conn(), id, ctx).await;
        lock.release().await;
        if result.is_ok() {
            self.refresh_pooler().await;
        }
        result
    }

    async fn delete_locked(
        &self,
        conn: &mut PgConnection,
        id: TenantId,
        ctx: &AuditContext,
    ) -> Result<(), TenantError> {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let row: Option<TenantRow> =
            sqlx::query_as(&format!("{SELECT_TENANT} WHERE id = $1 FOR UPDATE"))
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let tenant: Tenant = row.ok_or(TenantError::NotFound(id))?.try_into()?;
        // A delete that failed halfway left the row `deleting`: asking again finishes it.
        if tenant.status == TenantStatus::Provisioning {
            return Err(TenantError::State(format!(
                "database {id} is still being created; try again in a moment"
            )));
        }
        sqlx::query("UPDATE databases SET status = 'deleting' WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        match self.finish_delete(conn, &tenant, ctx).await {
            Ok(()) => Ok(()),
            Err(e) => {
                audit::record_failure(
                    conn,
                    ctx,
                    "database.delete",
                    "database",
                    Some(&id.to_string()),
                    json!({ "database_name": tenant.database_name.as_str(), "error": e.category() }),
                )
                .await;
                Err(e)
            }
        }
    }

    /// Everything after the row says `deleting`; the reconciler calls this too.
    pub(super) async fn finish_delete(
        &self,
        conn: &mut PgConnection,
        tenant: &Tenant,
        ctx: &AuditContext,
    ) -> Result<(), TenantError> {
        let db_q = ident(tenant.database_name.as_str())?;
        let db_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(tenant.database_name.as_str())
                .fetch_one(&mut *conn)
                .await?;
        if db_exists {
            // No new sessions, then end the ones still open with the drop itself.
            conn.execute(format!("ALTER DATABASE {db_q} ALLOW_CONNECTIONS false").as_str())
                .await?;
            conn.execute(format!("DROP DATABASE IF EXISTS {db_q} WITH (FORCE)").as_str())
                .await?;
        }
        self.drop_role_if_ours(conn, tenant.id, &tenant.username)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let had_rules: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ip_whitelist WHERE database_id = $1)")
                .bind(tenant.id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM databases WHERE id = $1")
            .bind(tenant.id.as_uuid())
            .execute(&mut *tx)
            .await?;
        // Its allow-list rows went with it (cascade); take its lines out of pg_hba.conf in the
        // same transaction.
        let applied = match (&self.hba, had_rules) {
            (Some(applier), true) => Some(applier.apply(&mut tx).await?),
            _ => None,
        };
        audit::record(
            &mut tx,
            ctx,
            "database.delete",
            "database",
            Some(&tenant.id.to_string()),
            true,
            json!({ "database_name": tenant.database_name.as_str(), "username": tenant.username.as_str() }),
        )
        .await?;
        if let Err(e) = tx.commit().await {
            if let Some(applied) = applied {
                applied.undo(conn).await;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Bring PgBouncer's auth file up to date. A failure leaves pooled logins of this tenant
    /// stale but direct ones working; it is logged and repaired by the next change or `pgaas render`.
    pub(super) async fn refresh_pooler(&self) {
        if let Some(applier) = &self.hba {
            if let Err(e) = applier.refresh_pooler_users(&self.pool).await {
                tracing::error!(error = %e, "PgBouncer's auth file could not be refreshed; run `pgaas render`");
            }
        }
    }

    /// Drop the tenant's role only if pgaas's ownership comment for this tenant is on it.
    pub(super) async fn drop_role_if_ours(
        &self,
        conn: &mut PgConnection,
        id: TenantId,
        role: &RoleName,
    ) -> Result<bool, TenantError> {
        let comment: Option<Option<String>> = sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        )
        .bind(role.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        match comment {
            None => Ok(false),
            Some(Some(c)) if c == ownership_comment(id) => {
                conn.execute(format!("DROP ROLE IF EXISTS {}", ident(role.as_str())?).as_str())
                    .await?;
                Ok(true)
            }
            Some(_) => Err(TenantError::Conflict(format!(
                "role {} exists but was not created by pgaas for database {id}; left in place",
                role.as_str()
            ))),
        }
    }
}

/// A session-level advisory lock on one tenant, held on a connection of its own while a create
/// or delete is under way. Dropped without `release` (a panic, a cancelled request), the
/// connection is closed instead of returned to the pool, which releases the lock too.
pub(super) struct WorkLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
}

pub(super) fn lock_key(id: TenantId) -> i64 {
    let b = id.as_uuid().as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl TenantService {
    pub(super) async fn work_lock(&self, id: TenantId) -> Result<WorkLock, TenantError> {
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(id);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(WorkLock {
            conn: Some(conn),
            key,
        })
    }

    /// `None` when another session is working on the tenant right now.
    pub(super) async fn try_work_lock(
        &self,
        id: TenantId,
    ) -> Result<Option<WorkLock>, TenantError> {
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(id);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then_some(WorkLock {
            conn: Some(conn),
            key,
        }))
    }
}

impl WorkLock {
    /// The locked connection, for the statements of the work it guards.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a held lock has its connection")
    }

    pub(super) async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for WorkLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
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

fn make_cursor(t: &Tenant) -> String {
    format!("{}_{}", t.created_at.timestamp_micros(), t.id)
}

fn parse_cursor(s: &str) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), TenantError> {
    let bad = || ValidationError::new("cursor", "not a cursor from a previous page's next_cursor");
    let (micros, id) = s.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let ts = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    let id = id.parse().map_err(|_| bad())?;
    Ok((ts, id))
}
