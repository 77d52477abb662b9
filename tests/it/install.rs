//! `pgaas install` beyond the unit tests: the dry-run plan of the embedded playbook on an empty
//! root as a golden file (`UPDATE_GOLDEN=1` rewrites it; review the diff), and the PgBouncer
//! console client against a real PgBouncer.

use std::{path::Path, sync::Arc};

use pgaas::{
    install::{self, Cx, TlsMode},
    pg::{
        cluster::OsUser,
        console::ConsoleReload,
        pgbouncer::{LocalPgBouncer, find_binary},
    },
    settings::Settings,
    system::fake::FakeSystem,
};

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
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
            .header("golden", "actual")
            .to_string();
        panic!("{name} differs (UPDATE_GOLDEN=1 to accept):\n{diff}");
    }
}

#[test]
fn dry_run_of_the_embedded_playbook_prints_the_plan_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut s = Settings {
        public_host: "db.example.com".into(),
        ..Settings::default()
    };
    s.postgres.memory_mb = Some(2048);
    let s = install::install_settings(s, 15, &TlsMode::SelfSigned);
    let system = Arc::new(FakeSystem::new(&[
        "postgresql-15",
        "postgresql-client-15",
        "pgbouncer",
        "ca-certificates",
    ]));
    let vars = install::vars(&s, 15);
    let steps = install::load_playbook(None, &vars, install::playbook::Role::Single).unwrap();
    let mut cx = Cx::new(
        Some(root.path().to_path_buf()),
        system.clone(),
        s,
        vars,
        TlsMode::SelfSigned,
        None,
        2048,
    );
    cx.docs = Some(pgaas::cli::docs::generated().unwrap());
    let mut out = Vec::new();
    let report = install::run(&steps, &mut cx, true, &mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(report.success(), "{out}");
    assert_eq!(
        report.changed,
        steps.len(),
        "on an empty host every step has work"
    );
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "a dry run wrote files"
    );
    let calls = system.calls();
    assert!(
        calls.iter().all(|c| c.starts_with("dpkg-query")
            || c.starts_with("apt-cache")
            || c.starts_with("systemctl is-")
            || (c.contains("/bin/postgres ") && c.ends_with(" --version"))
            || (c.contains("/pgbackrest ") && c.ends_with(" info --output=json"))),
        "a dry run may only look: {calls:?}"
    );
    golden("install-dry-run.txt", &out);
}

/// A PgBouncer of our own in a temp dir, stopped on drop.
struct Bouncer(LocalPgBouncer);

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[test]
fn the_console_client_reloads_a_real_pgbouncer_as_a_peer_admin() {
    let binary = find_binary().expect("pgbouncer is not installed: apt-get install pgbouncer");
    let me = OsUser::current().unwrap();
    // PgBouncer refuses to run as root: then it runs as postgres and we log in as root by peer.
    let owner = OsUser::cluster_owner().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("pgaas-console-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let port = crate::harness::free_port();
    let write = |name: &str, text: String| {
        std::fs::write(d.join(name), text).unwrap();
        owner.chown(&d.join(name)).unwrap();
    };
    write(
        "pgbouncer.ini",
        format!(
            "[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
             pidfile = {dir}/pgbouncer.pid\nlogfile = {dir}/pgbouncer.log\nauth_type = hba\n\
             auth_hba_file = {dir}/hba.conf\nauth_file = {dir}/userlist.txt\nadmin_users = {me}\n",
            dir = d.display(),
            me = me.name
        ),
    );
    write("hba.conf", format!("local pgbouncer {} peer\n", me.name));
    write(
        "userlist.txt",
        pgaas::pg::userlist::Userlist {
            console_users: std::slice::from_ref(&me.name),
            secrets: &[],
            existing: None,
            process: None,
        }
        .render(),
    );
    owner.chown(d).unwrap();
    let bouncer = Bouncer(LocalPgBouncer {
        binary,
        ini: d.join("pgbouncer.ini"),
        pidfile: d.join("pgbouncer.pid"),
        port,
        owner: owner.clone(),
    });
    bouncer.0.start().unwrap();

    let console = ConsoleReload {
        socket_dir: d.to_path_buf(),
        port,
        user: me.name.clone(),
    };
    assert_eq!(
        console.command("RELOAD;").unwrap(),
        vec!["RELOAD".to_string()]
    );
    pgaas::hba::apply::PoolerReload::reload(&console).unwrap();

    // Another name than our OS user: peer refuses it.
    let stranger = ConsoleReload {
        user: "pgaas_nobody".into(),
        ..console.clone()
    };
    let err = stranger.command("RELOAD;").unwrap_err().to_string();
    assert!(err.contains("PgBouncer refused"), "{err}");

    // The reload takes effect: with our line gone from the hba file, the next login is refused.
    write("hba.conf", "local pgbouncer nobody_else peer\n".into());
    console.command("RELOAD;").unwrap();
    let err = console.command("SHOW VERSION;").unwrap_err().to_string();
    assert!(err.contains("PgBouncer refused"), "{err}");
}
