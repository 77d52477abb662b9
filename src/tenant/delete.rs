//! Deletion: the row says `deleting`, new sessions are blocked, the database is dropped with
//! its sessions, the role is dropped, the row removed; the audit row stays. A half-done delete is
//! finished by asking again, or by the reconciler.

use serde_json::json;
use sqlx::{Executor, PgConnection};

use super::row::{ident, ownership_comment};
use super::{AuditContext, Tenant, TenantError, TenantService, audit};
use crate::model::{RoleName, TenantId, TenantStatus};

impl TenantService {
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
        let tenant = Self::lock_row(&mut tx, id).await?;
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
        // Its own database and every other it owns (restores, shadow databases).
        let mut names = vec![tenant.database_name.as_str().to_string()];
        names.extend(
            sqlx::query_scalar::<_, String>(
                "SELECT name FROM tenant_databases WHERE database_id = $1",
            )
            .bind(tenant.id.as_uuid())
            .fetch_all(&mut *conn)
            .await?,
        );
        for name in &names {
            self.drop_database(conn, name).await?;
        }
        self.release_role_elsewhere(conn, tenant).await?;
        self.drop_role_if_ours(conn, tenant.id, &tenant.username)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // Lines of its own in the access files: an allow-list, other databases, or a role not
        // named after its database.
        let had_rules: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM ip_whitelist WHERE database_id = $1)
                 OR EXISTS (SELECT 1 FROM tenant_databases WHERE database_id = $1)",
        )
        .bind(tenant.id.as_uuid())
        .fetch_one(&mut *tx)
        .await?
            || !tenant.username.is_named_after(&tenant.database_name);
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

    /// Drop one of a tenant's other databases (a restore's, or the data a restore in place
    /// replaced), its row and its access lines.
    pub async fn drop_extra(&self, name: &str, ctx: &AuditContext) -> Result<(), TenantError> {
        let mut conn = self.pool.acquire().await?;
        let owner: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT database_id FROM tenant_databases WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(owner) = owner else {
            let known: Vec<String> =
                sqlx::query_scalar("SELECT name FROM tenant_databases ORDER BY name LIMIT 20")
                    .fetch_all(&mut *conn)
                    .await?;
            return Err(TenantError::State(format!(
                "{name} is not one of the tenants' other databases{}",
                if known.is_empty() {
                    " (there are none)".to_string()
                } else {
                    format!("; they are: {}", known.join(", "))
                }
            )));
        };
        self.drop_database(&mut conn, name).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("DELETE FROM tenant_databases WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let applied = match &self.hba {
            Some(applier) => Some(applier.apply(&mut tx).await?),
            None => None,
        };
        audit::record(
            &mut tx,
            ctx,
            "database.drop_extra",
            "database",
            Some(&owner.to_string()),
            true,
            json!({ "name": name }),
        )
        .await?;
        if let Err(e) = tx.commit().await {
            if let Some(applied) = applied {
                applied.undo(&mut conn).await;
            }
            return Err(e.into());
        }
        self.refresh_pooler().await;
        Ok(())
    }

    /// Drop one database of a tenant being deleted, with its sessions.
    pub(super) async fn drop_database(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<(), TenantError> {
        let db_q = ident(name)?;
        let db_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?;
        if db_exists {
            // The owner may have made its database a template, which cannot be dropped; then
            // no new sessions, then end the ones still open with the drop itself.
            for stmt in [
                format!("ALTER DATABASE {db_q} IS_TEMPLATE false"),
                format!("ALTER DATABASE {db_q} ALLOW_CONNECTIONS false"),
            ] {
                conn.execute(stmt.as_str()).await?;
            }
            // FORCE ends the sessions, but waits only 5 s for them to go: on a loaded host a
            // session may take longer, which is worth a few more tries before answering "busy".
            let drop = format!("DROP DATABASE IF EXISTS {db_q} WITH (FORCE)");
            for attempt in 1.. {
                match conn.execute(drop.as_str()).await {
                    Ok(_) => break,
                    Err(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some("55006") && attempt < 3 =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Whatever the role still has outside its own (dropped) database: privileges other tenants
    /// granted it, objects it came to own in their databases, privileges on shared objects.
    /// Each database that `pg_shdepend` names is visited: objects go to that database's owner
    /// (`REASSIGN OWNED`), privileges are revoked (`DROP OWNED`). A neighbour's grant must never
    /// make this tenant undeletable.
    async fn release_role_elsewhere(
        &self,
        conn: &mut PgConnection,
        tenant: &Tenant,
    ) -> Result<(), TenantError> {
        let role = tenant.username.as_str();
        let places: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT d.datname::text, pg_get_userbyid(d.datdba)::text
             FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
             WHERE s.refclassid = 'pg_authid'::regclass
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
               AND s.deptype <> 'p'",
        )
        .bind(role)
        .fetch_all(&mut *conn)
        .await?;
        if places.is_empty() {
            return Ok(());
        }
        let role_q = ident(role)?;
        let here: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&mut *conn)
            .await?;
        // Shared objects (dbid 0) and this database: from here.
        if places
            .iter()
            .any(|(db, _)| db.is_none() || db.as_deref() == Some(here.as_str()))
        {
            conn.execute(format!("DROP OWNED BY {role_q}").as_str())
                .await?;
        }
        for (db, owner) in places {
            let (Some(db), Some(owner)) = (db, owner) else {
                continue;
            };
            if db == here {
                continue;
            }
            let options = self.pool.connect_options().as_ref().clone().database(&db);
            // A neighbour may close its database to everyone (ALLOW_CONNECTIONS false, a
            // connection limit of 0, CONNECT revoked from its own role): it is opened to the
            // API for the moment the release takes, and closed again as it was.
            let mut opened = None;
            let mut other = match <PgConnection as sqlx::Connection>::connect_with(&options).await {
                Ok(c) => c,
                Err(first) => {
                    let busy = |e: &dyn std::fmt::Display| {
                        tracing::warn!(role, database = %db, error = %e, "cannot reach a database where a deleted tenant's role still has objects");
                        TenantError::Busy(format!(
                            "role {role} still has objects or privileges in database {db}, which \
                             refused a connection to release them; try again"
                        ))
                    };
                    let Some(closed) = Closed::open(conn, &db).await? else {
                        return Err(busy(&first));
                    };
                    let c = <PgConnection as sqlx::Connection>::connect_with(&options).await;
                    opened = Some(closed);
                    match c {
                        Ok(c) => c,
                        Err(e) => {
                            if let Some(closed) = opened.take() {
                                closed.restore(conn).await;
                            }
                            return Err(busy(&e));
                        }
                    }
                }
            };
            let result = async {
                other
                    .execute(format!("REASSIGN OWNED BY {role_q} TO {}", ident(&owner)?).as_str())
                    .await?;
                other
                    .execute(format!("DROP OWNED BY {role_q}").as_str())
                    .await?;
                Ok::<_, TenantError>(())
            }
            .await;
            let _ = sqlx::Connection::close(other).await;
            if let Some(closed) = opened {
                closed.restore(conn).await;
            }
            result?;
            tracing::info!(role, database = %db, "released a deleted tenant's objects and privileges in another database");
        }
        Ok(())
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
                super::roles::drop_role(conn, id, role.as_str()).await
            }
            Some(_) => Err(TenantError::Conflict(format!(
                "role {} exists but was not created by pgaas for database {id}; left in place",
                role.as_str()
            ))),
        }
    }
}

/// How a neighbour closed its database to the API, undone for a moment by [`Closed::open`] and
/// put back by [`Closed::restore`].
struct Closed {
    database: String,
    allow_connections: bool,
    connection_limit: i32,
    connect: bool,
}

impl Closed {
    /// Open `database` to the API role as far as its owner's settings shut it (the API role is
    /// a member of every tenant role, so it may change what the owner may). `None` when nothing
    /// is closed, so opening would not help.
    async fn open(conn: &mut PgConnection, database: &str) -> Result<Option<Self>, TenantError> {
        let row: Option<(bool, i32, bool)> = sqlx::query_as(
            "SELECT datallowconn, datconnlimit, has_database_privilege(current_user, oid, 'CONNECT')
               FROM pg_database WHERE datname = $1",
        )
        .bind(database)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((allow_connections, connection_limit, connect)) = row else {
            return Ok(None);
        };
        let closed = Self {
            database: database.to_string(),
            allow_connections,
            connection_limit,
            connect,
        };
        if allow_connections && connection_limit < 0 && connect {
            return Ok(None);
        }
        let db_q = ident(database)?;
        if !connect {
            conn.execute(format!("GRANT CONNECT ON DATABASE {db_q} TO CURRENT_USER").as_str())
                .await?;
        }
        conn.execute(
            format!("ALTER DATABASE {db_q} ALLOW_CONNECTIONS true CONNECTION LIMIT -1").as_str(),
        )
        .await?;
        tracing::info!(
            database,
            "opened a neighbour's closed database to release a deleted tenant's role there"
        );
        Ok(Some(closed))
    }

    /// Put the owner's settings back; a failure is logged (the guard pass re-applies pgaas's
    /// own limits, and the owner may close its database again).
    async fn restore(self, conn: &mut PgConnection) {
        let result: Result<(), TenantError> = async {
            let db_q = ident(&self.database)?;
            conn.execute(
                format!(
                    "ALTER DATABASE {db_q} ALLOW_CONNECTIONS {} CONNECTION LIMIT {}",
                    self.allow_connections, self.connection_limit
                )
                .as_str(),
            )
            .await?;
            if !self.connect {
                conn.execute(
                    format!("REVOKE CONNECT ON DATABASE {db_q} FROM CURRENT_USER").as_str(),
                )
                .await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(database = %self.database, error = %e, "could not close a neighbour's database again as its owner had it");
        }
    }
}
