//! The reconciler: finishes or undoes work a crash left half-done, and reports what it must not
//! touch. Rows stuck in `deleting` are deleted to the end; rows stuck in `provisioning` are undone
//! (their password was never shown to anyone). Roles and databases with the tenant prefixes but
//! no row are reported, never dropped: pgaas cannot prove they are its own.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use sqlx::Executor;

use super::Tenant;
use super::{AuditContext, TenantError, TenantService, audit, row::ident};
use crate::model::{LEGACY_ROLE_PREFIX, TENANT_DB_PREFIX, TenantId, TenantStatus};

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReconcileReport {
    pub finished_deletions: Vec<String>,
    pub undone_provisions: Vec<String>,
    pub orphan_databases: Vec<String>,
    pub orphan_roles: Vec<String>,
    pub errors: Vec<String>,
}

impl ReconcileReport {
    pub fn is_clean(&self) -> bool {
        self.finished_deletions.is_empty()
            && self.undone_provisions.is_empty()
            && self.orphan_databases.is_empty()
            && self.orphan_roles.is_empty()
            && self.errors.is_empty()
    }
}

impl TenantService {
    /// Reconcile rows untouched for at least `min_age` (0 at API start, when no request can be
    /// in flight; longer from `pgaas doctor`, which may run beside a live API).
    pub async fn reconcile(&self, min_age: Duration) -> Result<ReconcileReport, TenantError> {
        let mut report = ReconcileReport::default();
        let ctx = AuditContext::cli();
        let secs = min_age.as_secs_f64();
        let stuck: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM databases WHERE status IN ('provisioning', 'deleting')
               AND updated_at <= now() - make_interval(secs => $1) ORDER BY created_at",
        )
        .bind(secs)
        .fetch_all(&self.pool)
        .await?;
        for id in stuck {
            let id = TenantId::from_uuid(id);
            // A request still working on it holds its lock: not a crash, leave it alone.
            let Some(mut lock) = self.try_work_lock(id).await? else {
                continue;
            };
            let tenant = match self.get(id).await {
                Ok(t) => t,
                Err(TenantError::NotFound(_)) => {
                    lock.release().await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let name = tenant.database_name.as_str().to_string();
            let outcome = match tenant.status {
                TenantStatus::Deleting => self
                    .finish_delete(lock.conn(), &tenant, &ctx)
                    .await
                    .map(|_| report.finished_deletions.push(name.clone())),
                TenantStatus::Provisioning => self
                    .undo_stuck_provision(lock.conn(), &tenant, &ctx)
                    .await
                    .map(|_| report.undone_provisions.push(name.clone())),
                _ => Ok(()),
            };
            lock.release().await;
            if let Err(e) = outcome {
                report.errors.push(format!("{name}: {e}"));
            }
        }

        if !report.finished_deletions.is_empty() || !report.undone_provisions.is_empty() {
            self.refresh_pooler().await;
        }
        // A tenant's databases are its main one, those recorded beside it (shadow, restored,
        // kept by an in-place restore), and any other under its name's prefix that its role
        // owns (a dump restored `--into` a new name); none of them is an orphan.
        report.orphan_databases = sqlx::query_scalar(
            "SELECT datname FROM pg_database d WHERE starts_with(datname, $1)
               AND NOT EXISTS (SELECT 1 FROM databases t WHERE t.database_name = d.datname)
               AND NOT EXISTS (SELECT 1 FROM tenant_databases x WHERE x.name = d.datname)
               AND NOT EXISTS (SELECT 1 FROM databases t JOIN pg_roles r ON r.rolname = t.username
                               WHERE starts_with(d.datname, t.database_name || '_')
                                 AND d.datdba = r.oid)
             ORDER BY 1",
        )
        .bind(TENANT_DB_PREFIX)
        .fetch_all(&self.pool)
        .await?;
        report.orphan_roles = sqlx::query_scalar(
            "SELECT rolname FROM pg_roles r WHERE (starts_with(rolname, $1) OR starts_with(rolname, $2))
               AND NOT EXISTS (SELECT 1 FROM databases t WHERE t.username = r.rolname) ORDER BY 1",
        )
        .bind(TENANT_DB_PREFIX)
        .bind(LEGACY_ROLE_PREFIX)
        .fetch_all(&self.pool)
        .await?;
        for o in report.orphan_databases.iter().chain(&report.orphan_roles) {
            tracing::warn!(name = %o, "tenant-named object without a control-DB row; left in place (see `pgaas doctor`)");
        }
        Ok(report)
    }

    /// A create that never answered: drop what it made (only objects marked as this tenant's), and
    /// the row.
    async fn undo_stuck_provision(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &Tenant,
        ctx: &AuditContext,
    ) -> Result<(), TenantError> {
        let owned_by_role: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
                            WHERE d.datname = $1 AND r.rolname = $2)",
        )
        .bind(tenant.database_name.as_str())
        .bind(tenant.username.as_str())
        .fetch_one(&mut *conn)
        .await?;
        let role_is_ours: bool = sqlx::query_scalar(
            "SELECT COALESCE(shobj_description(oid, 'pg_authid') = $2, false) FROM pg_roles WHERE rolname = $1",
        )
        .bind(tenant.username.as_str())
        .bind(super::row::ownership_comment(tenant.id))
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(false);
        if owned_by_role && role_is_ours {
            conn.execute(
                format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(tenant.database_name.as_str())?
                )
                .as_str(),
            )
            .await?;
        }
        self.drop_role_if_ours(conn, tenant.id, &tenant.username)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("DELETE FROM databases WHERE id = $1 AND status = 'provisioning'")
            .bind(tenant.id.as_uuid())
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            ctx,
            "database.reconcile_undo_create",
            "database",
            Some(&tenant.id.to_string()),
            true,
            json!({ "database_name": tenant.database_name.as_str() }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
