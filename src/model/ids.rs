//! Typed tenant identifier, so a tenant's id is never confused with any other `Uuid` or string
//! across module boundaries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ValidationError;

/// The primary key of a row in `databases`: one tenant database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    /// A fresh random (v4) id, for tests and for callers that allocate ids before the insert.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for TenantId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl From<TenantId> for Uuid {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always the hyphenated lowercase form, the one PostgreSQL prints and the API returns.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for TenantId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self).map_err(|_| {
            ValidationError::new(
                "id",
                "must be a UUID such as 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = TenantId::new_random();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<TenantId>().unwrap(), id);
    }

    #[test]
    fn parse_rejects_non_uuids() {
        for bad in [
            "",
            "42",
            "tenant_0123456789abcdef",
            "3f2504e0-4f89-11d3-9a0c-0305e82c330",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301x",
            "3f2504e0-4f89-11d3-9a0c-0305e82c330g",
            "' OR 1=1 --",
        ] {
            let err = bad.parse::<TenantId>().unwrap_err();
            assert_eq!(err.field, "id", "{bad:?}");
        }
    }

    #[test]
    fn serde_is_a_bare_string() {
        let id: TenantId = "3f2504e0-4f89-11d3-9a0c-0305e82c3301".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"3f2504e0-4f89-11d3-9a0c-0305e82c3301\"");
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TenantId>("\"nope\"").is_err());
    }
}
