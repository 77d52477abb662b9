//! The tenant layer's values and errors.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{
    DbName, FriendlyName, OwnerEmail, QuotaState, RoleName, TenantId, TenantPassword, TenantStatus,
    ValidationError,
};

/// A tenant database as the control DB records it (never its password).
#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub database_name: DbName,
    pub username: RoleName,
    pub owner_email: String,
    pub friendly_name: String,
    pub max_connections: i32,
    /// Storage quota in MB; 0 = none.
    pub max_size_mb: i64,
    pub quota_state: QuotaState,
    /// As the stats collector last measured it.
    pub size_bytes: Option<i64>,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a create request asks for, already validated.
#[derive(Clone, Debug)]
pub struct NewTenant {
    pub friendly_name: FriendlyName,
    pub owner_email: OwnerEmail,
    /// `None`: the configured default.
    pub max_connections: Option<u32>,
    /// `None`: the configured default (`tenants.default_max_size_mb`); 0 = no quota.
    pub max_size_mb: Option<u64>,
}

/// A partial update (PATCH); `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct TenantPatch {
    pub friendly_name: Option<FriendlyName>,
    pub owner_email: Option<OwnerEmail>,
    pub max_connections: Option<u32>,
    pub max_size_mb: Option<u64>,
}

impl TenantPatch {
    pub fn is_empty(&self) -> bool {
        self.friendly_name.is_none()
            && self.owner_email.is_none()
            && self.max_connections.is_none()
            && self.max_size_mb.is_none()
    }
}

/// A freshly provisioned tenant and its password, which is shown once and never stored.
#[derive(Debug)]
pub struct Provisioned {
    pub tenant: Tenant,
    pub password: TenantPassword,
}

/// Listing: filters and a page. `cursor` (from the previous page's `next_cursor`) wins over
/// `offset`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub status: Option<TenantStatus>,
    pub owner_email: Option<String>,
    pub limit: u32,
    pub offset: u64,
    pub cursor: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TenantPage {
    pub items: Vec<Tenant>,
    /// All rows matching the filters, not just this page.
    pub total: i64,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("database {0} not found")]
    NotFound(TenantId),
    #[error("allow-list entry {0} not found")]
    EntryNotFound(uuid::Uuid),
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    Conflict(String),
    /// The tenant is in a state that does not allow the operation (e.g. still provisioning).
    #[error("{0}")]
    State(String),
    /// Something holds the tenant right now (another change to it, or a lock one of its own
    /// sessions holds); the same request may succeed in a moment.
    #[error("{0}")]
    Busy(String),
    /// The platform cannot take the request right now (its connections are all in use, a
    /// statement ran out of time, the server is full); try again shortly.
    #[error("{0}")]
    Unavailable(String),
    #[error("control database")]
    Db(#[source] sqlx::Error),
    #[error("the access rules could not be applied")]
    Apply(#[source] crate::hba::apply::ApplyError),
    #[error("a name or value could not be quoted for SQL")]
    Quote(#[from] crate::pg::quote::QuoteError),
    /// A row the control DB holds that pgaas would not have written (edited around it).
    #[error("the control DB holds a row pgaas cannot read")]
    Row(#[source] ValidationError),
    #[error("hashing the password")]
    Hash(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for TenantError {
    /// Waits that ran out and full servers are the caller's to retry, not internal errors:
    /// one tenant holding a lock on its own database must cost the request a 409, not a 500.
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error;
        let code = match &e {
            Error::Database(db) => db.code().map(|c| c.into_owned()),
            Error::PoolTimedOut => {
                return TenantError::Unavailable(
                    "every control-DB connection is busy; try again in a moment".into(),
                );
            }
            // The server went away under the request: a restart, or a cluster failing over.
            Error::Io(_) | Error::PoolClosed => {
                return TenantError::Unavailable(FAILING_OVER.into());
            }
            _ => None,
        };
        match code.as_deref() {
            // lock_not_available (lock_timeout), object_in_use
            Some("55P03") | Some("55006") => TenantError::Busy(
                "the database is in use by a change or by one of its own sessions holding a \
                 lock; try again in a moment"
                    .into(),
            ),
            // dependent_objects_still_exist
            Some("2BP01") => TenantError::Busy(
                "the tenant's role still owns objects or holds privileges elsewhere; try again"
                    .into(),
            ),
            // query_canceled (statement_timeout), too_many_connections, cannot_connect_now
            Some("57014") | Some("53300") | Some("57P03") => TenantError::Unavailable(
                "the database server is busy; try again in a moment".into(),
            ),
            // read_only_sql_transaction: this node is a standby (a cluster's API answers on
            // every node; writes go to the primary). admin_shutdown, crash_shutdown, and the
            // connection_exception class: the server stopped under the request.
            Some("25006") => TenantError::Unavailable(
                "this node's database is a standby (read-only); send writes to the primary, or \
                 try again in a moment if a failover is under way"
                    .into(),
            ),
            Some(c) if c == "57P01" || c == "57P02" || c.starts_with("08") => {
                TenantError::Unavailable(FAILING_OVER.into())
            }
            _ => TenantError::Db(e),
        }
    }
}

const FAILING_OVER: &str =
    "the database server is restarting or failing over; try again in a moment";

impl TenantError {
    /// A stable word for audit rows: readers of the audit log never see server error text.
    pub fn category(&self) -> &'static str {
        match self {
            TenantError::NotFound(_) | TenantError::EntryNotFound(_) => "not_found",
            TenantError::Validation(_) => "validation_failed",
            TenantError::Conflict(_) => "conflict",
            TenantError::State(_) => "wrong_state",
            TenantError::Busy(_) => "busy",
            TenantError::Unavailable(_) => "unavailable",
            TenantError::Apply(_) => "access_rules_failed",
            TenantError::Quote(_) | TenantError::Row(_) | TenantError::Hash(_) => "internal",
            TenantError::Db(_) => "database_error",
            TenantError::Internal(_) => "internal",
        }
    }

    pub(crate) fn hash(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        TenantError::Hash(Box::new(e))
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        TenantError::Internal(e.to_string())
    }
}
