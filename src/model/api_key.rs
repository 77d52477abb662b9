//! API keys: their format, generation, hashing and verification, and the scopes they grant.
//!
//! A key reads `pgaas_<prefix>_<secret>`: the prefix is 8 lowercase hex characters, stored in the
//! clear so a presented key is found with one indexed lookup; the secret is 32 bytes from the OS
//! CSPRNG in unpadded base64url. Only SHA-256 of the whole key string is stored. A fast hash is
//! enough because the key carries 256 random bits (nothing to brute-force), and a slow one on
//! every request would cap throughput. The comparison is constant-time so response timing
//! reveals nothing about how much of a guessed hash matched.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ValidationError;

pub const API_KEY_TAG: &str = "pgaas_";
/// Lowercase hex characters in the public prefix (32 bits). The control DB keeps prefixes unique;
/// on the rare collision the caller generates again.
pub const API_KEY_PREFIX_LEN: usize = 8;
/// Random bytes in the secret part.
pub const API_KEY_SECRET_BYTES: usize = 32;
/// base64url characters for 32 bytes without padding.
const SECRET_B64_LEN: usize = 43;
/// Length of a whole key string.
pub const API_KEY_LEN: usize = API_KEY_TAG.len() + API_KEY_PREFIX_LEN + 1 + SECRET_B64_LEN;

/// Namespace for the key operations; never constructed.
pub enum ApiKey {}

/// A freshly generated key, shown to its creator once and then dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextApiKey {
    full: String,
}

/// What the control DB keeps about a key: the lookup prefix and SHA-256 of the full key string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub prefix: String,
    pub hash: [u8; 32],
}

impl ApiKey {
    /// Generates a key and the record to store for it.
    ///
    /// Panics if the operating system cannot supply randomness.
    pub fn generate() -> (PlaintextApiKey, ApiKeyRecord) {
        let prefix = hex::encode(super::os_random_bytes::<{ API_KEY_PREFIX_LEN / 2 }>());
        let secret = URL_SAFE_NO_PAD.encode(super::os_random_bytes::<API_KEY_SECRET_BYTES>());
        let full = format!("{API_KEY_TAG}{prefix}_{secret}");
        debug_assert_eq!(full.len(), API_KEY_LEN);
        let record = ApiKeyRecord {
            hash: Self::hash(&full),
            prefix,
        };
        (PlaintextApiKey { full }, record)
    }

    /// SHA-256 of a full key string, as stored in `api_keys.key_hash`.
    pub fn hash(full: &str) -> [u8; 32] {
        Sha256::digest(full.as_bytes()).into()
    }

    /// Splits a key as presented by a client into `(prefix, full)` if it has the exact shape
    /// of one we issue. Anything else is refused before touching the database; the caller looks
    /// the prefix up and then calls [`ApiKey::verify`] with the full string.
    pub fn parse_presented(presented: &str) -> Option<(&str, &str)> {
        if presented.len() != API_KEY_LEN {
            return None;
        }
        let rest = presented.strip_prefix(API_KEY_TAG)?;
        let (prefix, rest) = rest.split_at_checked(API_KEY_PREFIX_LEN)?;
        let secret = rest.strip_prefix('_')?;
        let prefix_ok = prefix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        // The secret's alphabet includes '_', which is why the split is by position, not by '_'.
        let secret_ok = secret.len() == SECRET_B64_LEN
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (prefix_ok && secret_ok).then_some((prefix, presented))
    }

    /// Whether `presented` hashes to `stored_hash`, compared in constant time.
    pub fn verify(presented: &str, stored_hash: &[u8]) -> bool {
        let computed = Self::hash(presented);
        // subtle's slice comparison returns early only on a length mismatch, and the length of a
        // SHA-256 digest is no secret.
        computed.as_slice().ct_eq(stored_hash).into()
    }
}

impl PlaintextApiKey {
    /// The full key, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The public lookup prefix (without the `pgaas_` tag).
    pub fn prefix(&self) -> &str {
        &self.full[API_KEY_TAG.len()..API_KEY_TAG.len() + API_KEY_PREFIX_LEN]
    }
}

impl fmt::Debug for PlaintextApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prefix is public (it is stored in the clear and names the key in listings).
        write!(f, "PlaintextApiKey({API_KEY_TAG}{}_***)", self.prefix())
    }
}

/// What a key may do. Each scope includes the ones below it: admin ⊇ write ⊇ read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Self::Read, Self::Write, Self::Admin];

    /// Whether holding `self` permits an action that requires `required`.
    pub fn allows(self, required: Scope) -> bool {
        // Relies on the declaration order above (derived `Ord`).
        self >= required
    }

    /// Whether any of a key's scopes (its `permissions` array) permits `required`.
    pub fn any_allows(granted: &[Scope], required: Scope) -> bool {
        granted.iter().any(|scope| scope.allows(required))
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| ValidationError::new("scope", "must be one of read, write, admin"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_key_has_the_documented_shape() {
        let (key, record) = ApiKey::generate();
        let full = key.expose();
        assert_eq!(full.len(), API_KEY_LEN);
        assert!(full.starts_with("pgaas_"));
        assert_eq!(key.prefix(), record.prefix);
        assert_eq!(&full[6..14], record.prefix);
        assert_eq!(&full[14..15], "_");
        let secret = URL_SAFE_NO_PAD.decode(&full[15..]).unwrap();
        assert_eq!(secret.len(), 32);
        assert_eq!(
            ApiKey::parse_presented(full),
            Some((record.prefix.as_str(), full))
        );
    }

    #[test]
    fn record_hash_is_sha256_of_the_full_key() {
        let (key, record) = ApiKey::generate();
        let expected: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
        assert_eq!(record.hash, expected);
        // Known answer, so a change of hash function or input cannot go unnoticed.
        assert_eq!(
            hex::encode(ApiKey::hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_and_prefixes_are_distinct() {
        let keys: Vec<_> = (0..1_000).map(|_| ApiKey::generate()).collect();
        let fulls: HashSet<&str> = keys.iter().map(|(k, _)| k.expose()).collect();
        assert_eq!(fulls.len(), keys.len());
        let prefixes: HashSet<&str> = keys.iter().map(|(_, r)| r.prefix.as_str()).collect();
        // 1000 draws of 32 bits: a collision has probability ~1e-4; two would mean a broken RNG.
        assert!(prefixes.len() >= keys.len() - 1);
    }

    #[test]
    fn verify_accepts_the_key_and_nothing_else() {
        let (key, record) = ApiKey::generate();
        assert!(ApiKey::verify(key.expose(), &record.hash));

        let (other, _) = ApiKey::generate();
        assert!(!ApiKey::verify(other.expose(), &record.hash));
        assert!(!ApiKey::verify("", &record.hash));
        // One changed character of the secret, and the key with a trailing newline.
        let mut tampered = key.expose().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(!ApiKey::verify(&tampered, &record.hash));
        assert!(!ApiKey::verify(
            &format!("{}\n", key.expose()),
            &record.hash
        ));
    }

    #[test]
    fn verify_rejects_any_single_byte_change_in_the_stored_hash() {
        let (key, record) = ApiKey::generate();
        for i in 0..32 {
            let mut hash = record.hash;
            hash[i] ^= 0x01;
            assert!(!ApiKey::verify(key.expose(), &hash), "byte {i}");
        }
        // Truncated or extended hashes (a corrupt row) never match.
        assert!(!ApiKey::verify(key.expose(), &record.hash[..31]));
        assert!(!ApiKey::verify(
            key.expose(),
            &[record.hash.as_slice(), &[0]].concat()
        ));
        assert!(!ApiKey::verify(key.expose(), &[]));
    }

    #[test]
    fn parse_presented_rejects_malformed_keys() {
        let (key, _) = ApiKey::generate();
        let full = key.expose();
        let secret = &full[15..];
        for bad in [
            String::new(),
            "pgaas_".to_owned(),
            full[..full.len() - 1].to_owned(),
            format!("{full}A"),
            format!(" {}", &full[1..]),
            full.replacen("pgaas_", "pgaaz_", 1),
            format!("pgaas_ABCDEF12_{secret}"),
            format!("pgaas_abcdef1g_{secret}"),
            format!("pgaas_abcdef12-{secret}"),
            format!("pgaas_abcdef12_{}=", &secret[..42]),
            format!("pgaas_abcdef12_{}+", &secret[..42]),
            format!("pgaas_abcdef12_{}é", &secret[..41]),
            "Bearer pgaas_abcdef12_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_owned(),
        ] {
            assert_eq!(ApiKey::parse_presented(&bad), None, "{bad:?}");
        }
        // A secret may itself contain '_' and '-'.
        let underscores = format!("pgaas_abcdef12_{}", "_-".repeat(21) + "a");
        assert_eq!(
            ApiKey::parse_presented(&underscores),
            Some(("abcdef12", underscores.as_str()))
        );
    }

    #[test]
    fn debug_shows_only_the_prefix() {
        let (key, _) = ApiKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.expose()[15..]));
        assert!(shown.contains(key.prefix()));
    }

    #[test]
    fn scopes_nest() {
        use Scope::*;
        let allowed = |held: Scope, required: Scope| held.allows(required);
        assert!(allowed(Read, Read));
        assert!(!allowed(Read, Write));
        assert!(!allowed(Read, Admin));
        assert!(allowed(Write, Read));
        assert!(allowed(Write, Write));
        assert!(!allowed(Write, Admin));
        assert!(allowed(Admin, Read));
        assert!(allowed(Admin, Write));
        assert!(allowed(Admin, Admin));
        assert!(Scope::any_allows(&[Read, Admin], Write));
        assert!(!Scope::any_allows(&[Read], Write));
        assert!(!Scope::any_allows(&[], Read));
    }

    #[test]
    fn scopes_serialise_like_the_permissions_column() {
        let scopes: Vec<Scope> = serde_json::from_str(r#"["read","write","admin"]"#).unwrap();
        assert_eq!(scopes, Scope::ALL);
        assert_eq!(
            serde_json::to_string(&[Scope::Read]).unwrap(),
            r#"["read"]"#
        );
        assert!(serde_json::from_str::<Scope>(r#""Admin""#).is_err());
        assert!(serde_json::from_str::<Scope>(r#""superuser""#).is_err());
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
    }
}
