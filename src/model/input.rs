//! Validated free-text fields that clients send to the API (a tenant's friendly name and owner
//! email), and the error that tells them what a valid value looks like. Validation lives here, in
//! the types, so the API, the CLI and the control DB all see the same rules.

use serde::{Deserialize, Serialize};

/// One invalid field: which one, and what would have been accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

pub const FRIENDLY_NAME_MAX_CHARS: usize = 100;

/// A human label for a tenant database, trimmed, 1 to 100 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FriendlyName(String);

/// Bidirectional overrides and isolates: not control characters to `char::is_control`, but they
/// reorder how a name is displayed, the classic way to make one entry look like another.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl FriendlyName {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "friendlyName";
        let name = input.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err(ValidationError::new(FIELD, "must not be empty"));
        }
        if chars > FRIENDLY_NAME_MAX_CHARS {
            return Err(ValidationError::new(
                FIELD,
                format!("must be at most {FRIENDLY_NAME_MAX_CHARS} characters (got {chars})"),
            ));
        }
        if name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
            return Err(ValidationError::new(
                FIELD,
                "must not contain control characters such as newlines or tabs",
            ));
        }
        Ok(Self(name.to_owned()))
    }
}

/// An owner's email address: a pragmatic syntax check, not RFC 5322 in full. The local part is
/// a dot-atom of ASCII (no quoted strings, no comments), the domain a dotted host name. The domain
/// is lowercased because it is case-insensitive; the local part is kept as given because, in
/// principle, it is not.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnerEmail(String);

pub const EMAIL_MAX_LEN: usize = 254;
const EMAIL_LOCAL_MAX_LEN: usize = 64;
const DNS_LABEL_MAX_LEN: usize = 63;

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

impl OwnerEmail {
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        const FIELD: &str = "ownerEmail";
        let bad = |why: &str| {
            ValidationError::new(
                FIELD,
                format!("must be an email address like name@example.com: {why}"),
            )
        };
        let email = input.trim();
        if email.is_empty() {
            return Err(bad("it is empty"));
        }
        if email.len() > EMAIL_MAX_LEN {
            return Err(bad("it is longer than 254 characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains spaces or control characters"));
        }
        let mut parts = email.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("it needs exactly one @"));
        };
        if local.is_empty() {
            return Err(bad("nothing before the @"));
        }
        if local.len() > EMAIL_LOCAL_MAX_LEN {
            return Err(bad("the part before the @ is longer than 64 characters"));
        }
        let dot_atom = local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext));
        if !dot_atom {
            return Err(bad(
                "the part before the @ may hold letters, digits, single dots (not first or last) \
                 and !#$%&'*+-/=?^_`{|}~",
            ));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(bad("the domain needs a dot, as in example.com"));
        }
        let labels_ok = labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= DNS_LABEL_MAX_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !labels_ok {
            return Err(bad(
                "each dot-separated part of the domain must be 1 to 63 letters, digits or \
                 hyphens, not starting or ending with a hyphen",
            ));
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
}

super::string_newtype!(FriendlyName);
super::string_newtype!(OwnerEmail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_name_is_trimmed() {
        assert_eq!(
            FriendlyName::parse("  My app  ").unwrap().as_str(),
            "My app"
        );
        assert_eq!(FriendlyName::parse("Café ☕").unwrap().as_str(), "Café ☕");
    }

    #[test]
    fn friendly_name_length_counts_characters_not_bytes() {
        assert!(FriendlyName::parse(&"é".repeat(100)).is_ok());
        let err = FriendlyName::parse(&"a".repeat(101)).unwrap_err();
        assert_eq!(err.field, "friendlyName");
        assert!(err.message.contains("at most 100"), "{}", err.message);
    }

    #[test]
    fn friendly_name_rejects_empty_and_control_characters() {
        for bad in [
            "",
            "   ",
            "\t\n",
            "a\nb",
            "a\0b",
            "a\u{7f}b",
            "a\u{1b}[31mred",
            "x\u{202E}gpj.exe",
        ] {
            let err = FriendlyName::parse(bad).unwrap_err();
            assert_eq!(err.field, "friendlyName", "{bad:?}");
        }
    }

    #[test]
    fn email_accepts_common_addresses_and_lowercases_the_domain() {
        assert_eq!(
            OwnerEmail::parse(" Jane.Doe+db@Example.COM ")
                .unwrap()
                .as_str(),
            "Jane.Doe+db@example.com"
        );
        assert!(OwnerEmail::parse("a@b.co").is_ok());
        assert!(OwnerEmail::parse("ops@mail.eu-west.example.org").is_ok());
        assert!(OwnerEmail::parse(&format!("{}@example.com", "a".repeat(64))).is_ok());
    }

    #[test]
    fn email_rejects_malformed_addresses() {
        let long_domain = format!("a@{}.com", vec!["b".repeat(63); 4].join("."));
        for bad in [
            "",
            "plainaddress",
            "@example.com",
            "a@",
            "a@@example.com",
            "a@b@example.com",
            "a@localhost",
            "a@example.",
            "a@.example.com",
            "a@exa mple.com",
            "a b@example.com",
            "a@example..com",
            "a@-example.com",
            "a@example-.com",
            "a@exam_ple.com",
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "\"a\"@example.com",
            "a\n@example.com",
            "a@example.com\r\nBcc: x@evil.com",
            "jöhn@example.com",
            "a@bücher.de",
            &format!("{}@example.com", "a".repeat(65)),
            &long_domain,
        ] {
            let err = OwnerEmail::parse(bad).unwrap_err();
            assert_eq!(err.field, "ownerEmail", "{bad:?}");
            assert!(err.message.contains("name@example.com"), "{}", err.message);
        }
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let email: OwnerEmail = serde_json::from_str("\"x@Example.com\"").unwrap();
        assert_eq!(email.as_str(), "x@example.com");
        assert!(serde_json::from_str::<OwnerEmail>("\"nope\"").is_err());
        assert!(serde_json::from_str::<FriendlyName>("\"\"").is_err());
        let error = ValidationError::new("ownerEmail", "bad");
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            serde_json::json!({"field": "ownerEmail", "message": "bad"})
        );
    }
}
