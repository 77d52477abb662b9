//! The lifecycle state of a tenant database, mirrored by the control DB's `database_status`
//! enum. Rows move provisioning -> active -> deleting; `failed` marks work the reconciler could
//! not finish and `suspended` a tenant an operator has switched off.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ValidationError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Provisioning,
    Active,
    Suspended,
    Deleting,
    Failed,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 5] = [
        Self::Provisioning,
        Self::Active,
        Self::Suspended,
        Self::Deleting,
        Self::Failed,
    ];

    /// The label used by the control DB enum and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "status",
                    "must be one of provisioning, active, suspended, deleting, failed",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_str_and_serde() {
        for status in TenantStatus::ALL {
            assert_eq!(status.as_str().parse::<TenantStatus>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<TenantStatus>(&json).unwrap(), status);
        }
    }

    #[test]
    fn labels_match_the_control_db_enum() {
        let migration = include_str!("../../migrations/0001_control_schema.sql");
        let labels: Vec<String> = TenantStatus::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let expected = format!(
            "CREATE TYPE database_status AS ENUM ({})",
            labels.join(", ")
        );
        assert!(migration.contains(&expected), "expected {expected}");
    }

    #[test]
    fn unknown_or_miscased_labels_are_rejected() {
        for bad in ["", "Active", "ACTIVE", "deleted", "active "] {
            assert!(bad.parse::<TenantStatus>().is_err(), "{bad:?}");
        }
    }
}

/// Where a tenant stands against its storage quota (`databases.quota_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaState {
    /// Under the warning share of its quota, or no quota.
    Ok,
    /// Past the warning share: told, nothing enforced.
    Warning,
    /// Past the quota: new sessions default to read-only.
    ReadOnly,
    /// Past the quota and its grace: the database refuses connections until the quota is raised
    /// (or it shrinks below it).
    Blocked,
}

impl QuotaState {
    pub const ALL: [QuotaState; 4] = [Self::Ok, Self::Warning, Self::ReadOnly, Self::Blocked];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::ReadOnly => "read_only",
            Self::Blocked => "blocked",
        }
    }

    /// The state a database of `size` bytes is in with a quota of `max_mb` (0: none), warned at
    /// `warn_percent` and blocked at `100 + grace_percent` percent of it.
    pub fn for_size(size: i64, max_mb: i64, warn_percent: u32, grace_percent: u32) -> Self {
        if max_mb <= 0 {
            return Self::Ok;
        }
        let quota = i128::from(max_mb) * 1024 * 1024;
        let size = i128::from(size.max(0)) * 100;
        if size >= quota * (100 + i128::from(grace_percent)) {
            Self::Blocked
        } else if size >= quota * 100 {
            Self::ReadOnly
        } else if size >= quota * i128::from(warn_percent) {
            Self::Warning
        } else {
            Self::Ok
        }
    }
}

impl fmt::Display for QuotaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuotaState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "quota_state",
                    "must be one of ok, warning, read_only, blocked",
                )
            })
    }
}

#[cfg(test)]
mod quota_tests {
    use super::QuotaState;

    const MB: i64 = 1024 * 1024;

    #[test]
    fn quota_states_follow_the_size() {
        let at = |size| QuotaState::for_size(size, 100, 80, 10);
        assert_eq!(at(0), QuotaState::Ok);
        assert_eq!(at(79 * MB), QuotaState::Ok);
        assert_eq!(at(80 * MB), QuotaState::Warning);
        assert_eq!(at(100 * MB - 1), QuotaState::Warning);
        assert_eq!(at(100 * MB), QuotaState::ReadOnly);
        assert_eq!(at(110 * MB - 1), QuotaState::ReadOnly);
        assert_eq!(at(110 * MB), QuotaState::Blocked);
        assert_eq!(QuotaState::for_size(i64::MAX, 0, 80, 10), QuotaState::Ok);
        for q in QuotaState::ALL {
            assert_eq!(q.as_str().parse::<QuotaState>().unwrap(), q);
            assert_eq!(
                serde_json::to_string(&q).unwrap(),
                format!("\"{}\"", q.as_str())
            );
        }
    }
}
