//! API keys in the control DB (`api_keys`): creation (the plaintext is returned once and only its
//! SHA-256 stored), listing, revocation, and the per-request lookup by public prefix.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
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
    let mut conn = pool.acquire().await?;
    create_in(&mut conn, name, scopes, expires_at).await
}

/// [`create`] on a given connection, so the API can write the audit row in the same transaction.
pub async fn create_in(
    conn: &mut PgConnection,
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
        .execute(&mut *conn)
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

/// What authentication needs to know about a key, found by its public prefix.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredKey {
    pub id: Uuid,
    pub key_hash: Vec<u8>,
    pub permissions: sqlx::types::Json<Vec<Scope>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The key with this prefix, revoked and expired ones included (the caller says why it refuses).
pub async fn find_by_prefix(pool: &PgPool, prefix: &str) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, key_hash, permissions, expires_at, revoked_at FROM api_keys WHERE key_prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await
}

/// Record a use. The guard in SQL keeps this to one write a minute per key even when several API
/// processes share the control DB.
pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, key_prefix, permissions, created_at, expires_at, last_used_at, revoked_at
         FROM api_keys WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Live keys holding `admin`, locked until the transaction ends so two concurrent revocations
/// cannot both see "another admin key remains".
pub async fn lock_live_admin_ids(conn: &mut PgConnection) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM api_keys
         WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
           AND permissions ? 'admin'
         ORDER BY id FOR UPDATE",
    )
    .fetch_all(conn)
    .await
}

/// Revoke a live key; false when it was already revoked (or does not exist).
pub async fn revoke(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

// ---------------------------------------------------------------------------------------------
// Finding a key by what an operator types (for `pgaas key revoke`). Kept in its own block:
// other callers add functions above.

/// A key as an operator names it: its id, or the public prefix `pgaas key list` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySelector {
    Id(Uuid),
    Prefix(String),
}

impl KeySelector {
    /// A UUID, an 8-hex-digit prefix (with or without `pgaas_`), or a whole key (only its
    /// prefix is used, so a leaked key can be revoked by pasting it).
    pub fn parse(s: &str) -> Option<Self> {
        use crate::model::api_key::{API_KEY_PREFIX_LEN, API_KEY_TAG};
        let s = s.trim();
        if let Ok(id) = Uuid::try_parse(s) {
            return Some(Self::Id(id));
        }
        let rest = s.strip_prefix(API_KEY_TAG).unwrap_or(s);
        let prefix = rest.get(..API_KEY_PREFIX_LEN)?;
        let tail_ok = rest.len() == prefix.len() || rest[prefix.len()..].starts_with('_');
        let hex = prefix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (hex && tail_ok).then(|| Self::Prefix(prefix.to_string()))
    }
}

/// The id of the key an operator named, if any.
pub async fn find_id(
    conn: &mut PgConnection,
    which: &KeySelector,
) -> Result<Option<Uuid>, sqlx::Error> {
    match which {
        KeySelector::Id(id) => {
            sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
                .await
        }
        KeySelector::Prefix(p) => {
            sqlx::query_scalar("SELECT id FROM api_keys WHERE key_prefix = $1")
                .bind(p)
                .fetch_optional(conn)
                .await
        }
    }
}

#[cfg(test)]
mod key_selector_tests {
    use super::KeySelector;

    #[test]
    fn operators_name_keys_by_id_prefix_or_whole_key() {
        let id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        assert_eq!(
            KeySelector::parse(id),
            Some(KeySelector::Id(id.parse().unwrap()))
        );
        let p = Some(KeySelector::Prefix("abcdef12".into()));
        assert_eq!(KeySelector::parse("abcdef12"), p);
        assert_eq!(KeySelector::parse("pgaas_abcdef12"), p);
        assert_eq!(KeySelector::parse(" pgaas_abcdef12_secretpart\n"), p);
        for bad in [
            "",
            "abc",
            "ABCDEF12",
            "abcdef123",
            "abcdef1g",
            "pgaas_",
            "' OR 1=1 --",
        ] {
            assert_eq!(KeySelector::parse(bad), None, "{bad:?}");
        }
    }
}
