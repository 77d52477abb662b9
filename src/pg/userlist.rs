//! PgBouncer's auth file (`userlist.txt`): the tenants' SCRAM verifiers, exactly as `pg_authid`
//! holds them (PgBouncer logs in to the server with the keys the client's proof reveals, so the
//! two must be byte-identical), never a plaintext password and never an empty secret.
//!
//! Three of PgBouncer's habits shape the file. It accepts a SCRAM login against an empty secret
//! (it builds a verifier of the empty password). It stops reading at a malformed line and leaves
//! every user after it with an empty password. And it never forgets a user it has loaded: one
//! taken out of the file stays known, with an empty password, until PgBouncer restarts. So:
//! console users (who log in by peer only) get the verifier of a random password nobody is told;
//! entries that are not well-formed verifiers are left out; and a role taken out of the file is
//! kept as a "removed" entry with an unusable verifier for as long as the same PgBouncer process
//! runs (the file names the process it was written for).

use std::path::Path;

/// The marker before a removed role's entry.
const REMOVED: &str = "; removed";
/// The header line naming the PgBouncer process the file was written for.
const PROCESS: &str = "; pgbouncer process: ";

/// What the auth file is made from.
pub struct Userlist<'a> {
    /// Console users (peer-only): each gets an unusable verifier, kept across rewrites.
    pub console_users: &'a [String],
    /// `(role, verifier)` of every tenant, from `pg_authid`.
    pub secrets: &'a [(String, String)],
    /// The file as it is now, if any.
    pub existing: Option<&'a str>,
    /// The running PgBouncer (see [`process_identity`]); `None` when none runs.
    pub process: Option<&'a str>,
}

/// One entry of a file pgaas wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    user: String,
    secret: String,
    removed: bool,
}

impl Userlist<'_> {
    pub fn render(&self) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from(
            "; pgaas managed file: SCRAM verifiers of tenant roles, unusable ones for the \
             console's peer-only users and for removed roles\n",
        );
        if let Some(p) = self.process {
            out.push_str(&format!("{PROCESS}{p}\n"));
        }
        let (old_process, old) = self.existing.map(parse).unwrap_or_default();
        let kept_secret = |user: &str| {
            old.iter()
                .find(|e| e.user == user && is_scram_verifier(&e.secret))
                .map(|e| e.secret.clone())
        };
        let mut listed: Vec<&str> = Vec::new();
        for user in self.console_users {
            let secret = kept_secret(user).unwrap_or_else(unusable_verifier);
            out.push_str(&format!("{} {}\n", q(user), q(&secret)));
            listed.push(user);
        }
        for (role, verifier) in self.secrets {
            if listed.contains(&role.as_str()) {
                continue;
            }
            if !is_scram_verifier(verifier) {
                tracing::warn!(
                    role,
                    "left out of PgBouncer's auth file: its stored password is not a SCRAM verifier"
                );
                continue;
            }
            out.push_str(&format!("{} {}\n", q(role), q(verifier)));
            listed.push(role);
        }
        // Roles the running PgBouncer has loaded and that are gone now: it still knows them.
        let same_process = self.process.is_some() && old_process.as_deref() == self.process;
        if same_process {
            for e in old.iter().filter(|e| !listed.contains(&e.user.as_str())) {
                let secret = if e.removed && is_scram_verifier(&e.secret) {
                    e.secret.clone()
                } else {
                    unusable_verifier()
                };
                out.push_str(&format!("{REMOVED}\n{} {}\n", q(&e.user), q(&secret)));
            }
        }
        out
    }
}

/// The process a file was written for, and its entries.
fn parse(text: &str) -> (Option<String>, Vec<Entry>) {
    fn field(s: &str) -> Option<(String, &str)> {
        let mut rest = s.trim_start().strip_prefix('"')?;
        let mut out = String::new();
        loop {
            let end = rest.find('"')?;
            out.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(r) => {
                    out.push('"');
                    rest = r;
                }
                None => return Some((out, rest)),
            }
        }
    }
    let mut process = None;
    let mut entries = Vec::new();
    let mut removed = false;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix(PROCESS) {
            process = Some(p.trim().to_string());
        } else if line.trim() == REMOVED {
            removed = true;
        } else if let Some((user, rest)) = field(line) {
            if let Some((secret, _)) = field(rest) {
                entries.push(Entry {
                    user,
                    secret,
                    removed,
                });
            }
            removed = false;
        }
    }
    (process, entries)
}

/// `(user, secret)` of every entry, removed ones included.
pub fn entries(text: &str) -> Vec<(String, String)> {
    parse(text)
        .1
        .into_iter()
        .map(|e| (e.user, e.secret))
        .collect()
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 fields, as PostgreSQL
/// stores it (and nothing PgBouncer would read as a plaintext password).
pub fn is_scram_verifier(v: &str) -> bool {
    let b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    };
    let Some(rest) = v.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((iter_salt, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iter, salt)), Some((stored, server))) =
        (iter_salt.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    iter.parse::<u32>().is_ok_and(|n| n > 0) && b64(salt) && b64(stored) && b64(server)
}

/// The verifier of a random password nobody is told: a well-formed secret no client can match.
fn unusable_verifier() -> String {
    let password = hex::encode(crate::model::os_random_bytes::<32>());
    super::scram::scram_sha256_verifier(&password)
        .expect("a hex password has nothing SCRAM's normalisation refuses")
}

/// Which PgBouncer process runs now: its pid (from the pid file) and its start time (from
/// /proc), so a restart, even under the same pid, reads as another process.
pub fn process_identity(pidfile: &Path) -> Option<String> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) comes after the command name, which is in parentheses.
    let after = stat.rsplit_once(')')?.1;
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy";

    fn console() -> Vec<String> {
        vec!["postgres".to_string(), "pgaas".to_string()]
    }

    #[test]
    fn verifiers_are_quoted_and_no_secret_is_ever_empty() {
        let console = console();
        let secrets = [("tenant_0011223344556677".to_string(), VERIFIER.to_string())];
        let text = Userlist {
            console_users: &console,
            secrets: &secrets,
            existing: None,
            process: Some("10:99"),
        }
        .render();
        assert!(text.contains(&format!("\"tenant_0011223344556677\" \"{VERIFIER}\"\n")));
        assert!(!text.contains("\"\"\n"), "an empty secret:\n{text}");
        let all = entries(&text);
        assert_eq!(all.len(), 3);
        for (user, secret) in &all {
            assert!(is_scram_verifier(secret), "{user}: {secret}");
        }
        // The console's secrets are kept across rewrites, so the file changes only with tenants.
        let again = Userlist {
            console_users: &console,
            secrets: &secrets,
            existing: Some(&text),
            process: Some("10:99"),
        }
        .render();
        assert_eq!(again, text);
        let fresh = Userlist {
            console_users: &console,
            secrets: &[],
            existing: None,
            process: None,
        }
        .render();
        assert_ne!(entries(&fresh)[0].1, all[0].1);
    }

    #[test]
    fn removed_roles_stay_unusable_while_the_same_pgbouncer_runs() {
        let console = console();
        let secrets = [("tenant_0011223344556677".to_string(), VERIFIER.to_string())];
        let before = Userlist {
            console_users: &console,
            secrets: &secrets,
            existing: None,
            process: Some("10:99"),
        }
        .render();
        let after = Userlist {
            console_users: &console,
            secrets: &[],
            existing: Some(&before),
            process: Some("10:99"),
        }
        .render();
        let removed = entries(&after)
            .into_iter()
            .find(|(u, _)| u == "tenant_0011223344556677")
            .expect("the removed role is still listed");
        assert!(is_scram_verifier(&removed.1));
        assert_ne!(removed.1, VERIFIER, "its real verifier is gone");
        // Stable from then on.
        let again = Userlist {
            console_users: &console,
            secrets: &[],
            existing: Some(&after),
            process: Some("10:99"),
        }
        .render();
        assert_eq!(again, after);
        // A new PgBouncer process never loaded it: it is dropped.
        let restarted = Userlist {
            console_users: &console,
            secrets: &[],
            existing: Some(&after),
            process: Some("11:500"),
        }
        .render();
        assert!(
            !restarted.contains("tenant_0011223344556677"),
            "{restarted}"
        );
    }

    #[test]
    fn malformed_verifiers_are_left_out() {
        for bad in [
            "",
            "md5abcdef",
            "plaintext",
            "SCRAM-SHA-256$4096:c2FsdA==$a\"b:c",
            "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy\nZXI=",
            "SCRAM-SHA-256$x:c2FsdA==$a2V5:c2VydmVy",
            "SCRAM-SHA-256$4096:$a2V5:c2VydmVy",
        ] {
            let secrets = [("tenant_00112233".to_string(), bad.to_string())];
            let text = Userlist {
                console_users: &[],
                secrets: &secrets,
                existing: None,
                process: None,
            }
            .render();
            assert!(!text.contains("tenant_00112233"), "{bad:?}:\n{text}");
        }
    }

    #[test]
    fn the_running_process_is_named_by_pid_and_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pgbouncer.pid");
        std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
        let id = process_identity(&pidfile).unwrap();
        assert!(id.starts_with(&format!("{}:", std::process::id())), "{id}");
        assert_eq!(process_identity(&dir.path().join("missing.pid")), None);
    }
}
