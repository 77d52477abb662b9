//! SCRAM-SHA-256 password verifiers in PostgreSQL's `rolpassword` format, computed inside pgaas so
//! that `CREATE ROLE ... PASSWORD '<verifier>'` never carries a plaintext password to the server,
//! its logs or `pg_stat_statements`. The derivation follows RFC 5802 and RFC 7677, with the
//! iteration count and salt length PostgreSQL uses by default.
//!
//! PostgreSQL runs the password through SASLprep before hashing. SASLprep leaves printable ASCII
//! unchanged, so by accepting only printable ASCII (which includes every password
//! `TenantPassword::generate` produces) this module computes exactly what the server would,
//! without implementing Unicode normalisation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// PostgreSQL's default `scram_iterations`.
pub const SCRAM_ITERATIONS: u32 = 4096;
/// PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`.
pub const SCRAM_SALT_LEN: usize = 16;

const MECHANISM: &str = "SCRAM-SHA-256";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error(
        "the password must be non-empty printable ASCII (space to tilde); other characters would \
         need SASLprep, which pgaas does not implement"
    )]
    UnsupportedPassword,
    #[error("the SCRAM salt must not be empty")]
    EmptySalt,
    #[error("the SCRAM iteration count must be at least 1")]
    ZeroIterations,
}

/// A verifier for `password` with a fresh 16-byte salt from the OS CSPRNG and 4096 iterations.
///
/// Panics if the operating system cannot supply randomness.
pub fn scram_sha256_verifier(password: &str) -> Result<String, ScramError> {
    let mut salt = [0u8; SCRAM_SALT_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .expect("the operating system's random number generator failed");
    verifier_with_salt(password, &salt, SCRAM_ITERATIONS)
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for a given salt and iteration
/// count; deterministic, so tests can compare against known values.
pub fn verifier_with_salt(
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<String, ScramError> {
    check_password(password)?;
    if salt.is_empty() {
        return Err(ScramError::EmptySalt);
    }
    if iterations == 0 {
        return Err(ScramError::ZeroIterations);
    }
    let keys = derive_keys(password, salt, iterations);
    Ok(format!(
        "{MECHANISM}${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(keys.stored_key),
        STANDARD.encode(keys.server_key),
    ))
}

/// Whether `password` matches `verifier`, by recomputing both keys with the verifier's salt and
/// iteration count. Malformed verifiers and unsupported passwords never match.
pub fn verify_password(verifier: &str, password: &str) -> bool {
    let Some(parsed) = parse_verifier(verifier) else {
        return false;
    };
    if check_password(password).is_err() {
        return false;
    }
    let keys = derive_keys(password, &parsed.salt, parsed.iterations);
    let stored_ok = keys.stored_key.as_slice().ct_eq(&parsed.stored_key);
    let server_ok = keys.server_key.as_slice().ct_eq(&parsed.server_key);
    (stored_ok & server_ok).into()
}

fn check_password(password: &str) -> Result<(), ScramError> {
    let printable = password.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if password.is_empty() || !printable {
        return Err(ScramError::UnsupportedPassword);
    }
    Ok(())
}

struct Keys {
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> Keys {
    let salted_password: [u8; 32] =
        pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations);
    let client_key = hmac(&salted_password, b"Client Key");
    Keys {
        stored_key: Sha256::digest(client_key).into(),
        server_key: hmac(&salted_password, b"Server Key"),
    }
}

struct ParsedVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn parse_verifier(verifier: &str) -> Option<ParsedVerifier> {
    let rest = verifier.strip_prefix(MECHANISM)?.strip_prefix('$')?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let parsed = ParsedVerifier {
        iterations: iterations.parse().ok().filter(|&i| i > 0)?,
        salt: STANDARD.decode(salt).ok().filter(|s| !s.is_empty())?,
        stored_key: STANDARD.decode(stored_key).ok()?,
        server_key: STANDARD.decode(server_key).ok()?,
    };
    (parsed.stored_key.len() == 32 && parsed.server_key.len() == 32).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgresql_shape() {
        let verifier = scram_sha256_verifier("correcthorsebatterystaple").unwrap();
        let parsed = parse_verifier(&verifier).expect("parses");
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        assert!(verify_password(&verifier, "correcthorsebatterystaple"));
        assert!(!verify_password(&verifier, "correcthorsebatterystaplE"));
    }

    #[test]
    fn fresh_salt_every_time() {
        let a = scram_sha256_verifier("same").unwrap();
        let b = scram_sha256_verifier("same").unwrap();
        assert_ne!(a, b);
        assert!(verify_password(&a, "same") && verify_password(&b, "same"));
    }

    /// RFC 7677 section 3: user "user", password "pencil", this salt and 4096 iterations. The RFC
    /// publishes the exchange, not the keys, so check our keys against it the way a server does:
    /// recover ClientKey from the client's proof and compare its hash with our StoredKey, and
    /// recompute the server's signature from our ServerKey.
    #[test]
    fn matches_rfc_7677_example_exchange() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = verifier_with_salt("pencil", &salt, 4096).unwrap();
        let parsed = parse_verifier(&verifier).unwrap();

        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final_without_proof =
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message =
            format!("{client_first_bare},{server_first},{client_final_without_proof}");
        let client_proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let server_signature = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

        let client_signature = hmac(&parsed.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = client_proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        assert_eq!(Sha256::digest(&client_key).as_slice(), parsed.stored_key);
        assert_eq!(
            STANDARD.encode(hmac(&parsed.server_key, auth_message.as_bytes())),
            server_signature
        );
    }

    /// A verifier PostgreSQL 15 itself stored in `pg_authid.rolpassword` after
    /// `SET password_encryption = 'scram-sha-256'; CREATE ROLE r PASSWORD '...'`.
    #[test]
    fn matches_a_verifier_computed_by_postgresql() {
        let from_postgres = POSTGRES_VERIFIER;
        let (params, _) = from_postgres["SCRAM-SHA-256$".len()..]
            .split_once('$')
            .unwrap();
        let salt = STANDARD.decode(params.split_once(':').unwrap().1).unwrap();
        assert_eq!(
            verifier_with_salt(POSTGRES_PASSWORD, &salt, 4096).unwrap(),
            from_postgres
        );
        assert!(verify_password(from_postgres, POSTGRES_PASSWORD));
        assert!(!verify_password(from_postgres, "wrong"));
    }

    const POSTGRES_PASSWORD: &str = "Xk3v9QmZ2pL7wN4tR8yB1cD6fG0hJ5sA";
    const POSTGRES_VERIFIER: &str = "SCRAM-SHA-256$4096:Cv7wSrYdYIQuxIiAzQucZA==$\
        UFzpOrozNJzDULAjOARa3NCfpnt3t+tQCKWQwtjQmBE=:mm9TKrwwLiCtjsA0fd8KIHOv9lmOOa89T5aQMR+Ujpg=";

    #[test]
    fn rejects_passwords_that_would_need_saslprep() {
        for bad in [
            "",
            "pässword",
            "tab\there",
            "new\nline",
            "nul\0",
            "del\u{7f}",
            "\u{a0}nbsp",
        ] {
            assert_eq!(
                scram_sha256_verifier(bad),
                Err(ScramError::UnsupportedPassword),
                "{bad:?}"
            );
        }
        assert!(scram_sha256_verifier(" !~ printable ASCII incl. space ").is_ok());
    }

    #[test]
    fn rejects_degenerate_parameters() {
        assert_eq!(
            verifier_with_salt("pw", &[], 4096),
            Err(ScramError::EmptySalt)
        );
        assert_eq!(
            verifier_with_salt("pw", &[1], 0),
            Err(ScramError::ZeroIterations)
        );
    }

    #[test]
    fn malformed_verifiers_never_match() {
        let good = verifier_with_salt("pw", b"0123456789abcdef", 16).unwrap();
        assert!(verify_password(&good, "pw"));
        let (head, _) = good.rsplit_once(':').unwrap();
        for bad in [
            String::new(),
            "md5abcdef".to_owned(),
            good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
            good.replacen("$16:", "$0:", 1),
            good.replacen("$16:", "$x:", 1),
            format!("{head}:"),
            format!("{head}:AAAA"),
            good.replacen('$', "", 1),
        ] {
            assert!(!verify_password(&bad, "pw"), "{bad:?}");
        }
    }
}
