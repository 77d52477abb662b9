//! Pure domain types shared by every layer above: tenant ids, the generated database and role
//! names, generated tenant passwords, tenant status, validated API input and API keys. Nothing
//! here does I/O except drawing randomness from the OS CSPRNG; constructors validate, so a value
//! of one of these types is always well-formed and safe to hand to the SQL or rendering layers.

pub mod allow;
pub mod api_key;
pub mod cluster;
pub mod hba;
pub mod ids;
pub mod input;
pub mod names;
pub mod secret;
pub mod status;

pub use allow::AllowEntry;
pub use api_key::{ApiKey, ApiKeyRecord, PlaintextApiKey, Scope};
pub use ids::TenantId;
pub use input::{FriendlyName, OwnerEmail, ValidationError};
pub use names::{
    DbName, LEGACY_ROLE_PREFIX, LOAD_GROUP, RoleName, TENANT_DB_PREFIX, TENANT_GROUP,
    generate_tenant_names, reserved_companion,
};
pub use secret::{Secret, TenantPassword};
pub use status::{QuotaState, TenantStatus};

/// The conversions every validated string type shares. The type is a tuple struct over a
/// `String` and provides `fn parse(&str) -> Result<Self, ValidationError>`; these make every
/// way in go through it.
macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $crate::model::ValidationError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = $crate::model::ValidationError;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::model::ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> Self {
                value.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use string_newtype;

/// Fills `N` bytes from the operating system's CSPRNG.
///
/// Panics if the OS cannot supply randomness: there is no safe fallback for secret material, and
/// on Linux `getrandom(2)` only fails before the entropy pool is initialised at early boot.
pub(crate) fn os_random_bytes<const N: usize>() -> [u8; N] {
    use rand::TryRngCore;
    let mut buf = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .expect("the operating system's random number generator failed");
    buf
}
