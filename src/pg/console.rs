//! A minimal client for PgBouncer's admin console over its unix socket, enough to send `RELOAD;`.
//!
//! The API runs as its own system user and may not signal PgBouncer (a process of another user)
//! after rewriting its auth files, but it may log in to the console: PgBouncer's hba admits it by
//! peer (`local pgbouncer pgaas peer`), its auth file lists it with an empty secret, and
//! `admin_users` includes it. The protocol needed is small: a startup message (protocol 3.0,
//! user, database `pgbouncer`), AuthenticationOk, then a simple query and its answers up to
//! ReadyForQuery. Any ErrorResponse is reported with PgBouncer's message.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use super::pgbouncer::{PoolerReload, ReloadError};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("PgBouncer's console socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("PgBouncer refused: {0}")]
    Server(String),
    #[error(
        "PgBouncer asked for authentication method {0}; the console user must be admitted by peer in pgbouncer_hba.conf"
    )]
    Auth(i32),
    #[error("unexpected message {0:?} from PgBouncer")]
    Protocol(char),
}

/// Reloads PgBouncer by `RELOAD;` on its admin console, as `user` (the OS user running this).
#[derive(Clone, Debug)]
pub struct ConsoleReload {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
}

impl ConsoleReload {
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Run one simple-query command on the console; returns the command tags it answered.
    pub fn command(&self, sql: &str) -> Result<Vec<String>, ConsoleError> {
        let path = self.socket_path();
        let io_err = |source| ConsoleError::Io {
            path: path.clone(),
            source,
        };
        let mut s = UnixStream::connect(&path).map_err(io_err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err)?;
        s.write_all(&startup(&self.user)).map_err(io_err)?;
        loop {
            let (tag, body) = read_message(&mut s).map_err(io_err)?;
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(
                        body.get(..4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0xff; 4]),
                    );
                    if code != 0 {
                        return Err(ConsoleError::Auth(code));
                    }
                }
                b'E' => return Err(ConsoleError::Server(error_message(&body))),
                b'Z' => break,
                b'S' | b'K' | b'N' => {}
                other => return Err(ConsoleError::Protocol(other as char)),
            }
        }
        let mut query = vec![b'Q'];
        query.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        query.extend_from_slice(sql.as_bytes());
        query.push(0);
        s.write_all(&query).map_err(io_err)?;
        let mut tags = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = read_message(&mut s).map_err(io_err)?;
            match tag {
                b'C' => tags.push(
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned(),
                ),
                b'E' => error = Some(error_message(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
        match error {
            Some(e) => Err(ConsoleError::Server(e)),
            None => Ok(tags),
        }
    }
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
    for (k, v) in [
        ("user", user),
        ("database", "pgbouncer"),
        ("application_name", "pgaas"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

fn read_message(s: &mut UnixStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if !(4..=1 << 20).contains(&len) {
        return Err(io::Error::other(format!("bad message length {len}")));
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The `M` (message) field of an ErrorResponse.
fn error_message(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_else(|| "unknown error".into())
}

impl PoolerReload for ConsoleReload {
    fn reload(&self) -> Result<(), ReloadError> {
        // Not running: nothing holds old rules; it reads the files when it starts.
        if !self.socket_path().exists() {
            return Ok(());
        }
        self.command("RELOAD;")
            .map(|_| ())
            .map_err(ReloadError::Console)
    }

    fn reconnect(&self) -> Result<(), ReloadError> {
        if !self.socket_path().exists() {
            return Ok(());
        }
        self.command("RECONNECT;")
            .map(|_| ())
            .map_err(ReloadError::Console)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_message_is_protocol_3_with_user_and_console_database() {
        let m = startup("pgaas");
        assert_eq!(
            i32::from_be_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(&m[4..8], &196_608i32.to_be_bytes());
        let text = String::from_utf8_lossy(&m[8..]);
        assert!(
            text.contains("user\0pgaas\0database\0pgbouncer\0"),
            "{text:?}"
        );
        assert!(m.ends_with(&[0, 0]));
    }

    #[test]
    fn error_fields_yield_the_message() {
        assert_eq!(
            error_message(b"SERROR\0C08P01\0Mnot allowed\0\0"),
            "not allowed"
        );
    }

    #[test]
    fn a_missing_socket_means_nothing_to_reload() {
        let dir = tempfile::tempdir().unwrap();
        let c = ConsoleReload {
            socket_dir: dir.path().into(),
            port: 1,
            user: "x".into(),
        };
        assert!(c.reload().is_ok());
        assert!(matches!(
            c.command("SHOW VERSION;"),
            Err(ConsoleError::Io { .. })
        ));
    }
}
