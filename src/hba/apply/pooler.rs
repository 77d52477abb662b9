//! PgBouncer's own files that follow the control DB: the auth file (the tenants' SCRAM
//! verifiers, see `pg::userlist`) and the per-tenant limits (`render::render_tenants`). Written
//! under the same advisory lock as the hba files, in any process, and reloaded once per change.

use std::{path::Path, sync::Arc};

use sqlx::{PgConnection, PgPool};

use super::{
    ApplyError, HbaApplier, PoolerReload,
    files::{Previous, read_async, restore, restore_async},
    lock, reload_pooler,
    rows::tenant_secrets,
};
use crate::{
    files::{WriteOutcome, reroot},
    render::{PoolerLimits, PoolerTenant, TENANTS_FILE, render_tenants},
    settings::Settings,
};

/// PgBouncer's files that follow the control DB.
#[derive(Clone, Debug)]
pub struct PoolerFiles {
    pub hba_file: std::path::PathBuf,
    pub userlist_file: std::path::PathBuf,
    /// PgBouncer's pid file: the auth file names the process it was written for (see
    /// `pg::userlist`).
    pub pidfile: Option<std::path::PathBuf>,
    /// The per-tenant limits file and what it is made with.
    pub tenants_file: std::path::PathBuf,
    pub limits: PoolerLimits,
}

impl PoolerFiles {
    /// PgBouncer's files as `settings` place them (under `root` when given), with the limits
    /// the installed PgBouncer can enforce.
    pub fn for_settings(settings: &Settings, root: Option<&Path>) -> Self {
        let pgb = &settings.pgbouncer;
        let dir = pgb.auth_dir();
        let version =
            crate::pg::pgbouncer::find_binary().and_then(|b| crate::pg::pgbouncer::version(&b));
        let client_limits = crate::pg::pgbouncer::has_client_limits(version);
        PoolerFiles {
            hba_file: reroot(&dir.join("pgbouncer_hba.conf"), root),
            userlist_file: reroot(&dir.join("userlist.txt"), root),
            pidfile: Some(reroot(&pgb.pidfile, root)),
            tenants_file: reroot(&dir.join(TENANTS_FILE), root),
            limits: PoolerLimits::from_settings(settings, client_limits).unwrap_or_else(|_| {
                PoolerLimits {
                    server: format!("port={}", settings.postgres.port),
                    default_pool_size: pgb.default_pool_size.max(1),
                    client_limits,
                    clients_per_connection: pgb.clients_per_connection.max(1),
                }
            }),
        }
    }
}

/// A successful pooler apply, not yet committed.
#[derive(Default)]
pub struct AppliedPooler {
    previous: Previous,
    pooler: Option<Arc<dyn PoolerReload>>,
}

impl AppliedPooler {
    /// The caller's commit failed: the files as they were, and PgBouncer told (best effort; the
    /// next refresh rewrites them from the rows anyway).
    pub async fn undo(self) {
        restore_async(&self.previous).await;
        reload_pooler(&self.pooler).await.ok();
    }
}

impl HbaApplier {
    /// Rewrite PgBouncer's auth file and per-tenant limits from the rows, and reload it when
    /// either changed. Called after every create, password rotation and delete, and
    /// periodically (a tenant can change its own password).
    pub async fn refresh_pooler_users(&self, pool: &PgPool) -> Result<(), ApplyError> {
        let mut tx = pool.begin().await?;
        let applied = self.apply_pooler(&mut tx).await?;
        if let Err(e) = tx.commit().await {
            applied.undo().await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Inside the caller's transaction (a PATCH of a limit, say): write PgBouncer's auth file and
    /// per-tenant limits as `tx` sees the rows, and reload it. If the caller's commit fails,
    /// [`AppliedPooler::undo`] puts the files back.
    pub async fn apply_pooler(&self, tx: &mut PgConnection) -> Result<AppliedPooler, ApplyError> {
        let Some(files) = &self.pgbouncer else {
            return Ok(AppliedPooler::default());
        };
        lock(tx).await?;
        let secrets = tenant_secrets(&mut *tx).await?;
        let existing = read_async(&files.userlist_file).await?;
        let userlist = self.userlist(files, &secrets, existing.as_deref());
        let tenants = self.pooler_tenants(&mut *tx, &secrets).await?;
        let limits = render_tenants(&tenants, &files.limits);
        let previous = vec![
            (files.userlist_file.clone(), existing),
            (
                files.tenants_file.clone(),
                read_async(&files.tenants_file).await?,
            ),
        ];
        let owner = self.owner();
        let writes = vec![
            (files.userlist_file.clone(), userlist),
            (files.tenants_file.clone(), limits),
        ];
        let restore_on_error = previous.clone();
        let changed = super::files::blocking(move || {
            let mut changed = false;
            for (path, text) in &writes {
                match owner.write(path, text) {
                    Ok(outcome) => changed |= outcome == WriteOutcome::Changed,
                    Err(e) => {
                        restore(&restore_on_error);
                        return Err(e);
                    }
                }
            }
            Ok(changed)
        })
        .await?;
        if changed {
            if let Err(e) = reload_pooler(&self.pooler).await {
                restore_async(&previous).await;
                reload_pooler(&self.pooler).await.ok();
                return Err(e);
            }
        }
        Ok(AppliedPooler {
            previous,
            pooler: self.pooler.clone(),
        })
    }

    /// Every tenant whose role is in the auth file, with its limit.
    pub async fn pooler_tenants(
        &self,
        tx: &mut PgConnection,
        secrets: &[(String, String)],
    ) -> Result<Vec<PoolerTenant>, ApplyError> {
        let rows: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT database_name, username, max_connections FROM databases
             WHERE status <> 'deleting'
             UNION ALL
             SELECT x.name, d.username, d.max_connections
             FROM tenant_databases x JOIN databases d ON d.id = x.database_id
             WHERE d.status <> 'deleting'
             ORDER BY 1",
        )
        .fetch_all(&mut *tx)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, role, _)| secrets.iter().any(|(r, _)| r == role))
            .map(|(database, role, n)| PoolerTenant {
                database,
                role,
                max_connections: u32::try_from(n).unwrap_or(1),
            })
            .collect())
    }

    /// The auth file for these tenant verifiers, given the file as it is now.
    pub fn userlist(
        &self,
        files: &PoolerFiles,
        secrets: &[(String, String)],
        existing: Option<&str>,
    ) -> String {
        let process = files
            .pidfile
            .as_deref()
            .and_then(crate::pg::userlist::process_identity);
        crate::pg::userlist::Userlist {
            console_users: &self.base.pooler_admins,
            secrets,
            existing,
            process: process.as_deref(),
        }
        .render()
    }
}
