//! Secrets: tenant passwords (generated here, shown once in the create response, otherwise kept
//! only as a SCRAM verifier in the cluster and a bcrypt hash in the control DB), the API role's
//! password, API keys in settings. One type, so no plaintext slips into a log line through
//! `Debug` or `Display`, or into a settings file written back (it serialises masked).

use std::fmt;

use rand::Rng;
use rand::TryRngCore;
use rand::distr::Alphanumeric;

/// Characters in a generated password: 32 draws from 62 symbols, about 190 bits.
pub const TENANT_PASSWORD_LEN: usize = 32;

/// A secret value: deserialises like a string, never shows itself in `Debug`, `Display` or when
/// serialised.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// A tenant's login password.
pub type TenantPassword = Secret;

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// A fresh password from the OS CSPRNG. `Alphanumeric` samples by rejection, so every one of
    /// the 62 symbols is equally likely (no modulo bias). The result is ASCII alphanumeric, which
    /// is also what `pg::scram` requires (SASLprep is the identity on it) and safe inside a
    /// connection URL without percent-encoding.
    ///
    /// Panics if the operating system cannot supply randomness.
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng.unwrap_err();
        let password = (&mut rng)
            .sample_iter(Alphanumeric)
            .take(TENANT_PASSWORD_LEN)
            .map(char::from)
            .collect();
        Self(password)
    }

    /// The plaintext. Call sites are the places a secret is used; keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serialises masked: settings written back to a file never carry a secret (use `*_file`).
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn length_and_charset() {
        for _ in 0..1_000 {
            let password = TenantPassword::generate();
            assert_eq!(password.expose().len(), TENANT_PASSWORD_LEN);
            assert!(password.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn draws_from_all_62_symbols_and_never_repeats() {
        let passwords: Vec<_> = (0..1_000).map(|_| TenantPassword::generate()).collect();
        let symbols: HashSet<u8> = passwords.iter().flat_map(|p| p.expose().bytes()).collect();
        assert_eq!(symbols.len(), 62);
        let distinct: HashSet<&str> = passwords.iter().map(TenantPassword::expose).collect();
        assert_eq!(distinct.len(), passwords.len());
    }

    #[test]
    fn debug_does_not_reveal_the_password() {
        let password = TenantPassword::generate();
        let shown = format!("{password:?} {:#?}", password);
        assert!(!shown.contains(password.expose()));
        assert!(shown.contains("***"));
    }
}
