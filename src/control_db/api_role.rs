//! Whether the API role holds more than it needs. Whatever reaches the API role's session
//! (a bug in the API, a stolen password file) has what the role has, so `pgaas status` and
//! `pgaas doctor` both check it: no SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS, no ADMIN
//! option on any role, and no membership, direct or through other roles, beyond the few
//! predefined roles bootstrap grants, the tenant group and tenant roles. A role such as
//! `pg_execute_server_program` reached by any path is a shell as the server's OS user.

use serde::Serialize;
use sqlx::PgConnection;

use crate::model::{RoleName, TENANT_GROUP};

/// The predefined roles bootstrap grants the API (`pg_use_reserved_connections` exists on 16+).
pub const ALLOWED_PREDEFINED: [&str; 3] = [
    "pg_read_all_stats",
    "pg_signal_backend",
    "pg_use_reserved_connections",
];

/// One thing the API role holds that it must not, and what the operator runs about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiRoleProblem {
    pub what: String,
    pub todo: String,
}

#[derive(sqlx::FromRow)]
struct Reached {
    name: String,
    privileged: bool,
    in_group: bool,
}

/// Every problem with the API role `api`; empty when it holds only what it needs. Reads only
/// catalogs every role may read, so it runs as the API role or as the superuser.
pub async fn check(conn: &mut PgConnection, api: &str) -> Result<Vec<ApiRoleProblem>, sqlx::Error> {
    let mut problems = Vec::new();
    let reinstall =
        "run `pgaas install` again (it takes back what earlier releases gave the API role)";
    let attrs: Option<(bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = $1",
    )
    .bind(api)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((superuser, createrole, replication, bypassrls)) = attrs else {
        problems.push(ApiRoleProblem {
            what: format!("the API role {api} does not exist"),
            todo: "run `pgaas install` (it creates the API role)".into(),
        });
        return Ok(problems);
    };
    for (held, attr) in [
        (superuser, "SUPERUSER"),
        (createrole, "CREATEROLE"),
        (replication, "REPLICATION"),
        (bypassrls, "BYPASSRLS"),
    ] {
        if held {
            problems.push(ApiRoleProblem {
                what: format!("the API role {api} has {attr}"),
                todo: format!("as the superuser: ALTER ROLE \"{api}\" NO{attr}; or {reinstall}"),
            });
        }
    }
    let admin_of: Vec<String> = sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
         WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1) AND m.admin_option
         ORDER BY 1",
    )
    .bind(api)
    .fetch_all(&mut *conn)
    .await?;
    for role in admin_of {
        problems.push(ApiRoleProblem {
            what: format!("the API role {api} holds ADMIN OPTION on role {role}"),
            todo: format!(
                "as the superuser: REVOKE ADMIN OPTION FOR \"{role}\" FROM \"{api}\"; or {reinstall}"
            ),
        });
    }
    // Every role whose privileges the API role has or may SET ROLE to, by any path.
    let reached: Vec<Reached> = sqlx::query_as(
        "WITH RECURSIVE reach(oid) AS (
           SELECT m.roleid FROM pg_auth_members m
           WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)
           UNION
           SELECT m.roleid FROM pg_auth_members m JOIN reach ON m.member = reach.oid
         )
         SELECT r.rolname::text AS name,
                (r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls) AS privileged,
                EXISTS (SELECT 1 FROM pg_auth_members g
                        WHERE g.member = r.oid
                          AND g.roleid = (SELECT oid FROM pg_roles WHERE rolname = $2)) AS in_group
         FROM pg_roles r JOIN reach ON reach.oid = r.oid
         ORDER BY 1",
    )
    .bind(api)
    .bind(TENANT_GROUP)
    .fetch_all(&mut *conn)
    .await?;
    for r in reached {
        if let Some(why) = excess(&r) {
            problems.push(ApiRoleProblem {
                what: format!(
                    "the API role {api} is a member of role {} ({why}), directly or through \
                     another role",
                    r.name
                ),
                todo: format!(
                    "as the superuser: REVOKE \"{}\" FROM \"{api}\" (or from the role it reaches \
                     it through: see pg_auth_members), then check what used it",
                    r.name
                ),
            });
        }
    }
    Ok(problems)
}

/// Why membership in a reached role is too much, or `None` when the API may hold it.
fn excess(r: &Reached) -> Option<&'static str> {
    if r.privileged {
        return Some("it has SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS");
    }
    if ALLOWED_PREDEFINED.contains(&r.name.as_str()) || r.name == TENANT_GROUP {
        return None;
    }
    if RoleName::parse(&r.name).is_ok() && r.in_group {
        return None;
    }
    Some("not a role the API needs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reached(name: &str, privileged: bool, in_group: bool) -> Reached {
        Reached {
            name: name.into(),
            privileged,
            in_group,
        }
    }

    #[test]
    fn only_the_needed_roles_pass() {
        for ok in [
            reached("pg_read_all_stats", false, false),
            reached("pg_signal_backend", false, false),
            reached("pg_use_reserved_connections", false, false),
            reached(TENANT_GROUP, false, false),
            reached("tenant_0123456789abcdef", false, true),
            reached("user_0123abcd", false, true),
        ] {
            assert_eq!(excess(&ok), None, "{}", ok.name);
        }
        for bad in [
            reached("pg_execute_server_program", false, false),
            reached("pg_write_server_files", false, false),
            reached("pg_read_all_data", false, false),
            reached("pg_monitor", false, false),
            reached("postgres", true, false),
            // Tenant-named but not a tenant: outside the group, or privileged.
            reached("tenant_0123456789abcdef", false, false),
            reached("tenant_0123456789abcdef", true, true),
            reached("tenant_0123456789ABCDEF", false, true),
        ] {
            assert!(excess(&bad).is_some(), "{} passed", bad.name);
        }
    }
}
