//! Tenants: provisioning, changes, password rotation, deletion, stats and the reconciler. The
//! API and the CLI both call this layer; it owns the order of every step so that a crash at any
//! point leaves work the reconciler can finish or undo.
//!
//! Provisioning: the row first (status `provisioning`, unique names with 64 random bits), then the
//! role (SCRAM verifier computed here, commented with the tenant id so only pgaas-made objects
//! are ever dropped), then the database (owned by the role, connection limit, CONNECT revoked
//! from PUBLIC), then the row becomes `active` together with its audit row. A failure undoes only
//! what this request created. Deletion: `deleting`, connections blocked, `DROP DATABASE ... WITH
//! (FORCE)`, role dropped, row removed; the audit row stays.

mod allow;
pub mod audit;
mod budget;
mod create;
mod delete;
mod guard;
mod lock;
mod quota;
mod read;
mod reconcile;
mod roles;
mod row;
mod shadow;
mod stats;
mod types;
mod update;

pub use allow::{AllowRow, parse_description};
pub use audit::{AuditContext, AuditEntry, AuditFilter};
pub use budget::Budget;
pub use create::ProvisionDdl;
pub use guard::GuardReport;
pub use quota::QuotaChange;
pub use reconcile::ReconcileReport;
pub use stats::{StatsCollector, TenantStats, size_pretty};
pub use types::*;

use std::sync::Arc;

use sqlx::PgPool;

use crate::{hba::apply::HbaApplier, settings::Settings};

/// The tenant service: the control DB pool (the API role, which also issues the DDL) and settings.
#[derive(Clone)]
pub struct TenantService {
    pub(crate) pool: PgPool,
    pub(crate) settings: Arc<Settings>,
    /// Writes pg_hba.conf (and PgBouncer's) when allow-lists change; only on the database host.
    pub(crate) hba: Option<Arc<HbaApplier>>,
    /// One queue per tenant for changes in this process (see `lock`).
    pub(crate) gates: Arc<lock::Gates>,
}

impl TenantService {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        Self {
            pool,
            settings,
            hba: None,
            gates: Arc::default(),
        }
    }

    /// Manage pg_hba.conf through `applier` (allow-lists need it).
    pub fn with_hba(mut self, applier: HbaApplier) -> Self {
        self.hba = Some(Arc::new(applier));
        self
    }

    pub fn hba(&self) -> Option<&HbaApplier> {
        self.hba.as_deref()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}
