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
