//! pgaas: self-hosted PostgreSQL-as-a-service in one binary.
//!
//! Dependencies point down: `cli` -> `api`/`dev` -> `hba`/`control_db`/`render`/`pg` -> `model`.
//! Nothing below `cli` parses arguments; nothing but `api` knows HTTP.

pub mod acme;
pub mod api;
pub mod backup;
pub mod cli;
pub mod control_db;
pub mod dev;
pub mod hba;
pub mod host;
pub mod install;
pub mod model;
pub mod pg;
pub mod render;
pub mod settings;
pub mod tenant;
