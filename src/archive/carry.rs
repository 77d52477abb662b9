//! What a database is besides its data, carried from the database an in-place restore replaces
//! to the one that takes its name: owner, connection limit, whether it takes connections (a
//! quota's `blocked`), its privileges, and every setting made with `ALTER DATABASE ... SET` or
//! `ALTER ROLE ... IN DATABASE ... SET` (a quota's read-only default among them). A restore
//! loads data only; without this the replaced database's limits and settings would be gone
//! until the next guard pass, and some (the tenant's own settings) for good.

use sqlx::{Executor, PgConnection};

use super::ArchiveError;
use crate::pg::quote::quote_ident;

/// The properties of a database that are not in a dump of it, read before it is closed.
#[derive(Debug)]
pub(super) struct Properties {
    owner: String,
    connection_limit: i32,
    /// `false` for a database blocked by its quota: it stays blocked once replaced.
    pub allow_connections: bool,
}

fn ident(name: &str) -> Result<String, ArchiveError> {
    quote_ident(name).map_err(|e| ArchiveError::Invalid(e.to_string()))
}

/// Read `name`'s properties; call it before the restore closes the database.
pub(super) async fn read(conn: &mut PgConnection, name: &str) -> Result<Properties, ArchiveError> {
    let (owner, connection_limit, allow_connections): (String, i32, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(datdba)::text, datconnlimit, datallowconn
         FROM pg_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Properties {
        owner,
        connection_limit,
        allow_connections,
    })
}

/// Give `to` the properties of `from` (`props`, read before `from` was closed), in the caller's
/// transaction, so the replaced database never shows without them.
pub(super) async fn carry(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
    props: &Properties,
) -> Result<(), ArchiveError> {
    let to_q = ident(to)?;
    let owner_q = ident(&props.owner)?;
    for stmt in [
        format!("ALTER DATABASE {to_q} OWNER TO {owner_q}"),
        format!(
            "ALTER DATABASE {to_q} CONNECTION LIMIT {}",
            props.connection_limit
        ),
    ] {
        conn.execute(stmt.as_str()).await?;
    }
    if !props.allow_connections {
        conn.execute(format!("ALTER DATABASE {to_q} ALLOW_CONNECTIONS false").as_str())
            .await?;
    }
    // Privileges beyond the owner's (the new database was made closed to PUBLIC, as tenant
    // databases are), granted by statement so PostgreSQL records the grantees' dependencies.
    let grants: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END,
                a.privilege_type
         FROM pg_database d, aclexplode(d.datacl) a
         WHERE d.datname = $1 AND a.grantee <> d.datdba",
    )
    .bind(from)
    .fetch_all(&mut *conn)
    .await?;
    for (grantee, privilege) in grants {
        let grantee = match grantee {
            Some(role) => ident(&role)?,
            None => "PUBLIC".to_string(),
        };
        // privilege_type is one of PostgreSQL's own keywords (CONNECT, CREATE, TEMPORARY).
        if !privilege.chars().all(|c| c.is_ascii_uppercase()) {
            continue;
        }
        conn.execute(format!("GRANT {privilege} ON DATABASE {to_q} TO {grantee}").as_str())
            .await?;
    }
    // Settings are copied row for row rather than re-set: `setconfig` holds them exactly as
    // PostgreSQL stored them, where re-issuing `SET name = value` would have to re-quote list
    // values such as search_path the way pg_dump does. A superuser may write this catalog
    // (ON CONFLICT is not allowed on catalogs, hence the DELETE).
    sqlx::query(
        "DELETE FROM pg_db_role_setting
         WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind(to)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO pg_db_role_setting (setdatabase, setrole, setconfig)
         SELECT (SELECT oid FROM pg_database WHERE datname = $2), s.setrole, s.setconfig
         FROM pg_db_role_setting s
         WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
