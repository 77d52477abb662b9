//! Golden-file tests for every template (`UPDATE_GOLDEN=1 cargo test --lib render::` rewrites
//! `tests/golden/`; review the diff before committing), and hostile values that must be either
//! escaped or refused.

use std::path::{Path, PathBuf};

use super::*;
use crate::hba::TenantAccess;

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("golden", "rendered")
            .to_string();
        panic!("{name} differs from its golden file (UPDATE_GOLDEN=1 to accept):\n{diff}");
    }
}

fn settings() -> Settings {
    Settings::default()
}

fn policy() -> HbaPolicy {
    HbaPolicy {
        superuser: "postgres".into(),
        api_role: "pgaas_api".into(),
        control_db: "postgres_control".into(),
        tenant_group: "pgaas_tenants".into(),
        admin_os_users: vec!["postgres".into(), "root".into()],
        pooler_admins: vec!["postgres".into(), "pgaas".into()],
        tenants: vec![
            TenantAccess {
                database: "tenant_0a1b2c3d4e5f6071".into(),
                role: "user_0a1b2c3d4e5f6071".into(),
                allow: vec![],
            },
            TenantAccess {
                database: "tenant_8899aabbccddeeff".into(),
                role: "tenant_8899aabbccddeeff".into(),
                allow: vec![
                    "203.0.113.0/24".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
            },
        ],
        replication: None,
    }
}

fn inputs<'a>(s: &'a Settings, p: &'a HbaPolicy, version: u32) -> RenderInputs<'a> {
    // Compiled as the callers of `managed_files` compile them (tests may name the compiler).
    let rules: &'static CompiledRules = Box::leak(Box::new(crate::hba::compile_all(p).unwrap()));
    RenderInputs {
        settings: s,
        rules,
        facts: HostFacts {
            pg_version: version,
            memory_mb: 4096,
        },
        hba: p,
        generation: 7,
        pg_config_dir: PathBuf::from(format!("/etc/postgresql/{version}/main")),
        data_dir: PathBuf::from(format!("/var/lib/postgresql/{version}/main")),
        include_systemd: true,
        include_pgbouncer: true,
    }
}

/// The setting lines of a config file, without comments and blank lines.
fn active(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(['#', ';']))
        .collect()
}

fn file<'a>(files: &'a [ManagedFile], path: &str) -> &'a ManagedFile {
    files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap_or_else(|| panic!("{path} not rendered"))
}

#[test]
fn every_template_matches_its_golden_file() {
    let (s, p) = (settings(), policy());
    let files = managed_files(&inputs(&s, &p, 15)).unwrap();
    let names: Vec<_> = files.iter().map(|f| f.path.to_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "/etc/postgresql/15/main/conf.d/pgaas.conf",
            "/etc/postgresql/15/main/pg_hba.conf",
            "/etc/postgresql/15/main/pg_ident.conf",
            "/etc/pgaas/pgbackrest/pgbackrest.conf",
            "/etc/pgbouncer/pgbouncer.ini",
            "/etc/pgbouncer/pgbouncer_hba.conf",
            "/etc/systemd/system/pgbouncer.service.d/pgaas-limits.conf",
            "/etc/systemd/system/pgaas-api.service",
            "/etc/systemd/system/pgaas-backup.service",
            "/etc/systemd/system/pgaas-backup.timer",
            "/etc/systemd/system/pgaas-cert-renew.service",
            "/etc/systemd/system/pgaas-cert-renew.timer",
            "/etc/systemd/system/pgaas-base-backup@.service",
            "/etc/systemd/system/pgaas-base-backup-full.timer",
            "/etc/systemd/system/pgaas-base-backup-diff.timer",
            "/etc/systemd/system/pgaas-drill.service",
            "/etc/systemd/system/pgaas-drill.timer",
            "/etc/systemd/system/pgaas-worker.service",
        ]
    );
    for f in &files {
        let name = f.path.file_name().unwrap().to_str().unwrap();
        let name = if name == "pgaas.conf" {
            "pgaas-15.conf"
        } else {
            name
        };
        golden(name, &f.contents);
    }
    // With the off-host repository: its options, and no secret (those are in conf.d).
    let mut with_s3 = settings();
    with_s3.archive.s3 = Some(crate::settings::S3Repository {
        endpoint: "s3.eu-central-1.example.com".into(),
        bucket: "pgaas-backups".into(),
        region: "eu-central-1".into(),
        ca_file: Some("/etc/pgaas/tls/s3-ca.crt".into()),
        ..Default::default()
    });
    let files = managed_files(&inputs(&with_s3, &p, 15)).unwrap();
    golden(
        "pgbackrest-s3.conf",
        &file(&files, "/etc/pgaas/pgbackrest/pgbackrest.conf").contents,
    );
    // A cluster's node: the shared repository alone, under its own number, with both retentions.
    let mut node = with_s3.clone();
    node.cluster.name = Some("main".into());
    node.cluster.node = Some("db1".into());
    node.cluster.nodes = crate::settings::example_nodes();
    let conf =
        crate::render::pgbackrest::render_conf(&node, Path::new("/var/lib/pg/main"), 1).unwrap();
    assert!(!conf.contains("repo1-"), "{conf}");
    for line in [
        "repo2-type=s3",
        "repo2-retention-full=2",
        "repo2-retention-diff=7",
    ] {
        assert!(conf.lines().any(|l| l == line), "{line} not in:\n{conf}");
    }
    // Its units wait for Patroni, which runs PostgreSQL there (Debian's unit is an empty shell).
    for (name, unit) in crate::render::systemd::render_units(&node, Path::new("/etc/patroni"), 1)
        .unwrap()
        .iter()
        .filter(|(n, _)| n.ends_with(".service") && !n.starts_with("pgbouncer"))
    {
        assert!(
            unit.contains("patroni.service") && !unit.contains("postgresql.service"),
            "{name}:\n{unit}"
        );
    }
    for version in [16, 17] {
        let files = managed_files(&inputs(&s, &p, version)).unwrap();
        golden(
            &format!("pgaas-{version}.conf"),
            &file(
                &files,
                &format!("/etc/postgresql/{version}/main/conf.d/pgaas.conf"),
            )
            .contents,
        );
    }
}

#[test]
fn every_embedded_template_is_used_or_included() {
    let rendered = [
        "postgresql/pgaas.conf.j2",
        "postgresql/pg_hba.conf.j2",
        "postgresql/pg_ident.conf.j2",
        "pgbouncer/pgbouncer.ini.j2",
        "pgbouncer/pgbouncer_hba.conf.j2",
        "systemd/pgaas-api.service.j2",
        "systemd/pgbouncer-limits.conf.j2",
        "systemd/pgaas-backup.service.j2",
        "systemd/pgaas-backup.timer.j2",
        "systemd/pgaas-cert-renew.service.j2",
        "systemd/pgaas-cert-renew.timer.j2",
        "systemd/pgaas-archive-job.service.j2",
        "systemd/pgaas-archive.timer.j2",
        "systemd/pgaas-worker.service.j2",
        "pgbackrest/pgbackrest.conf.j2",
        "common/header.j2",
    ];
    for (name, _) in TEMPLATES {
        assert!(
            rendered.contains(name),
            "template {name} is embedded but nothing renders it"
        );
    }
}

#[test]
fn every_file_has_the_managed_header_and_hba_files_their_generation() {
    let (s, p) = (settings(), policy());
    for f in managed_files(&inputs(&s, &p, 16)).unwrap() {
        assert!(
            f.contents
                .starts_with("# pgaas managed file: do not edit, run `pgaas render`"),
            "{}",
            f.path.display()
        );
        // The generation numbers the access rules: only the hba files carry it, so an
        // allow-list change leaves every other file byte-identical.
        let is_hba = f
            .path
            .file_name()
            .is_some_and(|n| n == "pg_hba.conf" || n == "pgbouncer_hba.conf");
        assert_eq!(
            f.contents.contains("# generation: 7\n"),
            is_hba,
            "{}",
            f.path.display()
        );
        assert!(
            f.contents.ends_with('\n') && !f.contents.ends_with("\n\n\n"),
            "{}",
            f.path.display()
        );
    }
}

#[test]
fn postgres_conf_fixes_the_originals_defects() {
    let (s, p) = (settings(), policy());
    let files = managed_files(&inputs(&s, &p, 15)).unwrap();
    let conf = &file(&files, "/etc/postgresql/15/main/conf.d/pgaas.conf").contents;
    assert!(
        active(conf).iter().all(|l| !l.starts_with("log_statement")),
        "log_statement wrote passwords to the log"
    );
    assert!(conf.contains("password_encryption = 'scram-sha-256'\n"));
    assert!(conf.contains("ssl = on\n") && conf.contains("ssl_min_protocol_version = 'TLSv1.2'\n"));
    assert!(conf.contains("shared_buffers = 1024MB\n"));
    // Settings newer than 15 would stop a PostgreSQL 15 server from starting.
    assert!(!conf.contains("vacuum_buffer_usage_limit") && !conf.contains("allow_alter_system"));
    let files = managed_files(&inputs(&s, &p, 17)).unwrap();
    let conf17 = &file(&files, "/etc/postgresql/17/main/conf.d/pgaas.conf").contents;
    assert!(
        conf17.contains("allow_alter_system = off\n")
            && conf17.contains("vacuum_buffer_usage_limit = 2MB\n")
    );
}

#[test]
fn unsupported_versions_are_refused() {
    let (s, p) = (settings(), policy());
    for v in [14, 18, 0] {
        let err = managed_files(&inputs(&s, &p, v)).unwrap_err();
        assert!(matches!(err, RenderError::Invalid { .. }), "{v}: {err}");
    }
}

#[test]
fn small_host_memory_is_sized_in_megabytes() {
    let (s, p) = (settings(), policy());
    let mut i = inputs(&s, &p, 15);
    i.facts.memory_mb = 1024;
    let conf = postgres::render_conf(&s, &i.facts, &i.pg_config_dir, 1).unwrap();
    assert!(conf.contains("shared_buffers = 256MB\n"), "{conf}");
}

#[test]
fn pgbouncer_ini_has_no_packet_limit_and_requires_tls() {
    let ini = pgbouncer::render_ini(&settings(), 1).unwrap();
    assert!(
        active(&ini)
            .iter()
            .all(|l| !l.starts_with("max_packet_size")),
        "4096 broke every query over 4 KB"
    );
    assert!(ini.contains("client_tls_sslmode = require\n"));
    assert!(
        ini.contains("* = host=/var/run/postgresql port=5432 pool_size=1 max_db_connections=1\n")
    );
    // The per-tenant limits come from a file pgaas rewrites, included last.
    assert!(
        ini.trim_end()
            .ends_with("%include /etc/pgbouncer/pgbouncer_tenants.ini"),
        "{ini}"
    );
    assert!(ini.contains("auth_type = hba\n"));
}

#[test]
fn hostile_paths_are_quoted_or_refused() {
    let p = policy();
    // A blank in a path is quoted in every syntax that splits on blanks.
    let mut s = settings();
    s.postgres.socket_dir = "/run/pg sock".into();
    s.tls.cert_file = "/etc/pgaas/it's.crt".into();
    s.tls.key_file = "/etc/pgaas/back\\slash.key".into();
    s.paths.binary = "/opt/pg aas/bin/pgaas".into();
    let files = managed_files(&inputs(&s, &p, 15)).unwrap();
    let conf = &file(&files, "/etc/postgresql/15/main/conf.d/pgaas.conf").contents;
    assert!(
        conf.contains("unix_socket_directories = '\"/run/pg sock\"'\n"),
        "{conf}"
    );
    assert!(
        conf.contains("ssl_cert_file = '/etc/pgaas/it''s.crt'\n"),
        "{conf}"
    );
    assert!(
        conf.contains("ssl_key_file = '/etc/pgaas/back\\\\slash.key'\n"),
        "{conf}"
    );
    let ini = &file(&files, "/etc/pgbouncer/pgbouncer.ini").contents;
    assert!(
        ini.contains("* = host='/run/pg sock' port=5432 pool_size=1 max_db_connections=1\n"),
        "{ini}"
    );
    let api = &file(&files, "/etc/systemd/system/pgaas-api.service").contents;
    assert!(
        api.contains("ExecStart=\"/opt/pg aas/bin/pgaas\" serve --config /etc/pgaas/pgaas.yaml\n"),
        "{api}"
    );

    // A newline would start a new setting: refused, naming the setting.
    type Mutate = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Mutate)> = vec![
        (
            "tls.cert_file",
            Box::new(|s| s.tls.cert_file = "/x\nssl = off".into()),
        ),
        ("tls.key_file", Box::new(|s| s.tls.key_file = "/x\0".into())),
        (
            "postgres.socket_dir",
            Box::new(|s| s.postgres.socket_dir = "/a,/b".into()),
        ),
        (
            "postgres.socket_dir",
            Box::new(|s| s.postgres.socket_dir = "relative".into()),
        ),
        (
            "postgres.listen_addresses",
            Box::new(|s| s.postgres.listen_addresses = vec!["*' ssl = 'off".into()]),
        ),
        (
            "postgres.listen_addresses",
            Box::new(|s| s.postgres.listen_addresses = vec!["a b".into()]),
        ),
        (
            "pgbouncer.listen_addr",
            Box::new(|s| s.pgbouncer.listen_addr = "0.0.0.0\nauth_type = trust".into()),
        ),
        (
            "pgbouncer.listen_addr",
            Box::new(|s| s.pgbouncer.listen_addr = "*;x".into()),
        ),
        (
            "postgres.superuser",
            Box::new(|s| s.postgres.superuser = "postgres,evil".into()),
        ),
        (
            "paths.binary",
            Box::new(|s| s.paths.binary = "/bin/pgaas\nExecStartPre=/bin/sh".into()),
        ),
        (
            "api.system_user",
            Box::new(|s| s.api.system_user = "root\nUser=root".into()),
        ),
    ];
    for (key, mutate) in cases {
        let mut s = settings();
        mutate(&mut s);
        let err = managed_files(&inputs(&s, &p, 15)).unwrap_err();
        match &err {
            RenderError::Invalid { what, .. } => assert_eq!(what, key, "{err}"),
            other => panic!("{key}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn listen_addresses_accept_ips_names_and_star() {
    let mut s = settings();
    s.postgres.listen_addresses = vec!["127.0.0.1".into(), "::1".into(), "db.example.com".into()];
    let p = policy();
    let files = managed_files(&inputs(&s, &p, 16)).unwrap();
    let conf = &file(&files, "/etc/postgresql/16/main/conf.d/pgaas.conf").contents;
    assert!(
        conf.contains("listen_addresses = '127.0.0.1,::1,db.example.com'\n"),
        "{conf}"
    );
}

#[test]
fn strict_undefined_variables_fail_the_render() {
    #[derive(serde::Serialize)]
    struct Empty {}
    let err = render_template("systemd/pgaas-backup.timer.j2", &Empty {}).unwrap_err();
    assert!(matches!(err, RenderError::Template { .. }), "{err}");
    let err = render_template("no/such.j2", &Empty {}).unwrap_err();
    assert!(matches!(err, RenderError::Template { .. }), "{err}");
}

#[test]
fn tenant_pool_limits_follow_each_tenants_limit_and_the_installed_pgbouncer() {
    let tenants = vec![
        PoolerTenant {
            database: "tenant_00000000000000bb".into(),
            role: "tenant_00000000000000bb".into(),
            max_connections: 50,
        },
        PoolerTenant {
            database: "tenant_00000000000000aa".into(),
            role: "user_00000000000000aa".into(),
            max_connections: 5,
        },
        PoolerTenant {
            database: "bad name".into(),
            role: "x".into(),
            max_connections: 5,
        },
    ];
    let mut limits = PoolerLimits::from_settings(&settings(), false).unwrap();
    let text = render_tenants(&tenants, &limits);
    assert_eq!(
        text,
        "; pgaas managed file: per-tenant pool limits, written from the control DB\n\
         [databases]\n\
         tenant_00000000000000aa = host=/var/run/postgresql port=5432 dbname=tenant_00000000000000aa pool_size=5 max_db_connections=5\n\
         tenant_00000000000000bb = host=/var/run/postgresql port=5432 dbname=tenant_00000000000000bb pool_size=20 max_db_connections=50\n\
         [users]\n\
         user_00000000000000aa = max_user_connections=5\n\
         tenant_00000000000000bb = max_user_connections=50\n"
    );
    limits.client_limits = true;
    let text = render_tenants(&tenants, &limits);
    assert!(
        text.contains("max_db_connections=5 max_db_client_connections=50\n"),
        "{text}"
    );
    assert!(
        text.contains("max_user_connections=5 max_user_client_connections=50\n"),
        "{text}"
    );
}
