//! Value checks shared by the context builders: absolute UTF-8 paths, addresses, user names.
//! Each returns the value as a string ready for quoting, or an `Invalid` error naming the setting.

use std::{net::IpAddr, path::Path};

use super::RenderError;

/// An absolute, UTF-8 path without control characters (a newline would end the config line).
pub fn abs_path<'a>(what: &str, path: &'a Path) -> Result<&'a str, RenderError> {
    let s = path
        .to_str()
        .ok_or_else(|| RenderError::invalid(what, path.to_string_lossy(), "is not valid UTF-8"))?;
    if !path.is_absolute() {
        return Err(RenderError::invalid(what, s, "must be an absolute path"));
    }
    if s.chars().any(char::is_control) {
        return Err(RenderError::invalid(
            what,
            s,
            "must not contain control characters (newline, NUL, ...)",
        ));
    }
    Ok(s)
}

/// `*`, an IP address, or a host name made of letters, digits, `.` and `-`.
pub fn listen_address<'a>(what: &str, addr: &'a str) -> Result<&'a str, RenderError> {
    let host_name = !addr.is_empty()
        && addr.len() <= 253
        && !addr.starts_with(['-', '.'])
        && addr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if addr == "*" || addr.parse::<IpAddr>().is_ok() || host_name {
        Ok(addr)
    } else {
        Err(RenderError::invalid(
            what,
            addr,
            "must be \"*\", an IP address or a host name",
        ))
    }
}

/// A system user or group name as useradd accepts it, which also needs no quoting anywhere.
pub fn system_user<'a>(what: &str, name: &'a str) -> Result<&'a str, RenderError> {
    if crate::settings::is_system_user(name) {
        Ok(name)
    } else {
        Err(RenderError::invalid(
            what,
            name,
            "use a-z, 0-9, _ and -, starting with a letter or _ (at most 32)",
        ))
    }
}

/// A role name usable unquoted in comma-separated lists (PgBouncer's admin_users).
pub fn plain_role<'a>(what: &str, name: &'a str) -> Result<&'a str, RenderError> {
    if crate::settings::is_plain_identifier(name) {
        Ok(name)
    } else {
        Err(RenderError::invalid(
            what,
            name,
            "use a-z, 0-9 and _, starting with a letter or _",
        ))
    }
}

/// Wrap a `QuoteError` as an `Invalid` naming the setting.
pub fn quoted(
    what: &str,
    value: &str,
    r: Result<String, crate::pg::quote::QuoteError>,
) -> Result<String, RenderError> {
    r.map_err(|e| RenderError::invalid(what, value, e.to_string()))
}
