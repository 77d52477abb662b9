//! API keys in the control DB (`api_keys`): creation (the plaintext is returned once and only its
//! SHA-256 stored), listing, revocation, and the per-request lookup by public prefix.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    model::{ApiKey, Scope},
    settings::Secret,
};

/// A key as listed: never its hash, never its plaintext.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub name: String,
    pub key_prefix: String,
    pub permissions: sqlx::types::Json<Vec<Scope>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Create a key; returns its id and the plaintext (to be shown once).
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<(Uuid, Secret), sqlx::Error> {
    // A prefix collision (32 bits) is possible in principle: draw again.
    for _ in 0..5 {
        let (plain, record) = ApiKey::generate();
        let id = Uuid::new_v4();
        let inserted = sqlx::query(
            "INSERT INTO api_keys (id, name, key_prefix, key_hash, permissions, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT ON CONSTRAINT api_keys_key_prefix_key DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(&record.prefix)
        .bind(record.hash.as_slice())
        .bind(sqlx::types::Json(scopes))
        .bind(expires_at)
        .execute(pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok((id, Secret::new(plain.expose())));
        }
    }
    Err(sqlx::Error::Protocol(
        "could not find a free API key prefix".into(),
    ))
}

/// The first key of a fresh platform: every scope, no expiry.
pub async fn create_admin_key(pool: &PgPool, name: &str) -> Result<Secret, sqlx::Error> {
    Ok(create(pool, name, &[Scope::Admin], None).await?.1)
}

/// Keys that are neither revoked nor expired.
pub async fn count_active(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM api_keys
         WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, key_prefix, permissions, created_at, expires_at, last_used_at, revoked_at
         FROM api_keys ORDER BY created_at DESC, id",
    )
    .fetch_all(pool)
    .await
}
