//! Turning typed rules into pg_hba.conf, pg_ident.conf and pgbouncer_hba.conf text. Both parsers
//! split on blanks, treat `#` as a comment and give `all`, `+name` and `@file` special meaning
//! unless quoted, so names are double-quoted when they need it; what a dialect cannot express at
//! all (a `"` or a control character in a name, groups and ident maps in PgBouncer) is refused.

use serde::Serialize;

use super::RenderError;
use crate::model::hba::{ConnKind, HbaAddress, HbaError, HbaMethod, HbaName, HbaPolicy, HbaRule};

/// The pg_ident map that lets named OS users in as the superuser (`hba::compile` names it in
/// the superuser's rule).
pub const PEER_MAP: &str = "pgaas_admin";

/// Which program reads the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    PgBouncer,
}

impl Dialect {
    fn label(self) -> &'static str {
        match self {
            Dialect::Postgres => "pg_hba.conf",
            Dialect::PgBouncer => "pgbouncer_hba.conf",
        }
    }
}

/// Words with a meaning of their own in the database or user column.
const KEYWORDS: &[&str] = &["all", "sameuser", "samerole", "samegroup", "replication"];

/// One rendered line, columns already padded so the file reads as a table.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HbaLine {
    pub comment: String,
    pub kind: String,
    pub database: String,
    pub user: String,
    pub address: String,
    pub method: String,
}

#[derive(Serialize)]
struct HbaContext {
    generation: u64,
    file: &'static str,
    /// The rule lines, laid out here rather than looped over in the template: with ten thousand
    /// tenants the file has ten thousand lines, and the apply path renders it on every change.
    body: String,
}

#[derive(Serialize)]
struct IdentContext {
    generation: u64,
    /// `(map, system user, database user)`, each already quoted.
    mappings: Vec<[String; 3]>,
}

fn name_error(what: &'static str, value: &str, dialect: Dialect, reason: &'static str) -> HbaError {
    HbaError::Name {
        what,
        value: value.to_string(),
        dialect: dialect.label(),
        reason,
    }
}

/// A database or role name as one column token, double-quoted when it would otherwise be
/// split, commented out, or read as a keyword, group or file inclusion.
fn name_token(what: &'static str, value: &str, dialect: Dialect) -> Result<String, HbaError> {
    if value.is_empty() {
        return Err(name_error(what, value, dialect, "it is empty"));
    }
    if value.len() > crate::pg::quote::MAX_IDENTIFIER_BYTES {
        return Err(name_error(
            what,
            value,
            dialect,
            "it is longer than 63 bytes",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(name_error(
            what,
            value,
            dialect,
            "it contains a control character (newline, NUL, ...)",
        ));
    }
    if value.contains(['"', '\\']) {
        // pg_hba treats a trailing backslash as a line continuation even inside quotes, and the
        // two parsers disagree on embedded quotes; pgaas never creates such names.
        return Err(name_error(
            what,
            value,
            dialect,
            "it contains a double quote or a backslash",
        ));
    }
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        && !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(value));
    Ok(if plain {
        value.to_string()
    } else {
        format!("\"{value}\"")
    })
}

fn column(what: &'static str, names: &[HbaName], dialect: Dialect) -> Result<String, HbaError> {
    let mut tokens = Vec::with_capacity(names.len());
    for n in names {
        tokens.push(match n {
            HbaName::All => "all".to_string(),
            HbaName::Replication if what == "database" && dialect == Dialect::Postgres => {
                "replication".to_string()
            }
            HbaName::Replication => {
                return Err(HbaError::Unsupported {
                    construct: format!("replication in the {what} column"),
                    dialect: dialect.label(),
                });
            }
            // In the user column PgBouncer would read it as a keyword too, PostgreSQL as a name:
            // the two files would disagree, so it is only written where both mean the same.
            HbaName::SameUser if what == "database" => "sameuser".to_string(),
            HbaName::SameUser => {
                return Err(HbaError::Unsupported {
                    construct: format!("sameuser in the {what} column"),
                    dialect: dialect.label(),
                });
            }
            HbaName::Name(v) => name_token(what, v, dialect)?,
            HbaName::Group(g) => {
                if dialect == Dialect::PgBouncer {
                    return Err(HbaError::Unsupported {
                        construct: format!("group +{g}"),
                        dialect: dialect.label(),
                    });
                }
                // A quoted `+"x"` is a role literally named `+x`, so a group name must be plain.
                let t = name_token(what, g, dialect)?;
                if t.starts_with('"') {
                    return Err(name_error(
                        what,
                        g,
                        dialect,
                        "a group name must need no quoting",
                    ));
                }
                format!("+{t}")
            }
        });
    }
    if tokens.is_empty() {
        return Err(HbaError::Unsupported {
            construct: format!("an empty {what} list"),
            dialect: dialect.label(),
        });
    }
    Ok(tokens.join(","))
}

fn method(m: &HbaMethod, dialect: Dialect) -> Result<String, HbaError> {
    match (m, dialect) {
        (HbaMethod::Peer { map: Some(map) }, Dialect::PgBouncer) => Err(HbaError::Unsupported {
            construct: format!("peer map={map}"),
            dialect: dialect.label(),
        }),
        (HbaMethod::Peer { map: Some(map) }, _) => {
            let t = name_token("ident map", map, dialect)?;
            if t.starts_with('"') {
                return Err(name_error(
                    "ident map",
                    map,
                    dialect,
                    "a map name must need no quoting",
                ));
            }
            Ok(m.to_string())
        }
        _ => Ok(m.to_string()),
    }
}

/// The lines of a rule list in `dialect`, unpadded. PgBouncer has no `all` address keyword, so an
/// `all` rule becomes one IPv4 and one IPv6 line.
pub fn format_rules(rules: &[HbaRule], dialect: Dialect) -> Result<Vec<HbaLine>, HbaError> {
    let mut lines = Vec::new();
    for (index, r) in rules.iter().enumerate() {
        let addresses: Vec<String> = match (r.kind, r.address) {
            (ConnKind::Local, None) => vec![String::new()],
            (ConnKind::Local, Some(_)) => {
                return Err(HbaError::Malformed {
                    index,
                    reason: "a local rule takes no address",
                });
            }
            (_, None) => {
                return Err(HbaError::Malformed {
                    index,
                    reason: "a host rule needs an address",
                });
            }
            (_, Some(HbaAddress::Net(net))) => {
                vec![crate::model::hba::check_network(net)?.to_string()]
            }
            (_, Some(HbaAddress::All)) => match dialect {
                Dialect::Postgres => vec!["all".into()],
                Dialect::PgBouncer => vec!["0.0.0.0/0".into(), "::/0".into()],
            },
        };
        let database = column("database", &r.databases, dialect)?;
        let user = column("role", &r.users, dialect)?;
        let method = method(&r.method, dialect)?;
        let comment: String = r
            .comment
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        for (i, address) in addresses.into_iter().enumerate() {
            lines.push(HbaLine {
                comment: if i == 0 {
                    comment.clone()
                } else {
                    String::new()
                },
                kind: r.kind.as_str().to_string(),
                database: database.clone(),
                user: user.clone(),
                address,
                method: method.clone(),
            });
        }
    }
    Ok(lines)
}

/// Pad every column but the last to the widest entry, so the file reads as a table.
fn pad(mut lines: Vec<HbaLine>) -> Vec<HbaLine> {
    let width = |f: fn(&HbaLine) -> &String| {
        lines
            .iter()
            .map(|l| f(l).chars().count())
            .max()
            .unwrap_or(0)
    };
    let (wk, wd, wu, wa) = (
        width(|l| &l.kind),
        width(|l| &l.database),
        width(|l| &l.user),
        width(|l| &l.address),
    );
    for l in &mut lines {
        l.kind = format!("{:<wk$}", l.kind);
        l.database = format!("{:<wd$}", l.database);
        l.user = format!("{:<wu$}", l.user);
        l.address = format!("{:<wa$}", l.address);
    }
    lines
}

fn render_hba(
    rules: &[HbaRule],
    generation: u64,
    dialect: Dialect,
    template: &str,
) -> Result<String, RenderError> {
    let lines = pad(format_rules(rules, dialect)?);
    let mut body = String::with_capacity(lines.len() * 96);
    for l in &lines {
        if !l.comment.is_empty() {
            body.push_str("\n# ");
            body.push_str(&l.comment);
            body.push('\n');
        }
        for (i, col) in [&l.kind, &l.database, &l.user, &l.address, &l.method]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                body.push_str("  ");
            }
            body.push_str(col);
        }
        body.push('\n');
    }
    // The template ends the file with its own newline.
    body.pop();
    let ctx = HbaContext {
        generation,
        file: dialect.label(),
        body,
    };
    super::render_template(template, &ctx)
}

/// pg_hba.conf for the rules from [`super::compile`].
pub fn render_pg_hba(rules: &[HbaRule], generation: u64) -> Result<String, RenderError> {
    render_hba(
        rules,
        generation,
        Dialect::Postgres,
        "postgresql/pg_hba.conf.j2",
    )
}

/// pgbouncer_hba.conf for the rules from [`super::compile_pgbouncer`].
pub fn render_pgbouncer_hba(rules: &[HbaRule], generation: u64) -> Result<String, RenderError> {
    render_hba(
        rules,
        generation,
        Dialect::PgBouncer,
        "pgbouncer/pgbouncer_hba.conf.j2",
    )
}

/// An OS user name as pg_ident's system-user column takes it; a leading `/` would make it a regex.
fn os_user_token(user: &str) -> Result<String, HbaError> {
    if !crate::settings::is_system_user(user) {
        return Err(name_error(
            "OS user",
            user,
            Dialect::Postgres,
            "use a-z, 0-9, _ and -, starting with a letter or _",
        ));
    }
    Ok(user.to_string())
}

/// pg_ident.conf: each admin OS user maps to the superuser under [`PEER_MAP`].
pub fn render_pg_ident(policy: &HbaPolicy, generation: u64) -> Result<String, RenderError> {
    let superuser = name_token("superuser", &policy.superuser, Dialect::Postgres)?;
    let mut users = policy.admin_os_users.clone();
    users.sort();
    users.dedup();
    let mappings = users
        .iter()
        .map(|u| Ok([PEER_MAP.to_string(), os_user_token(u)?, superuser.clone()]))
        .collect::<Result<Vec<_>, HbaError>>()?;
    let ctx = IdentContext {
        generation,
        mappings,
    };
    super::render_template("postgresql/pg_ident.conf.j2", &ctx)
}
