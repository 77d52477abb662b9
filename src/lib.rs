//! pgaas: self-hosted PostgreSQL-as-a-service in one binary.
//!
//! Dependencies point down, layer by layer (`tests/it/layers.rs` fails on a new back-edge):
//! `cli` -> `api`/`dev`/`install` -> `acme` -> `tenant`/`backup` -> `hba` -> `control_db` ->
//! `render` -> `pg` -> `files`/`system`/`settings` -> `model`/`host`. Nothing below `cli`
//! parses arguments; nothing but `api` knows HTTP.

pub mod acme;
pub mod api;
pub mod archive;
pub mod backup;
pub mod cli;
pub mod control_db;
pub mod dev;
pub mod files;
pub mod hba;
pub mod host;
pub mod install;
pub mod model;
#[cfg(test)]
mod parse_proptests;
pub mod pg;
pub mod render;
pub mod settings;
pub mod system;
pub mod tenant;

/// An error and each of its causes, `: `-separated, the way the CLI prints them.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
