//! Which databases a backup or restore is about: the control DB, or a tenant named by id or by
//! database name. Read from the control DB as the superuser over the local socket, so the timer
//! (running as the cluster's OS user) needs no copy of the API's password.

use serde::Serialize;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use super::BackupError;
use crate::{model::TenantId, settings::Settings};

/// A database to back up or restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub database: String,
    /// `None` for the control DB.
    pub tenant: Option<TenantId>,
    /// The role that owns the database (a restore `--into` a new database gives it the same).
    pub owner: String,
}

/// How the superuser reaches `database`: the local socket, by peer.
pub fn superuser_options(settings: &Settings, database: &str) -> PgConnectOptions {
    let pg = &settings.postgres;
    PgConnectOptions::new()
        .socket(&pg.socket_dir)
        .port(pg.port)
        .username(&pg.superuser)
        .database(database)
        .application_name("pgaas-backup")
}

/// A superuser connection over the local socket, by peer.
pub async fn superuser_connect(
    settings: &Settings,
    database: &str,
) -> Result<PgConnection, BackupError> {
    PgConnection::connect_with(&superuser_options(settings, database))
        .await
        .map_err(|source| BackupError::Connect {
            socket: settings.postgres.socket_dir.clone(),
            source,
        })
}

#[derive(sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    database_name: String,
    username: String,
    status: String,
}

impl Row {
    fn target(self) -> Target {
        Target {
            database: self.database_name,
            tenant: Some(TenantId::from_uuid(self.id)),
            owner: self.username,
        }
    }
}

const SELECT: &str = "SELECT id, database_name, username, status::text AS status FROM databases";

/// The control DB as a target (its owner read from the catalog).
pub async fn control(conn: &mut PgConnection, settings: &Settings) -> Result<Target, BackupError> {
    let name = &settings.control_db.name;
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Target {
        database: name.clone(),
        tenant: None,
        owner: owner.unwrap_or_else(|| settings.control_db.user.clone()),
    })
}

/// `conn` is a superuser connection to the control DB. A tenant must not be mid-provisioning
/// or mid-deletion: its database is then either not there yet or going away.
pub async fn resolve(
    conn: &mut PgConnection,
    settings: &Settings,
    id_or_name: &str,
) -> Result<Target, BackupError> {
    if id_or_name == settings.control_db.name {
        return control(conn, settings).await;
    }
    // A tenant id, or else a database name: the two never look alike.
    let id = id_or_name.parse::<TenantId>().ok().map(|id| *id.as_uuid());
    let row: Option<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE id = $1 OR ($1 IS NULL AND database_name = $2)"
    ))
    .bind(id)
    .bind(id_or_name)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or_else(|| BackupError::UnknownDatabase(id_or_name.to_string()))?;
    if !matches!(row.status.as_str(), "active" | "suspended") {
        return Err(BackupError::State(format!(
            "{} is {}; its database is not usable now. Run `pgaas doctor` to finish or undo the stuck work",
            row.database_name, row.status
        )));
    }
    Ok(row.target())
}

/// The control DB first, then every tenant whose database is in use (active or suspended),
/// oldest first.
pub async fn all(conn: &mut PgConnection, settings: &Settings) -> Result<Vec<Target>, BackupError> {
    let mut out = vec![control(conn, settings).await?];
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE status::text IN ('active', 'suspended') ORDER BY created_at, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    out.extend(rows.into_iter().map(Row::target));
    Ok(out)
}
