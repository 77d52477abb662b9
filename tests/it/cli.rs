//! The `pgaas` binary as an operator runs it.

use std::path::Path;

use crate::harness::{free_port, pgaas_bin, temp_state_dir};

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("pgaas.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A settings file that points every managed path under `root`.
fn rooted_config(root: &Path) -> String {
    format!(
        "public_host: db.example.com\npostgres:\n  version: 15\n  memory_mb: 4096\n  config_dir: {r}/etc/postgresql/15/main\npgbouncer:\n  config_dir: {r}/etc/pgbouncer\npaths:\n  systemd_dir: {r}/etc/systemd/system\n",
        r = root.display()
    )
}

#[test]
fn render_root_writes_the_whole_file_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "public_host: db.example.com\npostgres:\n  version: 15\n  memory_mb: 4096\n",
    );
    let root = dir.path().join("out");
    let out = pgaas_bin()
        .args(["render", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "etc/postgresql/15/main/conf.d/pgaas.conf",
        "etc/postgresql/15/main/pg_hba.conf",
        "etc/postgresql/15/main/pg_ident.conf",
        "etc/pgbouncer/pgbouncer.ini",
        "etc/pgbouncer/pgbouncer_hba.conf",
        "etc/systemd/system/pgaas-api.service",
        "etc/systemd/system/pgaas-backup.timer",
        "etc/systemd/system/pgaas-backup.service",
        "etc/systemd/system/pgaas-cert-renew.timer",
        "etc/systemd/system/pgaas-cert-renew.service",
    ] {
        assert!(root.join(f).is_file(), "{f} not rendered");
    }
    let conf =
        std::fs::read_to_string(root.join("etc/postgresql/15/main/conf.d/pgaas.conf")).unwrap();
    assert!(conf.contains("shared_buffers = 1024MB"), "{conf}");
    assert!(conf.contains("password_encryption = 'scram-sha-256'"));
    assert!(
        !conf
            .lines()
            .any(|l| l.trim_start().starts_with("log_statement")),
        "{conf}"
    );
    // A second run changes nothing.
    let out = pgaas_bin()
        .args(["render", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!stdout.contains(" changed "), "{stdout}");
    assert_eq!(stdout.matches("unchanged").count(), 18, "{stdout}");
}

#[test]
fn render_check_reports_a_hand_edit_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &rooted_config(dir.path()));
    let run = |check: bool| {
        let mut cmd = pgaas_bin();
        cmd.args(["render", "--config"]).arg(&cfg);
        if check {
            cmd.arg("--check");
        }
        cmd.output().unwrap()
    };
    assert!(run(false).status.success());
    let clean = run(true);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );

    let conf = dir.path().join("etc/postgresql/15/main/conf.d/pgaas.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("host all all 0.0.0.0/0 trust\n");
    std::fs::write(&conf, text).unwrap();
    let drift = run(true);
    assert_eq!(drift.status.code(), Some(1));
    let diff = String::from_utf8_lossy(&drift.stdout);
    assert!(
        diff.contains("+host all all 0.0.0.0/0 trust")
            || diff.contains("-host all all 0.0.0.0/0 trust"),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("--- {} (on disk)", conf.display())),
        "the diff names the file: {diff}"
    );
    assert!(String::from_utf8_lossy(&drift.stderr).contains("pgaas render"));

    // render restores it, and keeps the edited file as the previous version.
    assert!(run(false).status.success());
    assert_eq!(run(true).status.code(), Some(0));
}

#[test]
fn config_check_names_the_file_and_line_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "postgres:\n  port: 5432\n  prot: 1\napi:\n  listen: nowhere\n",
    );
    let out = pgaas_bin()
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3: postgres.prot: unknown key", cfg.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:5: api.listen", cfg.display())),
        "{err}"
    );

    // A file with no settings in it is the wrong file, not a valid one.
    for empty in ["", "\n  \n", "# pgaas settings\n---\n"] {
        let cfg = write_config(dir.path(), empty);
        let out = pgaas_bin()
            .args(["config", "check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{empty:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&cfg.display().to_string()) && err.contains("settings file"),
            "{empty:?}: {err}"
        );
    }

    let good = write_config(dir.path(), "public_host: db.example.com\n");
    let out = pgaas_bin()
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dev_creates_then_reuses_its_cluster_and_recovers_from_a_half_made_one() {
    let state = temp_state_dir("dev-cli");
    // A killed earlier run left a half-made initdb directory behind.
    std::fs::create_dir_all(state.join("pgdata.initdb-tmp/base")).unwrap();
    let run = || {
        pgaas_bin()
            .current_dir(&state)
            .args([
                "dev",
                "--exit-after-start",
                "--config",
                "/dev/null",
                "--state-dir",
            ])
            .arg(&state)
            .arg("--pg-port")
            .arg(free_port().to_string())
            .arg("--pgbouncer-port")
            .arg(free_port().to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("creating a PostgreSQL"), "{stderr}");
    assert!(
        stdout.contains("sslmode=verify-full sslrootcert="),
        "{stdout}"
    );
    assert!(stdout.contains("API key (shown once"), "{stdout}");
    // The summary's CLI line names a program that runs (this binary is not on PATH).
    let cli_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("CLI:"))
        .unwrap();
    let program = cli_line.split_whitespace().nth(1).unwrap();
    let version = std::process::Command::new(program)
        .arg("--version")
        .output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "{program} from {cli_line:?} does not run"
    );
    assert!(!state.join("pgdata.initdb-tmp").exists());

    let second = run();
    let stdout2 = String::from_utf8_lossy(&second.stdout);
    let stderr2 = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr2}");
    assert!(
        !stderr2.contains("creating a PostgreSQL"),
        "cluster was not reused: {stderr2}"
    );
    assert!(
        !stdout2.contains("API key (shown once"),
        "a second key was made: {stdout2}"
    );
}

#[test]
fn dev_names_a_taken_port() {
    let state = temp_state_dir("dev-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = pgaas_bin()
        .args([
            "dev",
            "--exit-after-start",
            "--config",
            "/dev/null",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--pg-port")
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn completions_and_man_pages_come_from_the_commands() {
    // bash completes a subcommand from the generated script.
    let script = pgaas_bin().args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgaas.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(pgaas db cr); COMP_CWORD=2; _pgaas pgaas cr db; echo \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "create");

    // One page per command, with every option and its help.
    let man = dir.path().join("man1");
    let out = pgaas_bin().arg("man").arg(&man).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(man.join("pgaas-db-create.1")).unwrap();
    assert!(page.contains(".TH pgaas-db-create 1"), "{page}");
    assert!(page.contains("friendly\\-name"), "{page}");
    assert!(page.contains("for listing by owner"), "{page}");
    for name in ["pgaas.1", "pgaas-restore.1", "pgaas-backup-status.1"] {
        assert!(man.join(name).exists(), "{name} missing");
    }
}

/// A `.env` in the working directory of a root-run command was read: a local user's file could
/// point `pgaas db list` at a server of its choosing, which then received the control DB
/// password. Only `--env-file` (or `pgaas dev`) reads one now.
#[test]
fn a_dotenv_in_the_working_directory_is_ignored_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "public_host: db.example.com\n");
    // A host the command would otherwise use, and a value that makes `config check` fail, so
    // whether the file was read shows in the exit code.
    std::fs::write(
        dir.path().join(".env"),
        "DB_HOST=192.0.2.1\nDB_PORT=not-a-port\n",
    )
    .unwrap();
    let check = |extra: &[&str]| {
        pgaas_bin()
            .current_dir(dir.path())
            .args(["config", "check", "--config"])
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    assert!(
        out.status.success(),
        "the working directory's .env was read: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = check(&["--env-file", ".env"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DB_PORT"), "{err}");

    let out = check(&["--env-file", "missing.env"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.env") && err.contains("does not exist"),
        "{err}"
    );
}

/// A restore instant with multibyte characters panicked the time parser (a byte index inside
/// "é"); it is a usage error like any other malformed instant.
#[test]
fn a_restore_time_with_multibyte_characters_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "public_host: db.example.com\n");
    for time in ["éé", "2026-11-29 14:32:00+é"] {
        let out = pgaas_bin()
            .args(["restore", "db_0123456789abcdef", "--time", time, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{time}: {err}");
        assert!(
            err.contains("is not a time with its offset") && !err.contains("panicked"),
            "{time}: {err}"
        );
    }
}
