use std::path::PathBuf;

use super::*;

fn opts(file: Option<PathBuf>, env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        // A path that never exists, so the machine's /etc/pgaas/pgaas.yaml can't leak into tests.
        config_file: Some(file.unwrap_or_else(|| PathBuf::from("/nonexistent/pgaas.yaml"))),
        env_file: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: Vec::new(),
    }
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A secret file as pgaas and an operator following the README write it: 0600.
fn write_secret(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = write(dir, name, text);
    chmod(&p, 0o600);
    p
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_missing_explicit_file_is_an_error_but_defaults_alone_load() {
    let err = Settings::load(&opts(None, &[])).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].message.contains("cannot read"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let empty = write(&dir, "empty.yaml", "");
    let s = Settings::load(&opts(Some(empty), &[])).unwrap();
    assert_eq!(s.postgres.port, 5432);
    assert_eq!(s.control_db.name, "postgres_control");
    assert_eq!(s.tenants.default_max_connections, 20);
}

#[test]
fn every_problem_in_a_file_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "bad.yaml",
        "public_host: db.example.com\npostgres:\n  port: 5433\n  colour: blue\napi:\n  listen: 127.0.0.1:3000\n  bogus: 1\ntenants:\n  max_connections_cap: 100000\n",
    );
    let err = Settings::load(&opts(Some(file.clone()), &[])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "{}:4: postgres.colour: unknown key",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}:7: api.bogus: unknown key", file.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}:9: tenants.max_connections_cap",
            file.display()
        )),
        "{text}"
    );
    assert_eq!(err.0.len(), 3, "{text}");
}

#[test]
fn a_wrongly_typed_value_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "t.yaml", "postgres:\n  max_connections: lots\n");
    let err = Settings::load(&opts(Some(file), &[])).unwrap_err();
    assert_eq!(err.0[0].line, Some(2), "{err}");
    assert_eq!(err.0[0].key, "postgres.max_connections");
}

#[test]
fn yaml_syntax_errors_carry_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "t.yaml", "postgres:\n  port: 1\n bad: [\n");
    let err = Settings::load(&opts(Some(file), &[])).unwrap_err();
    assert!(err.0[0].line.is_some(), "{err}");
    assert!(err.0[0].message.starts_with("YAML syntax"), "{err}");
}

#[test]
fn environment_overrides_file_and_original_names_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "t.yaml",
        "postgres:\n  port: 5433\npublic_host: file.example.com\n",
    );
    let s = Settings::load(&opts(
        Some(file),
        &[
            ("PGAAS_POSTGRES__PORT", "6543"),
            ("PUBLIC_HOST", "db.example.com"),
            ("DB_PASSWORD", "123456"),
            ("DB_SSL", "true"),
            ("PORT", "3100"),
        ],
    ))
    .unwrap();
    assert_eq!(s.postgres.port, 6543);
    assert_eq!(s.public_host, "db.example.com");
    assert_eq!(s.control_db.password.as_ref().unwrap().expose(), "123456");
    assert!(s.control_db.ssl);
    assert_eq!(s.api.listen.to_string(), "0.0.0.0:3100");
}

#[test]
fn pgaas_variables_beat_original_names_and_flags_beat_both() {
    let mut o = opts(
        None,
        &[
            ("PUBLIC_HOST", "a.example.com"),
            ("PGAAS_PUBLIC_HOST", "b.example.com"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    o.config_file = Some(write(&dir, "e.yaml", ""));
    assert_eq!(Settings::load(&o).unwrap().public_host, "b.example.com");
    let o = o.flag("public_host", "c.example.com");
    assert_eq!(Settings::load(&o).unwrap().public_host, "c.example.com");
}

#[test]
fn unknown_environment_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "e.yaml", "");
    let err = Settings::load(&opts(Some(file), &[("PGAAS_POSTGRES__PROT", "1")])).unwrap_err();
    assert_eq!(err.0[0].source, Source::Env("PGAAS_POSTGRES__PROT".into()));
    assert!(err.to_string().contains("unknown key"), "{err}");
}

#[test]
fn the_variables_of_pgaas_tools_are_not_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "e.yaml", "");
    let vars = [("PGAAS_BIN", "/usr/bin/pgaas"), ("PGAAS_LOG", "debug")];
    Settings::load(&opts(Some(file), &vars)).unwrap();
}

#[test]
fn dotenv_file_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        ".env",
        "DB_HOST=control.example.com\nDB_NAME=ctl\nAPI_KEY=0123456789abcdef0123456789abcdef-from-dotenv\n",
    );
    let mut o = opts(Some(write(&dir, "e.yaml", "")), &[("DB_NAME", "from_env")]);
    o = o.env_file(dir.path().join(".env"));
    let s = Settings::load(&o).unwrap();
    assert_eq!(s.control_db.host, "control.example.com");
    assert_eq!(s.control_db.name, "from_env");
    assert!(s.api.api_key.is_some());
}

#[test]
fn a_dotenv_in_the_working_directory_is_not_read_unless_named() {
    // A command run as root from a directory another user controls must not take its `.env`
    // (it would send the control DB password to the server that file names).
    let o = LoadOptions::from_process(Some(PathBuf::from("/nonexistent/pgaas.yaml")));
    assert!(o.env_file.is_none(), "{o:?}");
    let dir = tempfile::tempdir().unwrap();
    write(&dir, ".env", "DB_HOST=192.0.2.1\n");
    let mut o = opts(Some(write(&dir, "e.yaml", "")), &[]);
    assert_eq!(
        Settings::load(&o).unwrap().control_db.host,
        "/var/run/postgresql"
    );
    o = o.env_file(dir.path().join(".env"));
    assert_eq!(Settings::load(&o).unwrap().control_db.host, "192.0.2.1");
}

#[test]
fn a_named_env_file_that_is_missing_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("prod.env");
    let o = opts(Some(write(&dir, "e.yaml", "")), &[]).env_file(missing.clone());
    let err = Settings::load(&o).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn secrets_never_show_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "s.yaml",
        "control_db:\n  password: hunter2-control\nadmin:\n  password: hunter2-admin\napi:\n  api_key: hunter2-api-key-0123456789abcdef0123\n",
    );
    let s = Settings::load(&opts(Some(file), &[])).unwrap();
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("***"));
}

#[test]
fn hostile_values_are_refused_not_rendered() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "h.yaml",
        "public_host: \"db.example.com\\nlisten_addresses = '*'\"\ncontrol_db:\n  name: \"x'; DROP TABLE y\"\ntls:\n  cert_file: \"relative/cert.pem\"\npostgres:\n  listen_addresses: [\"127.0.0.1\", \"a b\"]\n",
    );
    let err = Settings::load(&opts(Some(file), &[])).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "public_host",
        "control_db.name",
        "tls.cert_file",
        "postgres.listen_addresses",
    ] {
        assert!(keys.contains(&k), "{k} not refused: {err}");
    }
}

#[test]
fn line_lookup_follows_nesting() {
    let text = "a:\n  b: 1\nc:\n  b: 2\n  d:\n    e: 3\n";
    let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
    assert_eq!(layers::line_of(text, &p("c.b")), Some(4));
    assert_eq!(layers::line_of(text, &p("c.d.e")), Some(6));
    assert_eq!(layers::line_of(text, &p("a.b")), Some(2));
}

#[test]
fn every_secret_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_secret(
        &dir,
        "api-key",
        "0123456789abcdef0123456789abcdef-from-a-file\n",
    );
    let admin = write_secret(&dir, "admin", "admin-secret\n");
    let db = write_secret(&dir, "db", "db-secret\n");
    let empty = write(&dir, "t.yaml", "{}\n");
    let mut s = Settings::load(&opts(
        Some(empty.clone()),
        &[
            ("API_KEY_FILE", key.to_str().unwrap()),
            ("PG_ADMIN_PASSWORD_FILE", admin.to_str().unwrap()),
            ("DB_PASSWORD_FILE", db.to_str().unwrap()),
        ],
    ))
    .unwrap();
    assert!(
        s.api.api_key.is_none(),
        "read only by the commands that use it"
    );
    s.resolve_secret_files().unwrap();
    assert_eq!(
        s.api.api_key.as_ref().unwrap().expose(),
        "0123456789abcdef0123456789abcdef-from-a-file"
    );
    assert_eq!(s.admin.password.as_ref().unwrap().expose(), "admin-secret");
    assert_eq!(
        s.control_db_password().unwrap().unwrap().expose(),
        "db-secret"
    );
    // A secret and its file at once is ambiguous; a missing file is named.
    let err = Settings::load(&opts(
        Some(empty.clone()),
        &[
            ("API_KEY", "x".repeat(32).as_str()),
            ("API_KEY_FILE", key.to_str().unwrap()),
        ],
    ))
    .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    let mut s =
        Settings::load(&opts(Some(empty), &[("API_KEY_FILE", "/nonexistent/key")])).unwrap();
    let e = s.resolve_secret_files().unwrap_err();
    assert!(e.contains("/nonexistent/key"), "{e}");
}

#[test]
fn secret_files_others_may_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_secret(&dir, "db", "db-secret\n");
    assert_eq!(
        read_secret_file(&file).unwrap().unwrap().expose(),
        "db-secret"
    );
    for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
        chmod(&file, mode);
        let err = read_secret_file(&file).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let text = err.to_string();
        assert!(
            text.contains(&format!("chmod 600 {}", file.display())),
            "{text}"
        );
        assert!(text.contains(&format!("{mode:04o}")), "{text}");
        // The commands that read `*_FILE` settings say the same.
        let mut s = Settings::load(&opts(
            Some(write(&dir, "t.yaml", "{}\n")),
            &[("API_KEY_FILE", file.to_str().unwrap())],
        ))
        .unwrap();
        let e = s.resolve_secret_files().unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
    }
    chmod(&file, 0o400);
    read_secret_file(&file).unwrap().unwrap();
}

#[test]
fn systemd_credentials_are_read_whatever_their_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "control-db-password", "pw\n");
    chmod(&file, 0o644);
    check_secret_mode(&file, 0o100644, Some(dir.path())).unwrap();
    check_secret_mode(
        &file,
        0o100644,
        Some(std::path::Path::new("/run/credentials/x")),
    )
    .unwrap_err();
}

#[test]
fn a_cluster_section_is_checked_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let good = "archive:\n  enabled: false\ncluster:\n  name: main\n  node: db1\n  nodes:\n    - { name: db1, address: 10.0.0.1 }\n    - { name: db2, address: 10.0.0.2 }\n    - { name: witness, address: 10.0.0.3, witness: true }\n";
    let s = Settings::load(&opts(Some(write(&dir, "good.yaml", good)), &[])).unwrap();
    assert!(s.cluster.enabled());
    assert_eq!(
        s.cluster.this_node().unwrap().address.to_string(),
        "10.0.0.1"
    );
    assert_eq!(s.cluster.data_nodes().count(), 2);

    // One of each mistake an operator makes when copying the file between nodes.
    let bad = "cluster:\n  name: main\n  node: db9\n  ttl_secs: 5\n  patroni_port: 5432\n  nodes:\n    - { name: db1, address: 10.0.0.1 }\n    - { name: db1, address: 10.0.0.1, witness: true }\n";
    let err = Settings::load(&opts(Some(write(&dir, "bad.yaml", bad)), &[])).unwrap_err();
    let text = err.to_string();
    for needle in [
        "db9\" is not one of cluster.nodes",
        "etcd needs an odd number",
        "at least two nodes must run PostgreSQL",
        "node \"db1\" is listed twice",
        "address 10.0.0.1 is listed twice",
        "loop_wait_secs + 2 x retry_timeout_secs <= ttl_secs",
        "port 5432 is already",
        "archive into one repository, whichever of them is primary",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    // With the shared off-host repository, archiving on a cluster is accepted.
    let archived = good.replace(
        "archive:\n  enabled: false\n",
        "archive:\n  s3: { endpoint: s3.example.net, bucket: backups }\n",
    );
    let s = Settings::load(&opts(Some(write(&dir, "archived.yaml", &archived)), &[])).unwrap();
    assert!(s.archive.enabled && s.archive.s3.is_some());
    assert_eq!(s.archive_repos(), vec![2]);

    // Nodes without a cluster name are a mistake too, not a silently single host.
    let nameless = "cluster:\n  nodes:\n    - { name: db1, address: 10.0.0.1 }\n";
    let err = Settings::load(&opts(Some(write(&dir, "nameless.yaml", nameless)), &[])).unwrap_err();
    assert!(err.to_string().contains("cluster has no name"), "{err}");
}
