//! Tenant role DDL, as calls of the control DB's `pgaas_priv` functions: the API role holds no
//! CREATEROLE, and those superuser-owned functions change nothing but tenant roles (see
//! `control_db::privileged`). Names and verifiers travel as bound parameters, never as SQL text.

use sqlx::PgConnection;

use super::TenantError;
use crate::{model::TenantId, pg::quote::quote_literal};

use super::row::ownership_comment;

/// The statement that makes a tenant's login role (its SCRAM verifier, connection limit and
/// ownership mark), in the tenant group, with the API role a member of it. As text, for
/// [`super::ProvisionDdl`] (the provisioning bench runs the same statement).
pub(super) fn create_statement(
    id: TenantId,
    role: &str,
    max: i32,
    verifier: &str,
) -> Result<String, TenantError> {
    Ok(format!(
        "SELECT pgaas_priv.create_tenant_role({}, {}, {max}, {})",
        quote_literal(role)?,
        quote_literal(verifier)?,
        quote_literal(&ownership_comment(id))?
    ))
}

pub(super) async fn set_connection_limit(
    conn: &mut PgConnection,
    role: &str,
    max: i32,
) -> Result<(), TenantError> {
    sqlx::query("SELECT pgaas_priv.set_tenant_connection_limit($1, $2)")
        .bind(role)
        .bind(max)
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn set_password(
    conn: &mut PgConnection,
    role: &str,
    verifier: &str,
) -> Result<(), TenantError> {
    sqlx::query("SELECT pgaas_priv.set_tenant_password($1, $2)")
        .bind(role)
        .bind(verifier)
        .execute(conn)
        .await?;
    Ok(())
}

/// `ALTER ROLE role [IN DATABASE database] RESET setting`.
pub(super) async fn reset_setting(
    conn: &mut PgConnection,
    role: &str,
    database: Option<&str>,
    setting: &str,
) -> Result<(), TenantError> {
    sqlx::query("SELECT pgaas_priv.reset_tenant_setting($1, $2, $3)")
        .bind(role)
        .bind(database)
        .bind(setting)
        .execute(conn)
        .await?;
    Ok(())
}

/// Drop the tenant's role if it exists and carries this tenant's ownership mark (the function
/// refuses one that does not); whether it existed.
pub(super) async fn drop_role(
    conn: &mut PgConnection,
    id: TenantId,
    role: &str,
) -> Result<bool, TenantError> {
    Ok(
        sqlx::query_scalar("SELECT pgaas_priv.drop_tenant_role($1, $2)")
            .bind(role)
            .bind(ownership_comment(id))
            .fetch_one(conn)
            .await?,
    )
}
