//! `pgaas key create|list|revoke`: API keys from the host's shell. A new key is printed once
//! (only its SHA-256 is stored); listings show the public prefix, never a secret. Creating and
//! revoking write an audit row in the same transaction, with the CLI as the actor. Also the
//! plain-text table layout the operator commands share.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    control_db::api_keys::{self, ApiKeyRow, KeySelector},
    model::Scope,
    tenant::{AuditContext, audit},
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Issue a key; it is printed once and cannot be shown again.
    Create(CreateArgs),
    /// Every key with its prefix, scopes and state.
    List(ListArgs),
    /// Revoke a key by id or prefix (as `key list` shows it); idempotent.
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A label saying who or what uses the key.
    #[arg(long)]
    pub name: String,
    /// What the key may do (repeatable): read, write (includes read), admin (includes write).
    #[arg(long = "scope", value_name = "SCOPE", default_value = "read")]
    pub scopes: Vec<Scope>,
    /// Refuse the key after this many days (default: never expires).
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub expires_in_days: Option<u32>,
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The key's id, or its 8-hex-digit prefix (`pgaas_<prefix>_...`).
    #[arg(value_name = "ID_OR_PREFIX")]
    pub key: String,
}

pub fn run(config: super::Sources, cmd: Command) -> anyhow::Result<ExitCode> {
    super::with_control_db(config, |_settings, pool| async move {
        let result = match cmd {
            Command::Create(a) => create(&pool, a).await,
            Command::List(a) => list(&pool, a).await,
            Command::Revoke(a) => revoke(&pool, a).await,
        };
        result.context("is PostgreSQL running and the settings file right? `pgaas doctor` checks")
    })
}

async fn create(pool: &sqlx::PgPool, a: CreateArgs) -> anyhow::Result<ExitCode> {
    if a.name.trim().is_empty() || a.name.chars().count() > 100 {
        eprintln!("error: --name must be 1 to 100 characters");
        return Ok(ExitCode::from(2));
    }
    let mut scopes = a.scopes.clone();
    scopes.sort();
    scopes.dedup();
    let expires_at = a
        .expires_in_days
        .map(|d| Utc::now() + chrono::Duration::days(i64::from(d)));
    let mut tx = pool.begin().await?;
    let (id, key) = api_keys::create_in(&mut tx, a.name.trim(), &scopes, expires_at).await?;
    let details = json!({ "name": a.name.trim(), "scopes": scopes, "expires_at": expires_at });
    let id_text = id.to_string();
    audit::record(
        &mut tx,
        &AuditContext::cli(),
        "api_key.create",
        "api_key",
        Some(&id_text),
        true,
        details,
    )
    .await?;
    tx.commit().await?;
    if a.json {
        let out = json!({ "id": id, "name": a.name.trim(), "key": key.expose(), "scopes": scopes, "expires_at": expires_at });
        println!("{out:#}");
    } else {
        println!("{}", key.expose());
    }
    eprintln!(
        "API key {id} ({}) created. It is shown only this once: pgaas stores only its hash. \
         Send it as `X-API-Key: <key>` or `Authorization: Bearer <key>`.",
        scope_list(&scopes)
    );
    Ok(ExitCode::SUCCESS)
}

async fn list(pool: &sqlx::PgPool, a: ListArgs) -> anyhow::Result<ExitCode> {
    let keys = api_keys::list(pool).await?;
    let now = Utc::now();
    if a.json {
        let data: Vec<_> = keys
            .iter()
            .map(|k| {
                let mut v = serde_json::to_value(k).unwrap_or_default();
                v["state"] = json!(state(k, now));
                v
            })
            .collect();
        println!("{:#}", json!({ "count": keys.len(), "data": data }));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 8]> = keys
        .iter()
        .map(|k| {
            [
                k.id.to_string(),
                format!("pgaas_{}", k.key_prefix),
                k.name.clone(),
                scope_list(&k.permissions.0),
                state(k, now).to_string(),
                time(Some(k.created_at)),
                time(k.expires_at),
                time(k.last_used_at),
            ]
        })
        .collect();
    let header = [
        "ID",
        "PREFIX",
        "NAME",
        "SCOPES",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ];
    print!("{}", super::table(&header, &rows));
    println!("{} key(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}

async fn revoke(pool: &sqlx::PgPool, a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let Some(which) = KeySelector::parse(&a.key) else {
        eprintln!(
            "error: {:?} is neither a key id nor a key prefix; `pgaas key list` shows both",
            a.key
        );
        return Ok(ExitCode::from(2));
    };
    let mut tx = pool.begin().await?;
    let found = match api_keys::find_id(&mut tx, &which).await? {
        Some(id) => api_keys::get(&mut tx, id).await?,
        None => None,
    };
    let Some(key) = found else {
        eprintln!(
            "error: no API key {}; `pgaas key list` shows them",
            a.key.trim()
        );
        return Ok(ExitCode::from(2));
    };
    if key.revoked_at.is_some() {
        println!(
            "key {} (pgaas_{}) was already revoked at {}",
            key.id,
            key.key_prefix,
            time(key.revoked_at)
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Same rule as the API: never leave the platform without a live admin key.
    let admins = api_keys::lock_live_admin_ids(&mut tx).await?;
    if admins == [key.id] {
        eprintln!(
            "error: {} is the last live admin key; create another first with \
             `pgaas key create --name NAME --scope admin`, then revoke this one",
            key.id
        );
        return Ok(ExitCode::from(1));
    }
    api_keys::revoke(&mut tx, key.id).await?;
    let details = json!({ "name": key.name, "key_prefix": key.key_prefix });
    let id_text = key.id.to_string();
    audit::record(
        &mut tx,
        &AuditContext::cli(),
        "api_key.revoke",
        "api_key",
        Some(&id_text),
        true,
        details,
    )
    .await?;
    tx.commit().await?;
    println!(
        "revoked key {} (pgaas_{}, {})",
        key.id, key.key_prefix, key.name
    );
    Ok(ExitCode::SUCCESS)
}

fn state(k: &ApiKeyRow, now: DateTime<Utc>) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

fn scope_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use crate::cli::table;

    #[test]
    fn table_columns_line_up_with_wide_characters() {
        let rows = [
            ["1".to_string(), "Café".to_string()],
            ["22".to_string(), "x".to_string()],
        ];
        assert_eq!(table(&["ID", "NAME"], &rows), "ID  NAME\n1   Café\n22  x\n");
    }
}
