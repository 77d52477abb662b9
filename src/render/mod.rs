//! Renders every file pgaas manages on a host (PostgreSQL, PgBouncer, systemd units) from typed
//! contexts through one strict minijinja environment over the templates embedded at build time,
//! and writes them atomically.
//!
//! Templates are layout only: every value reaches them already validated and quoted for the
//! target syntax by the context builders in the submodules, and an undefined variable is an
//! error rather than an empty string.

mod check;
pub mod hba;
mod memory;
pub mod patroni;
pub mod pgbackrest;
mod pgbouncer;
mod postgres;
mod systemd;
mod write;

#[cfg(test)]
mod tests;

use std::{path::PathBuf, sync::LazyLock};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::{
    model::hba::{CompiledRules, HbaError, HbaPolicy},
    settings::Settings,
};

pub use memory::{HostFacts, MemorySizing, SUPPORTED_VERSIONS, size_memory};
pub use pgbouncer::{PoolerLimits, PoolerTenant, TENANTS_FILE, render_tenants};
pub use write::{Drift, check_all, write_all};

/// Every file under `templates/`, as `(path relative to templates/, contents)`.
pub static TEMPLATES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/templates.rs"));

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("rendering template {name}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("{what} {value:?} cannot be rendered: {reason}")]
    Invalid {
        what: String,
        value: String,
        reason: String,
    },
    #[error("compiling the access rules")]
    Hba(#[source] HbaError),
}

impl RenderError {
    pub(crate) fn invalid(what: &str, value: impl AsRef<str>, reason: impl Into<String>) -> Self {
        RenderError::Invalid {
            what: what.into(),
            value: value.as_ref().into(),
            reason: reason.into(),
        }
    }
}

impl From<HbaError> for RenderError {
    fn from(e: HbaError) -> Self {
        RenderError::Hba(e)
    }
}

/// The environment is built once; a template that fails to parse is kept as its error so every
/// render that needs it reports it (the golden tests make sure none does).
static ENV: LazyLock<Result<Environment<'static>, (String, String)>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .map_err(|e| (name.to_string(), format!("{e:#}")))?;
    }
    Ok(env)
});

/// Render one embedded template (`name` relative to `templates/`) with a typed context.
pub fn render_template<C: Serialize>(name: &str, ctx: &C) -> Result<String, RenderError> {
    let env = ENV.as_ref().map_err(|(bad, msg)| RenderError::Template {
        name: bad.clone(),
        source: minijinja::Error::new(minijinja::ErrorKind::SyntaxError, msg.clone()),
    })?;
    let template = env
        .get_template(name)
        .map_err(|source| RenderError::Template {
            name: name.to_string(),
            source,
        })?;
    template
        .render(ctx)
        .map_err(|source| RenderError::Template {
            name: name.to_string(),
            source,
        })
}

/// One file pgaas owns, fully rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedFile {
    /// Absolute target path.
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

/// Everything a full render depends on.
#[derive(Clone, Debug)]
pub struct RenderInputs<'a> {
    pub settings: &'a Settings,
    pub facts: HostFacts,
    /// The policy (for pg_ident.conf) and the rules compiled from it (`hba::compile_all`).
    pub hba: &'a HbaPolicy,
    pub rules: &'a CompiledRules,
    /// Written into every header, so an operator can tell which render produced a file.
    pub generation: u64,
    /// The cluster's configuration directory (Debian: `/etc/postgresql/<ver>/main`).
    pub pg_config_dir: PathBuf,
    /// The cluster's data directory (pgBackRest backs it up).
    pub data_dir: PathBuf,
    pub include_systemd: bool,
    pub include_pgbouncer: bool,
}

/// Config files readable by the services that load them; nothing here is secret (passwords live
/// in PgBouncer's auth_file and the secrets directory, which pgaas writes elsewhere).
const CONFIG_MODE: u32 = 0o644;
/// pg_hba and pg_ident describe who may log in; no need for other local users to read them.
const HBA_MODE: u32 = 0o640;

/// Every managed file for this host, in a stable order.
pub fn managed_files(inputs: &RenderInputs) -> Result<Vec<ManagedFile>, RenderError> {
    let s = inputs.settings;
    // Only the hba files carry the generation (see `RenderInputs::generation`); the others
    // pass 0, which the header leaves out.
    let g = inputs.generation;
    let dir = &inputs.pg_config_dir;
    if !dir.is_absolute() {
        return Err(RenderError::invalid(
            "PostgreSQL config dir",
            dir.to_string_lossy(),
            "must be absolute",
        ));
    }
    let rules = &inputs.rules.postgres;
    let hba_dir = s.postgres.hba_dir.clone().unwrap_or_else(|| dir.clone());
    let mut files = vec![
        ManagedFile {
            path: dir.join("conf.d/pgaas.conf"),
            contents: postgres::render_conf(s, &inputs.facts, dir, 0)?,
            mode: CONFIG_MODE,
        },
        ManagedFile {
            path: hba_dir.join("pg_hba.conf"),
            contents: hba::render_pg_hba(rules, g)?,
            mode: HBA_MODE,
        },
        ManagedFile {
            path: hba_dir.join("pg_ident.conf"),
            contents: hba::render_pg_ident(inputs.hba, 0)?,
            mode: HBA_MODE,
        },
    ];
    if s.archive.enabled {
        files.push(ManagedFile {
            path: s.archive.config_file(),
            contents: pgbackrest::render_conf(s, &inputs.data_dir, 0)?,
            mode: CONFIG_MODE,
        });
    }
    if inputs.include_pgbouncer {
        let pgb_dir = &s.pgbouncer.config_dir;
        let pgb_rules = &inputs.rules.pgbouncer;
        files.push(ManagedFile {
            path: pgb_dir.join("pgbouncer.ini"),
            contents: pgbouncer::render_ini(s, 0)?,
            mode: HBA_MODE,
        });
        files.push(ManagedFile {
            path: s.pgbouncer.auth_dir().join("pgbouncer_hba.conf"),
            contents: hba::render_pgbouncer_hba(pgb_rules, g)?,
            mode: HBA_MODE,
        });
    }
    if inputs.include_systemd {
        for (name, contents) in systemd::render_units(s, dir, 0)? {
            files.push(ManagedFile {
                path: s.paths.systemd_dir.join(name),
                contents,
                mode: CONFIG_MODE,
            });
        }
    }
    Ok(files)
}
