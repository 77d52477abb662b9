//! PostgreSQL quoting: SQL identifiers, SQL string literals and postgresql.conf string values.
//!
//! Every value that reaches SQL text or a configuration file goes through one of these functions,
//! so the rules live in one place and are tested against hostile input. Values PostgreSQL cannot
//! carry at all (a NUL byte anywhere, a line break in a config file) are refused rather than
//! silently altered, because an altered name is a different name.

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer ones are silently truncated,
/// which would make two distinct names collide, so they are refused instead.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why a value cannot be quoted for its target syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("contains a NUL byte, which PostgreSQL cannot store")]
    Nul,
    #[error("contains a line break, which this syntax cannot carry")]
    LineBreak,
    #[error("is empty, which is not a valid identifier")]
    Empty,
    #[error("is {0} bytes long; PostgreSQL would truncate it to {MAX_IDENTIFIER_BYTES}")]
    TooLong(usize),
}

/// A double-quoted SQL identifier (`"name"`, embedded `"` doubled). Always quotes, so case and
/// reserved words are preserved exactly.
pub fn quote_ident(name: &str) -> Result<String, QuoteError> {
    if name.is_empty() {
        return Err(QuoteError::Empty);
    }
    if name.contains('\0') {
        return Err(QuoteError::Nul);
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(QuoteError::TooLong(name.len()));
    }
    Ok(wrap('"', &name.replace('"', "\"\""), ""))
}

/// A SQL string literal, correct whatever `standard_conforming_strings` says: plain `'...'` when
/// the value has no backslash, otherwise the `E'...'` form with backslashes doubled.
pub fn quote_literal(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul);
    }
    let doubled = value.replace('\'', "''");
    if value.contains('\\') {
        Ok(wrap('\'', &doubled.replace('\\', "\\\\"), "E"))
    } else {
        Ok(wrap('\'', &doubled, ""))
    }
}

/// A string value for postgresql.conf: single-quoted, `'` and `\` doubled (the GUC file lexer
/// treats backslash as an escape). A line break would end the setting early, so it is refused.
pub fn conf_value(value: &str) -> Result<String, QuoteError> {
    if value.contains('\0') {
        return Err(QuoteError::Nul);
    }
    if value.contains(['\n', '\r']) {
        return Err(QuoteError::LineBreak);
    }
    let escaped = value.replace('\\', "\\\\").replace('\'', "''");
    Ok(wrap('\'', &escaped, ""))
}

fn wrap(quote: char, inner: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(inner.len() + prefix.len() + 2);
    out.push_str(prefix);
    out.push(quote);
    out.push_str(inner);
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_plain_and_reserved_words_are_quoted() {
        assert_eq!(quote_ident("tenant_ab12").unwrap(), "\"tenant_ab12\"");
        assert_eq!(quote_ident("select").unwrap(), "\"select\"");
        assert_eq!(quote_ident("MixedCase").unwrap(), "\"MixedCase\"");
    }

    #[test]
    fn ident_embedded_quotes_are_doubled() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("\"; DROP TABLE x; --").unwrap(),
            "\"\"\"; DROP TABLE x; --\""
        );
    }

    #[test]
    fn ident_backslash_newline_and_unicode_pass_through_inside_quotes() {
        assert_eq!(quote_ident("a\\b").unwrap(), "\"a\\b\"");
        assert_eq!(quote_ident("a\nb").unwrap(), "\"a\nb\"");
        assert_eq!(quote_ident("tëst_名前").unwrap(), "\"tëst_名前\"");
    }

    #[test]
    fn ident_refuses_nul_empty_and_truncation() {
        assert_eq!(quote_ident("a\0b"), Err(QuoteError::Nul));
        assert_eq!(quote_ident(""), Err(QuoteError::Empty));
        assert!(quote_ident(&"x".repeat(63)).is_ok());
        assert_eq!(quote_ident(&"x".repeat(64)), Err(QuoteError::TooLong(64)));
        // Multi-byte characters count in bytes, as PostgreSQL counts them.
        assert_eq!(quote_ident(&"é".repeat(32)), Err(QuoteError::TooLong(64)));
    }

    #[test]
    fn literal_quotes_are_doubled() {
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(
            quote_literal("'; DROP ROLE x; --").unwrap(),
            "'''; DROP ROLE x; --'"
        );
        assert_eq!(quote_literal("").unwrap(), "''");
    }

    #[test]
    fn literal_with_backslash_uses_escape_string_form() {
        assert_eq!(quote_literal("a\\b").unwrap(), "E'a\\\\b'");
        assert_eq!(quote_literal("\\'").unwrap(), "E'\\\\'''");
        // A trailing backslash must not escape the closing quote.
        assert_eq!(quote_literal("x\\").unwrap(), "E'x\\\\'");
    }

    #[test]
    fn literal_keeps_newlines_and_unicode_and_refuses_nul() {
        assert_eq!(quote_literal("a\nb").unwrap(), "'a\nb'");
        assert_eq!(quote_literal("mot de passe ☃").unwrap(), "'mot de passe ☃'");
        assert_eq!(quote_literal("a\0"), Err(QuoteError::Nul));
    }

    #[test]
    fn conf_value_escapes_quotes_and_backslashes() {
        assert_eq!(
            conf_value("/etc/pgaas/tls/server.crt").unwrap(),
            "'/etc/pgaas/tls/server.crt'"
        );
        assert_eq!(conf_value("it's").unwrap(), "'it''s'");
        assert_eq!(conf_value("C:\\x").unwrap(), "'C:\\\\x'");
        assert_eq!(conf_value("x\\").unwrap(), "'x\\\\'");
        assert_eq!(
            conf_value("a b # not a comment").unwrap(),
            "'a b # not a comment'"
        );
        assert_eq!(conf_value("ünï").unwrap(), "'ünï'");
    }

    #[test]
    fn conf_value_refuses_line_breaks_and_nul() {
        assert_eq!(conf_value("a\nssl = off"), Err(QuoteError::LineBreak));
        assert_eq!(conf_value("a\rb"), Err(QuoteError::LineBreak));
        assert_eq!(conf_value("a\0b"), Err(QuoteError::Nul));
    }
}
