//! Checks that types alone can't express: ranges, names PostgreSQL will accept, paths that are
//! absolute and safe to write into config files. Each failure is blamed on the layer that set the
//! key, so the message names the file and line (or the variable) to fix.

use std::path::Path;

use super::{Layer, Settings, SettingsProblem, Source, layers::line_of};

struct Checker<'a> {
    layers: &'a [Layer],
    problems: &'a mut Vec<SettingsProblem>,
}

impl Checker<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        // The highest layer that mentions the key set the value in force.
        let layer = self.layers.iter().rev().find(|l| mentions(&l.value, &path));
        let (source, line) = match layer {
            Some(l) => (
                l.source.clone(),
                l.text.as_deref().and_then(|t| line_of(t, &path)),
            ),
            None => (Source::Defaults, None),
        };
        self.problems.push(SettingsProblem {
            source,
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn port(&mut self, key: &str, port: u16) {
        if port == 0 {
            self.fail(key, "must be a port between 1 and 65535");
        }
    }

    fn ident(&mut self, key: &str, name: &str) {
        if !is_plain_identifier(name) {
            self.fail(
                key,
                format!(
                    "{name:?} is not a usable name: use 1-63 characters from a-z, 0-9 and _, starting with a letter or _"
                ),
            );
        }
    }

    fn abs_path(&mut self, key: &str, path: &Path) {
        let s = path.to_string_lossy();
        if !path.is_absolute() {
            self.fail(key, format!("{s:?} must be an absolute path"));
        } else if s.chars().any(|c| c.is_control()) {
            self.fail(
                key,
                "path must not contain control characters (newlines, tabs, ...)",
            );
        }
    }
}

fn mentions(value: &yaml_serde::Value, path: &[String]) -> bool {
    let mut cur = value;
    for seg in path {
        match cur.get(seg.as_str()) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    true
}

/// A name that needs no quoting anywhere (SQL, pg_hba.conf, pgbouncer.ini, systemd units).
pub fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// A DNS name or an IP address, as written into connection strings and certificates.
pub fn is_host_name(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub(super) fn check(s: &Settings, layers: &[Layer], problems: &mut Vec<SettingsProblem>) {
    let mut c = Checker { layers, problems };

    if !is_host_name(&s.public_host) {
        c.fail(
            "public_host",
            format!("{:?} is not a host name or IP address", s.public_host),
        );
    }
    if s.environment.is_empty() || s.environment.chars().any(|ch| ch.is_control()) {
        c.fail(
            "environment",
            "must be a non-empty word such as production or development",
        );
    }

    let pg = &s.postgres;
    if let Some(v) = pg.version {
        if !(15..=17).contains(&v) {
            c.fail(
                "postgres.version",
                format!("PostgreSQL {v} is not supported; use 15, 16 or 17"),
            );
        }
    }
    c.port("postgres.port", pg.port);
    if pg.listen_addresses.is_empty() {
        c.fail(
            "postgres.listen_addresses",
            "must name at least one address (\"*\" for all)",
        );
    }
    for a in &pg.listen_addresses {
        if a != "*" && !is_host_name(a) {
            c.fail(
                "postgres.listen_addresses",
                format!("{a:?} is not \"*\", an IP address or a host name"),
            );
        }
    }
    if pg.max_connections < 20 || pg.max_connections > 10_000 {
        c.fail("postgres.max_connections", "must be between 20 and 10000");
    }
    if pg.superuser_reserved_connections >= pg.max_connections / 2 {
        c.fail(
            "postgres.superuser_reserved_connections",
            "must be less than half of postgres.max_connections",
        );
    }
    if pg.superuser_reserved_connections + pg.reserved_connections >= pg.max_connections / 2 {
        c.fail(
            "postgres.reserved_connections",
            "with superuser_reserved_connections, must be less than half of postgres.max_connections",
        );
    }
    if let Some(mb) = pg.memory_mb {
        if mb < 256 {
            c.fail("postgres.memory_mb", "must be at least 256 (MB)");
        }
    }
    for (key, path) in [
        ("postgres.config_dir", &pg.config_dir),
        ("postgres.data_dir", &pg.data_dir),
        ("postgres.hba_dir", &pg.hba_dir),
        ("pgbouncer.auth_dir", &s.pgbouncer.auth_dir),
    ] {
        if let Some(p) = path {
            c.abs_path(key, p);
        }
    }
    c.abs_path("postgres.socket_dir", &pg.socket_dir);
    c.ident("postgres.superuser", &pg.superuser);
    if !is_system_user(&pg.os_user) {
        c.fail(
            "postgres.os_user",
            format!("{:?} is not a valid system user name", pg.os_user),
        );
    }

    let pgb = &s.pgbouncer;
    c.port("pgbouncer.port", pgb.port);
    if pgb.enabled && pgb.port == pg.port {
        c.fail("pgbouncer.port", "must differ from postgres.port");
    }
    if pgb.listen_addr != "*" && !is_host_name(&pgb.listen_addr) {
        c.fail(
            "pgbouncer.listen_addr",
            format!(
                "{:?} is not \"*\", an IP address or a host name",
                pgb.listen_addr
            ),
        );
    }
    if pgb.default_pool_size == 0 || pgb.max_client_conn == 0 {
        c.fail(
            "pgbouncer.default_pool_size",
            "pool sizes must be at least 1",
        );
    }
    c.abs_path("pgbouncer.config_dir", &pgb.config_dir);
    c.abs_path("pgbouncer.pidfile", &pgb.pidfile);
    c.abs_path("pgbouncer.logfile", &pgb.logfile);

    c.port("api.listen", s.api.listen.port());
    if !is_system_user(&s.api.system_user) {
        c.fail(
            "api.system_user",
            format!("{:?} is not a valid system user name", s.api.system_user),
        );
    }
    if let Some(key) = &s.api.api_key {
        if key.expose().len() < 32 {
            c.fail(
                "api.api_key",
                "must be at least 32 characters (use `pgaas key create` instead)",
            );
        }
    }
    if s.api.stats_interval_secs == 0 || s.api.stats_size_interval_secs < s.api.stats_interval_secs
    {
        c.fail(
            "api.stats_size_interval_secs",
            "intervals must be at least 1 s, and sizes no more often than stats",
        );
    }
    if s.api.max_body_bytes < 1024 {
        c.fail("api.max_body_bytes", "must be at least 1024");
    }

    let db = &s.control_db;
    if db.host.starts_with('/') {
        c.abs_path("control_db.host", Path::new(&db.host));
    } else if !is_host_name(&db.host) {
        c.fail(
            "control_db.host",
            format!(
                "{:?} is not a host name, IP address or socket directory",
                db.host
            ),
        );
    }
    if let Some(p) = db.port {
        c.port("control_db.port", p);
    }
    c.ident("control_db.user", &db.user);
    c.ident("control_db.name", &db.name);
    if let Some(p) = &db.password_file {
        c.abs_path("control_db.password_file", p);
    }
    if db.user == pg.superuser {
        c.fail(
            "control_db.user",
            "the API must not connect as the superuser; use its own role (pgaas_api)",
        );
    }
    c.ident("admin.user", &s.admin.user);

    c.abs_path("tls.cert_file", &s.tls.cert_file);
    c.abs_path("tls.key_file", &s.tls.key_file);
    if let Some(p) = &s.tls.ca_file {
        c.abs_path("tls.ca_file", p);
    }
    for (key, p) in [
        ("paths.state_dir", &s.paths.state_dir),
        ("paths.config_dir", &s.paths.config_dir),
        ("paths.backup_dir", &s.paths.backup_dir),
        ("paths.binary", &s.paths.binary),
        ("paths.systemd_dir", &s.paths.systemd_dir),
    ] {
        c.abs_path(key, p);
    }

    let t = &s.tenants;
    let usable = pg
        .max_connections
        .saturating_sub(pg.superuser_reserved_connections + pg.reserved_connections);
    if t.max_connections_cap == 0 || t.max_connections_cap >= usable {
        c.fail(
            "tenants.max_connections_cap",
            format!(
                "must be between 1 and {} (postgres.max_connections minus the reserved ones)",
                usable.saturating_sub(1)
            ),
        );
    }
    if t.default_max_connections == 0 || t.default_max_connections > t.max_connections_cap {
        c.fail(
            "tenants.default_max_connections",
            "must be between 1 and tenants.max_connections_cap",
        );
    }
    if !(1..=32).contains(&t.allow_min_prefix_v4) {
        c.fail("tenants.allow_min_prefix_v4", "must be between 1 and 32");
    }
    if !(1..=128).contains(&t.allow_min_prefix_v6) {
        c.fail("tenants.allow_min_prefix_v6", "must be between 1 and 128");
    }
    if !(1..=10_000).contains(&t.allow_max_entries) {
        c.fail("tenants.allow_max_entries", "must be between 1 and 10000");
    }
    if !(t.connection_overcommit >= 1.0 && t.connection_overcommit <= 100.0) {
        c.fail(
            "tenants.connection_overcommit",
            "must be between 1.0 (no overcommit) and 100",
        );
    }
    if t.max_size_mb_cap > 0 && t.default_max_size_mb > t.max_size_mb_cap {
        c.fail(
            "tenants.default_max_size_mb",
            "must be at most tenants.max_size_mb_cap (0 means no quota)",
        );
    }
    if !(1..=100).contains(&t.quota_warn_percent) {
        c.fail("tenants.quota_warn_percent", "must be between 1 and 100");
    }
    if t.quota_grace_percent > 1000 {
        c.fail("tenants.quota_grace_percent", "must be at most 1000");
    }
    if !(100..=600_000).contains(&t.quota_watch_interval_ms) {
        c.fail(
            "tenants.quota_watch_interval_ms",
            "must be between 100 and 600000 (milliseconds)",
        );
    }
    let l = &s.limits;
    if l.max_work_mem_mb == 0 || l.max_maintenance_work_mem_mb == 0 {
        c.fail(
            "limits.max_work_mem_mb",
            "memory ceilings must be at least 1 MB",
        );
    }
    if !(l.max_hash_mem_multiplier >= 1.0 && l.max_hash_mem_multiplier <= 1000.0) {
        c.fail(
            "limits.max_hash_mem_multiplier",
            "must be between 1 and 1000",
        );
    }
    if l.check_interval_secs == 0 {
        c.fail("limits.check_interval_secs", "must be at least 1");
    }
    let b = &s.pgbouncer;
    for (key, v) in [
        (
            "pgbouncer.client_login_timeout_secs",
            b.client_login_timeout_secs,
        ),
        (
            "pgbouncer.query_wait_timeout_secs",
            b.query_wait_timeout_secs,
        ),
        (
            "pgbouncer.server_idle_timeout_secs",
            b.server_idle_timeout_secs,
        ),
        ("pgbouncer.clients_per_connection", b.clients_per_connection),
    ] {
        if v == 0 {
            c.fail(key, "must be at least 1");
        }
    }
    if s.api.pool_size < 2 || s.api.pool_size > 200 {
        c.fail("api.pool_size", "must be between 2 and 200");
    }
    if !(1..=3650).contains(&s.backups.retention_days) {
        c.fail(
            "backups.retention_days",
            "must be between 1 and 3650 (days)",
        );
    }
    if !(10..=7 * 86400).contains(&s.backups.restore_timeout_secs) {
        c.fail(
            "backups.restore_timeout_secs",
            "must be between 10 and 604800 (seconds)",
        );
    }
    for (key, file, inline) in [
        (
            "api.api_key_file",
            &s.api.api_key_file,
            s.api.api_key.is_some(),
        ),
        (
            "admin.password_file",
            &s.admin.password_file,
            s.admin.password.is_some(),
        ),
    ] {
        if let Some(p) = file {
            c.abs_path(key, p);
            if inline {
                c.fail(key, "give the secret or a file holding it, not both");
            }
        }
    }
    check_archive(&mut c, &s.archive);
    check_cluster(&mut c, s);
}

fn check_cluster(c: &mut Checker<'_>, s: &Settings) {
    let cl = &s.cluster;
    c.ident("cluster.replication_user", &cl.replication_user);
    c.ident("cluster.rewind_user", &cl.rewind_user);
    for (key, p) in [
        ("cluster.secrets_file", &cl.secrets_file),
        ("cluster.patroni_config_dir", &cl.patroni_config_dir),
        ("cluster.etcd_data_dir", &cl.etcd_data_dir),
    ] {
        c.abs_path(key, p);
    }
    let Some(name) = &cl.name else {
        if cl.node.is_some() || !cl.nodes.is_empty() {
            c.fail(
                "cluster.name",
                "nodes are listed but the cluster has no name; name it (cluster.name) or remove the cluster section",
            );
        }
        return;
    };
    if !is_plain_identifier(name) {
        c.fail(
            "cluster.name",
            format!("{name:?} is not a usable name: use 1-63 characters from a-z, 0-9 and _, starting with a letter or _"),
        );
    }
    for (key, port) in [
        ("cluster.patroni_port", cl.patroni_port),
        ("cluster.etcd_client_port", cl.etcd_client_port),
        ("cluster.etcd_peer_port", cl.etcd_peer_port),
    ] {
        c.port(key, port);
        if [s.postgres.port, s.pgbouncer.port, s.api.listen.port()].contains(&port) {
            c.fail(
                key,
                format!("port {port} is already PostgreSQL's, PgBouncer's or the API's"),
            );
        }
    }
    if cl.loop_wait_secs == 0
        || cl.retry_timeout_secs == 0
        || cl.loop_wait_secs + 2 * cl.retry_timeout_secs > cl.ttl_secs
    {
        c.fail(
            "cluster.ttl_secs",
            "Patroni needs loop_wait_secs + 2 x retry_timeout_secs <= ttl_secs, all at least 1",
        );
    }
    if cl.synchronous_strict && !cl.synchronous {
        c.fail(
            "cluster.synchronous_strict",
            "needs cluster.synchronous: true (strict is a kind of synchronous replication)",
        );
    }
    if cl.etcd_client_port == cl.etcd_peer_port {
        c.fail(
            "cluster.etcd_peer_port",
            "must differ from cluster.etcd_client_port",
        );
    }
    if cl.replication_user == cl.rewind_user
        || [&s.postgres.superuser, &s.control_db.user].contains(&&cl.replication_user)
        || [&s.postgres.superuser, &s.control_db.user].contains(&&cl.rewind_user)
    {
        c.fail(
            "cluster.replication_user",
            "the replication and rewind roles must be two roles of their own, not the superuser or the API's",
        );
    }
    if cl.nodes.len() < 3 || cl.nodes.len() % 2 == 0 {
        c.fail(
            "cluster.nodes",
            format!(
                "{} nodes listed; etcd needs an odd number, at least 3, to keep a majority when one dies (two PostgreSQL nodes and a witness)",
                cl.nodes.len()
            ),
        );
    }
    if cl.data_nodes().count() < 2 {
        c.fail(
            "cluster.nodes",
            "at least two nodes must run PostgreSQL (witness: false); a witness holds no data",
        );
    }
    let mut names = std::collections::BTreeSet::new();
    let mut addresses = std::collections::BTreeSet::new();
    for n in &cl.nodes {
        if !is_plain_identifier(&n.name) {
            c.fail(
                "cluster.nodes",
                format!("node name {:?}: use 1-63 characters from a-z, 0-9 and _, starting with a letter or _", n.name),
            );
        }
        if !names.insert(&n.name) {
            c.fail(
                "cluster.nodes",
                format!("node {:?} is listed twice", n.name),
            );
        }
        if let Some(h) = &n.host {
            if !is_host_name(h) {
                c.fail(
                    "cluster.nodes",
                    format!("node {:?}: host {h:?} is not a DNS name", n.name),
                );
            }
        }
        if !addresses.insert(n.address) {
            c.fail(
                "cluster.nodes",
                format!("address {} is listed twice", n.address),
            );
        }
        if n.address.is_unspecified() || n.address.is_multicast() {
            c.fail(
                "cluster.nodes",
                format!(
                    "node {:?}: {} is not an address the other nodes can reach",
                    n.name, n.address
                ),
            );
        }
    }
    match &cl.node {
        None => c.fail(
            "cluster.node",
            "say which of cluster.nodes this host is (its name)",
        ),
        Some(me) if cl.this_node().is_none() => c.fail(
            "cluster.node",
            format!("{me:?} is not one of cluster.nodes"),
        ),
        Some(_) => {}
    }
    if s.archive.enabled && s.archive.s3.is_none() {
        c.fail(
            "archive.s3",
            "a cluster's nodes archive into one repository, whichever of them is primary: \
             set archive.s3 (an S3-compatible store every node reaches), or archive.enabled: false",
        );
    }
}

fn check_archive(c: &mut Checker<'_>, a: &crate::settings::ArchiveSettings) {
    if !is_plain_identifier(&a.stanza) {
        c.fail(
            "archive.stanza",
            "must be 1-63 characters from a-z, 0-9 and _, starting with a letter or _",
        );
    }
    for (key, p) in [
        ("archive.binary", &a.binary),
        ("archive.config_dir", &a.config_dir),
        ("archive.repo_path", &a.repo_path),
        ("archive.spool_path", &a.spool_path),
        ("archive.log_path", &a.log_path),
        ("archive.lock_path", &a.lock_path),
        ("archive.scratch_dir", &a.scratch_dir),
    ] {
        c.abs_path(key, p);
        if p.to_string_lossy().contains(['\'', '"', ' ', '%', '\n']) {
            c.fail(key, "must not contain blanks, quotes, % or newlines (it is written into archive_command)");
        }
    }
    if !(60..=7 * 86400).contains(&a.restore_job_timeout_secs) {
        c.fail(
            "archive.restore_job_timeout_secs",
            "must be between 60 and 604800 (seconds)",
        );
    }
    if !(1..=16).contains(&a.restore_concurrency) {
        c.fail("archive.restore_concurrency", "must be between 1 and 16");
    }
    if !(1..=3600).contains(&a.archive_timeout_secs) {
        c.fail(
            "archive.archive_timeout_secs",
            "must be between 1 and 3600 (seconds)",
        );
    }
    for (key, v) in [
        ("archive.retention_full", a.retention_full),
        ("archive.retention_diff", a.retention_diff),
    ] {
        if !(1..=9_999_999).contains(&v) {
            c.fail(key, "must be at least 1");
        }
    }
    if !(1..=64).contains(&a.process_max) {
        c.fail("archive.process_max", "must be between 1 and 64");
    }
    for (key, v) in [
        ("archive.full_schedule", &a.full_schedule),
        ("archive.diff_schedule", &a.diff_schedule),
        ("archive.drill_schedule", &a.drill_schedule),
    ] {
        if v.trim().is_empty() || v.chars().any(|ch| ch.is_control()) {
            c.fail(
                key,
                "must be a systemd calendar expression such as \"Sun *-*-* 01:30:00\"",
            );
        }
    }
    if a.max_backup_age_hours == 0 {
        c.fail("archive.max_backup_age_hours", "must be at least 1");
    }
    let Some(s3) = &a.s3 else { return };
    if s3.endpoint.is_empty() || !is_host_name(&s3.endpoint) {
        c.fail(
            "archive.s3.endpoint",
            "must be the object store's host name, without scheme or port (e.g. s3.eu-central-1.amazonaws.com)",
        );
    } else if s3.endpoint.parse::<std::net::IpAddr>().is_ok() {
        c.fail(
            "archive.s3.endpoint",
            "must be a DNS name: pgBackRest before 2.53 cannot check a certificate against an IP address",
        );
    }
    c.port("archive.s3.port", s3.port);
    let bucket_ok = (3..=63).contains(&s3.bucket.len())
        && s3
            .bucket
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.');
    if !bucket_ok {
        c.fail(
            "archive.s3.bucket",
            "must be an S3 bucket name: 3-63 characters from a-z, 0-9, - and .",
        );
    }
    if s3.region.is_empty()
        || !s3
            .region
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
    {
        c.fail(
            "archive.s3.region",
            "must be a region name such as us-east-1",
        );
    }
    if !s3.path.starts_with('/') || s3.path.chars().any(|ch| ch.is_control() || ch == ' ') {
        c.fail(
            "archive.s3.path",
            "must be an absolute prefix such as /pgaas",
        );
    }
    if !matches!(s3.uri_style.as_str(), "path" | "host") {
        c.fail("archive.s3.uri_style", "must be path or host");
    }
    if let Some(p) = &s3.ca_file {
        c.abs_path("archive.s3.ca_file", p);
    }
    c.abs_path("archive.s3.credentials_file", &s3.credentials_file);
    c.abs_path("archive.s3.cipher_pass_file", &s3.cipher_pass_file);
    if s3.retention_full == 0 {
        c.fail("archive.s3.retention_full", "must be at least 1");
    }
}

/// A system user or group name as useradd accepts it (a-z, 0-9, _ and -, starting with a letter
/// or _, at most 32), which also needs no quoting anywhere.
pub fn is_system_user(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 32
}
