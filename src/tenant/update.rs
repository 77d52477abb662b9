//! Changing a tenant: its labels and connection limit (PATCH), and its password.

use serde_json::json;
use sqlx::Executor;

use super::row::{BCRYPT_COST, SELECT_TENANT, TenantRow, ident};
use super::{AuditContext, Tenant, TenantError, TenantPatch, TenantService, audit};
use crate::{
    model::{TenantId, TenantPassword},
    pg::scram,
};

impl TenantService {
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
        let max_size = patch
            .max_size_mb
            .map(|n| self.check_max_size(n))
            .transpose()?;
        let _gate = self.gate(id).await?;
        let mut tx = self.pool.begin().await?;
        let before = self.lock_active(&mut tx, id).await?;
        // The statements that may wait on the tenant's own locks come first, while this request
        // holds nothing another tenant's request needs: the host-wide budget and access-file
        // locks are taken last, each for milliseconds.
        if let Some(n) = max {
            super::roles::set_connection_limit(&mut tx, before.username.as_str(), n).await?;
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
                    max_connections = COALESCE($4, max_connections), max_size_mb = COALESCE($5, max_size_mb)
             WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(patch.friendly_name.as_ref().map(|f| f.as_str()))
        .bind(patch.owner_email.as_ref().map(|e| e.as_str()))
        .bind(max)
        .bind(max_size)
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
        if let Some(n) = max_size {
            changed.insert("max_size_mb".into(), json!(n));
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
        // The pooler's limits change with the row: written and reloaded inside this transaction,
        // put back if it does not commit.
        if let Some(n) = max
            && n > before.max_connections
        {
            // Room for the new limit, with the tenant's old one given back; checked before
            // anything outside the transaction changes, so a refusal changes nothing. A lower
            // limit only gives room back: it is never refused, so a host over its budget (its
            // max_connections lowered, say) has a way back.
            self.reserve_connections(&mut tx, Some(id), n).await?;
        }
        let pooler = match (&self.hba, max) {
            (Some(applier), Some(_)) => Some(applier.apply_pooler(&mut tx).await?),
            _ => None,
        };
        if let Err(e) = tx.commit().await {
            if let Some(p) = pooler {
                p.undo().await;
            }
            return Err(e.into());
        }
        let tenant: Tenant = row.try_into()?;
        if max_size.is_some() {
            // A new quota is enforced (or lifted) now, not at the next size pass.
            self.enforce_quota(&tenant).await?;
        }
        Ok(self.get(id).await.unwrap_or(tenant))
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
            Ok::<_, TenantError>((
                scram::scram_sha256_verifier(&pw).map_err(TenantError::hash)?,
                bcrypt::hash(&pw, BCRYPT_COST).map_err(TenantError::hash)?,
            ))
        })
        .await
        .map_err(TenantError::hash)??;
        let _gate = self.gate(id).await?;
        let mut tx = self.pool.begin().await?;
        let tenant = self.lock_active(&mut tx, id).await?;
        super::roles::set_password(&mut tx, tenant.username.as_str(), &verifier).await?;
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
}
