//! One `pg_dump -Fc` run, in the order that keeps a crash from leaving a dump that looks complete
//! but is not: stream into a dotted `.partial` file while hashing, fsync, check the exit status,
//! read the archive back with `pg_restore --list`, write the sidecar under a temp name, rename the
//! dump, rename the sidecar last. Any failure removes what this run wrote.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::{
    BackupError, Backups, Login, io_err,
    store::{self, BackupFile, Checksum},
};

/// Removes the files a run wrote unless it finished.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Backups {
    /// Dump `database` now, as `login`. Blocks until pg_dump is done; call from a blocking
    /// context (the API uses `spawn_blocking`).
    pub fn dump(&self, database: &str, login: &Login) -> Result<BackupFile, BackupError> {
        let dir = self.dir_of(database);
        store::ensure_dir(&dir)?;
        store::adopt(&self.root, &dir)?;
        let (final_path, partial, mut file) = reserve(&dir)?;
        let file_name = final_path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let sidecar = store::sidecar_path(&final_path);
        let sidecar_partial = store::partial_path(&sidecar);
        let mut cleanup = Cleanup(vec![partial.clone(), sidecar_partial.clone()]);
        store::adopt(&self.root, &partial)?;

        let (mut cmd, _pgpass) = self.client("pg_dump", login, database)?;
        cmd.arg("--format=custom")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (sha256, size_bytes) = stream(&mut cmd, &mut file, &partial, database)?;
        file.sync_all().map_err(io_err(&partial))?;
        drop(file);
        check_archive(&self.bin.tool("pg_restore"), &partial, database)?;

        let mut side = store::create_private(&sidecar_partial)?;
        store::adopt(&self.root, &sidecar_partial)?;
        side.write_all(store::sidecar_text(&sha256, &file_name).as_bytes())
            .and_then(|()| side.sync_all())
            .map_err(io_err(&sidecar_partial))?;
        drop(side);
        std::fs::rename(&partial, &final_path).map_err(io_err(&final_path))?;
        // From here the dump is complete; a crash before the next rename leaves it unverified.
        cleanup.0 = vec![sidecar_partial.clone()];
        std::fs::rename(&sidecar_partial, &sidecar).map_err(io_err(&sidecar))?;
        cleanup.0.clear();
        store::sync_dir(&dir)?;
        Ok(BackupFile {
            database: database.to_string(),
            created_at: store::parse_file_name(&file_name).unwrap_or_else(Utc::now),
            file_name,
            path: final_path,
            size_bytes,
            sha256: Some(sha256),
            checksum: Checksum::Verified,
        })
    }
}

/// A final name no other run holds, and its partial file, created here so two runs in the same
/// millisecond cannot share one.
fn reserve(dir: &Path) -> Result<(PathBuf, PathBuf, std::fs::File), BackupError> {
    let mut last = None;
    for _ in 0..50 {
        let final_path = dir.join(store::file_name_for(Utc::now()));
        let partial = store::partial_path(&final_path);
        if !final_path.exists() {
            match store::create_private(&partial) {
                Ok(f) => return Ok((final_path, partial, f)),
                Err(e) => last = Some(e),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(last.unwrap_or_else(|| {
        BackupError::Invalid(format!("no free backup name in {}", dir.display()))
    }))
}

/// Run pg_dump with its output copied into `file` and hashed on the way; returns the hash and
/// size once pg_dump has exited successfully.
fn stream(
    cmd: &mut Command,
    file: &mut std::fs::File,
    partial: &Path,
    database: &str,
) -> Result<(String, u64), BackupError> {
    let program = PathBuf::from(cmd.get_program());
    let mut child = cmd.spawn().map_err(io_err(&program))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Read on a thread of its own: a full stderr pipe would stall pg_dump while we wait on stdout.
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let copied: Result<(), BackupError> = loop {
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
                if let Err(e) = file.write_all(&buf[..n]) {
                    break Err(io_err(partial)(e));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(io_err(&program)(e)),
        }
    };
    if copied.is_err() {
        // Stop pg_dump rather than let it run on into a pipe nobody reads.
        let _ = child.kill();
    }
    drop(stdout);
    let status = child.wait().map_err(io_err(&program))?;
    let stderr = errors.join().unwrap_or_default();
    copied?;
    if !status.success() {
        return Err(BackupError::Dump {
            database: database.to_string(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// `pg_restore --list` parses the archive header and table of contents with the version-matched
/// tool, so a file that is not an archive this server's tools can restore is never kept. (The
/// data itself is vouched for by pg_dump's exit status and the checksum taken while writing.)
fn check_archive(pg_restore: &Path, file: &Path, database: &str) -> Result<(), BackupError> {
    let out = Command::new(pg_restore)
        .arg("--list")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(io_err(pg_restore))?;
    if out.status.success() {
        return Ok(());
    }
    Err(BackupError::Unreadable {
        database: database.to_string(),
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
