//! The runner and every file-level step kind against a temp root, with a simulated host
//! ([`FakeSystem`]) instead of apt, systemctl and useradd. The database steps need a server and
//! are covered by the whole-machine tests.

use std::{path::Path, sync::Arc};

use super::{
    context::{Cx, TlsMode},
    manifest::{Manifest, Record},
    playbook::{self, Step},
};
use crate::{settings::Settings, system::fake::FakeSystem};

pub(crate) const PACKAGES: &[&str] = &[
    "postgresql-15",
    "postgresql-client-15",
    "pgbouncer",
    "pgbackrest",
    "ca-certificates",
    "postgresql-15-pgvector",
];

pub(crate) fn settings() -> Settings {
    let mut s = Settings {
        public_host: "db.example.com".into(),
        ..Settings::default()
    };
    s.postgres.memory_mb = Some(2048);
    super::install_settings(s, 15, &TlsMode::SelfSigned)
}

/// A context over `root` with the fake host; the binary "installed" is a small file.
pub(crate) fn cx(root: &Path, system: Arc<FakeSystem>, s: Settings) -> Cx {
    let exe = root.join("pgaas-build");
    if !exe.exists() {
        std::fs::write(&exe, b"\x7fELF pretend binary").unwrap();
    }
    system.state.lock().unwrap().exe = Some(exe);
    let vars = super::vars(&s, 15);
    let mut cx = Cx::new(
        Some(root.to_path_buf()),
        system,
        s,
        vars,
        TlsMode::SelfSigned,
        None,
        2048,
    );
    // What the command line generates (the `docs` step installs it; uninstall removes it).
    cx.docs = Some(vec![
        (
            "/usr/share/man/man1/pgaas.1".into(),
            b".TH pgaas 1\n".to_vec(),
        ),
        (
            "/usr/share/bash-completion/completions/pgaas".into(),
            b"complete -F _pgaas pgaas\n".to_vec(),
        ),
    ]);
    cx
}

/// install.yaml without the steps that need a running server.
pub(crate) fn file_steps(cx: &Cx) -> Vec<Step> {
    let text = playbook::embedded("install.yaml").unwrap();
    playbook::parse("install.yaml", text, &cx.vars)
        .unwrap()
        .into_iter()
        .filter(|s| s.control_db.is_none() && s.sql.is_none() && s.api_key.is_none())
        .collect()
}

fn run(cx: &mut Cx, steps: &[Step]) -> (super::Report, String) {
    let mut out = Vec::new();
    let report = super::run(steps, cx, false, &mut out);
    (report, String::from_utf8(out).unwrap())
}

#[test]
fn every_playbook_in_the_repo_parses() {
    let vars = super::vars(&settings(), 15);
    assert!(!playbook::PLAYBOOKS.is_empty());
    for (name, text) in playbook::PLAYBOOKS
        .iter()
        .filter(|(n, _)| n.ends_with(".yaml"))
    {
        let steps = playbook::parse(name, text, &vars).unwrap_or_else(|e| panic!("{e}"));
        assert!(!steps.is_empty(), "{name} has no steps");
    }
}

#[test]
fn unknown_keys_unknown_variables_and_two_kinds_are_refused() {
    let vars = super::vars(&settings(), 15);
    let bad = [
        (
            "- name: x\n  dir: { path: /a, owner: root, group: root, mode: \"0755\", color: red }\n",
            "color",
        ),
        (
            "- name: x\n  dir: { path: \"{{ nope }}\", owner: root, group: root, mode: \"0755\" }\n",
            "undefined",
        ),
        (
            "- name: x\n  render: {}\n  tls: {}\n",
            "several action keys",
        ),
        (
            "- name: x\n  notify: [bounce pgbouncer]\n  render: {}\n",
            "reload UNIT",
        ),
    ];
    for (text, want) in bad {
        let err = playbook::parse("t.yaml", text, &vars).unwrap_err();
        assert!(
            err.contains(want) && err.contains("t.yaml"),
            "{want}: {err}"
        );
    }
}

#[test]
fn the_play_converges_and_a_second_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/postgresql/15/main")).unwrap();
    std::fs::write(
        root.path().join("etc/postgresql/15/main/postgresql.conf"),
        "include_dir = 'conf.d'\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("etc/pgbouncer")).unwrap();
    std::fs::write(
        root.path().join("etc/pgbouncer/pgbouncer.ini"),
        "; Debian's own\n",
    )
    .unwrap();
    let system = Arc::new(FakeSystem::new(PACKAGES));
    let mut cx = cx(root.path(), system.clone(), settings());
    let steps = file_steps(&cx);

    let (first, out) = run(&mut cx, &steps);
    assert!(first.success(), "{out}");
    assert!(first.changed > 10, "{out}");
    let calls = system.calls();
    assert!(
        calls.contains(&"apt-get update -q".to_string()),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("apt-get install") && c.contains("postgresql-15-pgvector"))
    );
    assert!(!calls.iter().any(|c| c.contains("upgrade")));
    assert!(calls.contains(&"systemctl daemon-reload".to_string()));
    assert!(
        calls.contains(&"systemctl restart postgresql@15-main".to_string()),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("useradd --system") && c.ends_with(" pgaas"))
    );
    // postgis is not available here: skipped, not failed.
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("postgis") && c.starts_with("apt-get install"))
    );

    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(root.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("etc/pgaas/secrets/control-db-password"), 0o600);
    assert_eq!(mode("etc/pgaas/postgresql"), 0o2750);
    assert_eq!(mode("etc/pgaas/postgresql/pg_hba.conf"), 0o640);
    assert_eq!(mode("etc/pgaas/tls/server.key"), 0o600);
    assert_eq!(mode("usr/local/bin/pg-status"), 0o755);
    let conf =
        std::fs::read_to_string(root.path().join("etc/postgresql/15/main/conf.d/pgaas.conf"))
            .unwrap();
    assert!(
        conf.contains("hba_file = '/etc/pgaas/postgresql/pg_hba.conf'"),
        "{conf}"
    );
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/pgaas-api.service")).unwrap();
    assert!(
        unit.contains("LoadCredential=control-db-password:/etc/pgaas/secrets/control-db-password"),
        "{unit}"
    );
    assert!(
        unit.contains("ReadWritePaths=/etc/pgaas/postgresql /var/lib/pgaas -/etc/pgaas/pgbouncer"),
        "{unit}"
    );
    let wrapper =
        std::fs::read_to_string(root.path().join("usr/local/bin/pg-list-databases")).unwrap();
    assert!(
        wrapper.contains("exec /usr/local/bin/pgaas db list \"$@\""),
        "{wrapper}"
    );
    let secret =
        std::fs::read_to_string(root.path().join("etc/pgaas/secrets/control-db-password")).unwrap();
    assert!(
        !out.contains(&secret),
        "the password leaked into the output"
    );

    let manifest =
        Manifest::load(&root.path().join("var/lib/pgaas/install-manifest.json")).unwrap();
    assert!(manifest.records.contains(&Record::User {
        name: "pgaas".into()
    }));
    assert!(manifest.records.contains(&Record::Unit {
        name: "pgaas-api.service".into()
    }));
    assert!(manifest.records.iter().any(|r| matches!(r, Record::Replaced { path, .. } if path == Path::new("/etc/pgbouncer/pgbouncer.ini"))));

    system.clear_calls();
    let (second, out) = run(&mut cx, &steps);
    assert!(second.success(), "{out}");
    assert_eq!(
        second.changed, 0,
        "second run changed: {:?}\n{out}",
        second.changed_steps
    );
    assert!(second.handlers_run.is_empty(), "{:?}", second.handlers_run);
    assert!(
        !system
            .calls()
            .iter()
            .any(|c| c.starts_with("apt-get") || c.starts_with("useradd"))
    );
}

#[test]
fn a_settings_change_rewrites_exactly_the_affected_files_and_picks_reload_or_restart() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/postgresql/15/main")).unwrap();
    std::fs::write(
        root.path().join("etc/postgresql/15/main/postgresql.conf"),
        "",
    )
    .unwrap();
    let system = Arc::new(FakeSystem::new(PACKAGES));
    let mut cx0 = cx(root.path(), system.clone(), settings());
    let steps = file_steps(&cx0);
    assert!(run(&mut cx0, &steps).0.success());

    // A reloadable setting: the pool size (PgBouncer ini) -> reload pgbouncer only.
    let mut s = settings();
    s.pgbouncer.default_pool_size = 40;
    system.clear_calls();
    let mut cx1 = cx(root.path(), system.clone(), s.clone());
    let steps1 = file_steps(&cx1);
    let (report, out) = run(&mut cx1, &steps1);
    assert!(report.success(), "{out}");
    assert_eq!(
        report.changed_steps,
        vec![
            "settings file",
            "PostgreSQL, PgBouncer and systemd configuration"
        ],
        "{out}"
    );
    assert!(
        out.contains("update /etc/pgbouncer/pgbouncer.ini") || out.contains("changed"),
        "{out}"
    );
    assert_eq!(report.handlers_run, vec!["reload pgbouncer"], "{out}");

    // A postmaster setting: the port -> restart PostgreSQL.
    s.postgres.port = 5433;
    system.clear_calls();
    let mut cx2 = cx(root.path(), system.clone(), s);
    let steps2 = file_steps(&cx2);
    let (report, out) = run(&mut cx2, &steps2);
    assert!(report.success(), "{out}");
    assert!(
        report
            .handlers_run
            .contains(&"restart postgresql@15-main".to_string()),
        "{out}"
    );
    assert!(
        !report
            .handlers_run
            .iter()
            .any(|h| h.starts_with("reload postgresql")),
        "{out}"
    );
    let conf =
        std::fs::read_to_string(root.path().join("etc/postgresql/15/main/conf.d/pgaas.conf"))
            .unwrap();
    assert!(conf.contains("port = 5433"));
}

#[test]
fn a_failing_step_stops_the_run_with_its_name_and_no_handler_runs() {
    let root = tempfile::tempdir().unwrap();
    let system = Arc::new(FakeSystem::new(PACKAGES));
    system
        .state
        .lock()
        .unwrap()
        .failing
        .insert("useradd".into());
    let mut cx = cx(root.path(), system.clone(), settings());
    let steps = file_steps(&cx);
    let (report, out) = run(&mut cx, &steps);
    let (name, reason) = report.failed.clone().unwrap();
    assert_eq!(name, "system user pgaas for the API", "{out}");
    assert!(reason.contains("simulated failure"), "{reason}");
    assert!(
        out.contains("stopped at \"system user pgaas for the API\""),
        "{out}"
    );
    assert!(!root.path().join("etc/pgaas").exists(), "later steps ran");
    assert!(!system.calls().iter().any(|c| c.starts_with("systemctl")));
}

#[test]
fn command_guards_and_dry_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let system = Arc::new(FakeSystem::new(PACKAGES));
    let mut cx = cx(root.path(), system.clone(), settings());
    let text = "- name: make it\n  command:\n    argv: [touch, /x]\n    creates: /etc/made\n- name: guarded\n  command:\n    argv: [\"false\"]\n    unless: [\"true\"]\n";
    let steps = playbook::parse("t.yaml", text, &cx.vars).unwrap();
    let mut out = Vec::new();
    let report = super::run(&steps, &mut cx, true, &mut out);
    let out = String::from_utf8(out).unwrap();
    assert_eq!((report.changed, report.ok), (1, 1), "{out}");
    assert!(
        out.contains("would change\n        - run touch /x"),
        "{out}"
    );
    assert_eq!(
        system.calls(),
        vec!["true".to_string()],
        "a dry run only runs guards"
    );
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/made"), "").unwrap();
    let report = super::run(&steps, &mut cx, false, &mut Vec::new());
    assert_eq!(report.changed, 0);
    let unguarded = playbook::parse(
        "t.yaml",
        "- name: y\n  command: { argv: [\"true\"] }\n",
        &cx.vars,
    )
    .unwrap();
    let report = super::run(&unguarded, &mut cx, false, &mut Vec::new());
    assert!(
        report
            .failed
            .unwrap()
            .1
            .contains("neither `creates` nor `unless`")
    );
}

#[test]
fn uninstall_removes_what_was_made_and_restores_what_was_replaced() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/postgresql/15/main")).unwrap();
    std::fs::write(
        root.path().join("etc/postgresql/15/main/postgresql.conf"),
        "",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("etc/pgbouncer")).unwrap();
    std::fs::write(
        root.path().join("etc/pgbouncer/pgbouncer.ini"),
        "; Debian's own\n",
    )
    .unwrap();
    let system = Arc::new(FakeSystem::new(PACKAGES));
    let mut cx = cx(root.path(), system.clone(), settings());
    let steps = file_steps(&cx);
    assert!(run(&mut cx, &steps).0.success());
    std::fs::create_dir_all(root.path().join("var/backups/pgaas/postgres_control")).unwrap();
    std::fs::write(
        root.path()
            .join("var/backups/pgaas/postgres_control/1.dump"),
        "x",
    )
    .unwrap();

    let manifest =
        Manifest::load(&root.path().join("var/lib/pgaas/install-manifest.json")).unwrap();
    system.clear_calls();
    let removal = super::uninstall::uninstall(&cx, &manifest, false, &mut Vec::new());
    assert!(removal.failed.is_empty(), "{:?}", removal.failed);
    for gone in [
        "etc/pgaas/pgaas.yaml",
        "usr/local/bin/pgaas",
        "usr/local/bin/pg-status",
        "etc/systemd/system/pgaas-api.service",
        "etc/postgresql/15/main/conf.d/pgaas.conf",
        "etc/pgaas/postgresql",
    ] {
        assert!(!root.path().join(gone).exists(), "{gone} is still there");
    }
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/pgbouncer/pgbouncer.ini")).unwrap(),
        "; Debian's own\n"
    );
    assert!(
        root.path()
            .join("var/backups/pgaas/postgres_control/1.dump")
            .exists(),
        "backups are data"
    );
    assert!(
        root.path()
            .join("etc/postgresql/15/main/postgresql.conf")
            .exists(),
        "the cluster is data"
    );
    let calls = system.calls();
    assert!(
        calls.contains(&"systemctl disable --now pgaas-api.service".to_string()),
        "{calls:?}"
    );
    assert!(calls.contains(&"userdel pgaas".to_string()));
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("disable --now pgbouncer") || c.contains("pg_dropcluster")),
        "{calls:?}"
    );
}

#[test]
fn a_cluster_node_runs_patroni_and_etcd_and_a_witness_only_etcd() {
    use super::playbook::Role;
    let mut s = settings();
    s.cluster.name = Some("main".into());
    s.cluster.nodes = crate::settings::example_nodes();
    let names = |node: &str| {
        let mut s = s.clone();
        s.cluster.node = Some(node.into());
        let s = super::install_settings(s, 15, &crate::install::TlsMode::SelfSigned);
        let vars = super::vars(&s, 15);
        let role = Role::of(&s);
        let steps = super::load_playbook(None, &vars, role).unwrap();
        (
            role,
            vars,
            steps.into_iter().map(|s| s.name).collect::<Vec<_>>(),
        )
    };
    let (role, vars, node) = names("db1");
    assert_eq!(role, Role::Node);
    assert_eq!(vars.postgres_unit, "patroni.service");
    assert_eq!(vars.pg_data_dir, "/var/lib/postgresql/15/main");
    assert_eq!(vars.pg_config_dir, "/etc/patroni");
    for want in [
        "no Debian main cluster on a Patroni node",
        "Patroni and etcd",
        "the cluster's shared secrets",
        "etcd has a majority",
        "Patroni runs PostgreSQL (a new cluster, or a copy of the primary)",
        "Patroni's cluster-wide settings",
        "control database, API role, migrations and access rules",
    ] {
        assert!(node.iter().any(|n| n == want), "{want:?} not in {node:?}");
    }
    assert!(!node.iter().any(|n| n.starts_with("the Debian cluster")));
    // Archiving runs on the data nodes too: into the shared repository, from the primary.
    assert!(node.iter().any(|n| n.starts_with("continuous archiving")));
    let (role, _, witness) = names("witness");
    assert!(
        !witness
            .iter()
            .any(|n| n.starts_with("continuous archiving"))
    );
    assert_eq!(role, Role::Witness);
    assert!(witness.iter().any(|n| n == "etcd has a majority"));
    for never in [
        "PostgreSQL running",
        "PgBouncer running",
        "the API",
        "Patroni",
    ] {
        assert!(
            !witness.iter().any(|n| n.starts_with(never)),
            "a witness runs {never:?}: {witness:?}"
        );
    }
    let (role, single) = names_single(&settings());
    assert_eq!(role, Role::Single);
    assert!(
        !single
            .iter()
            .any(|n| n.contains("etcd") || n.contains("Patroni"))
    );
}

fn names_single(s: &crate::settings::Settings) -> (super::playbook::Role, Vec<String>) {
    let s = super::install_settings(s.clone(), 15, &crate::install::TlsMode::SelfSigned);
    let vars = super::vars(&s, 15);
    let role = super::playbook::Role::of(&s);
    let steps = super::load_playbook(None, &vars, role).unwrap();
    (role, steps.into_iter().map(|s| s.name).collect())
}

#[test]
fn a_cluster_node_takes_the_backup_passphrase_from_the_cluster_secrets() {
    let root = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.cluster.name = Some("main".into());
    s.cluster.node = Some("db2".into());
    s.cluster.nodes = crate::settings::example_nodes();
    s.archive.s3 = Some(crate::settings::S3Repository {
        endpoint: "s3.example.net".into(),
        bucket: "backups".into(),
        ..Default::default()
    });
    let pass_file = s.archive.s3.as_ref().unwrap().cipher_pass_file.clone();
    let secrets_file = root
        .path()
        .join(s.cluster.secrets_file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(secrets_file.parent().unwrap()).unwrap();
    let write_secrets = |text: &str| {
        std::fs::write(&secrets_file, text).unwrap();
        std::fs::set_permissions(
            &secrets_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    };
    let secrets = crate::model::cluster::ClusterSecrets::generate();
    write_secrets(&secrets.render());
    let mut cx = cx(root.path(), Arc::new(FakeSystem::new(PACKAGES)), s);
    let plan = super::steps::cluster::secrets_check(&mut cx).unwrap();
    let want = format!("{} from the cluster's secrets", pass_file.display());
    assert!(plan.changes.contains(&want), "{:?}", plan.changes);
    let manifest = Manifest::default();
    super::steps::cluster::secrets_apply(&mut cx, &manifest).unwrap();
    let written = root.path().join(pass_file.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        secrets.backup.as_ref().unwrap().expose()
    );
    assert!(
        super::steps::cluster::secrets_check(&mut cx)
            .unwrap()
            .is_ok()
    );

    // A secrets file from before the passphrase was shared: the operator is told what to add,
    // rather than each node generating a passphrase of its own.
    let old = crate::model::cluster::ClusterSecrets {
        backup: None,
        ..secrets
    };
    write_secrets(&old.render());
    let e = super::steps::cluster::secrets_check(&mut cx).unwrap_err();
    assert!(format!("{e:#}").contains("has no `backup` line"), "{e:#}");
}
