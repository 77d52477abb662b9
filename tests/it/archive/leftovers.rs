//! Scratch clusters nobody runs any more: a restore killed after it succeeded but before it
//! removed its scratch cluster left a copy of the tenant's data (and a running server) under
//! `archive.scratch_dir` for good, and `pgaas doctor` said all was well. The worker removes
//! them at its start, never those of a runner still alive, never following a symlink the
//! cluster's OS user planted; doctor names them.

use std::process::Command;

use super::{ArchivePlatform, text};

fn postmaster_pid(data: &std::path::Path) -> i32 {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_cluster_left_by_a_killed_restore_is_removed_and_reported() {
    let ap = ArchivePlatform::up("leftover", |_, _| {}).await;
    let host = ap.platform.archive.clone().unwrap();
    let base = ap.platform.settings.archive.scratch_dir.clone();
    let (a, b) = (ap.tenant("la").await, ap.tenant("lb").await);

    // A restore killed right after its job succeeded: the job row says so, its runner is gone,
    // its scratch cluster still runs.
    let mut conn = host.control().await.unwrap();
    let done =
        pgaas::archive::jobs::enqueue(&mut conn, *a.tenant.id.as_uuid(), chrono::Utc::now(), None)
            .await
            .unwrap();
    assert!(
        pgaas::archive::jobs::claim(&mut conn, done.id)
            .await
            .unwrap()
            .is_some()
    );
    let short = done.id.simple().to_string()[..12].to_string();
    let scratch = pgaas::archive::scratch::Scratch::create(
        &base,
        &format!("restore-{short}"),
        &host.engine.owner,
        &host.bin,
        &ap.platform.settings.postgres.superuser,
    )
    .unwrap();
    let left = scratch.dir.clone();
    let data = scratch.data_dir();
    let sock = scratch.socket_dir();
    std::mem::forget(scratch); // killed: nothing of it runs its cleanup
    let owner = host.engine.owner.name.clone();
    let run_as = |tool: &str, args: &[&str]| {
        let out = Command::new("runuser")
            .args(["-u", &owner, "--"])
            .arg(host.bin.tool(tool))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool}: {}", text(&out));
    };
    let data_s = data.display().to_string();
    run_as("initdb", &["-D", &data_s, "-A", "peer"]);
    let opts = format!(
        "-c listen_addresses='' -c port={} -c unix_socket_directories={}",
        crate::harness::free_port(),
        sock.display()
    );
    let log = left.join("server.log").display().to_string();
    run_as(
        "pg_ctl",
        &["-D", &data_s, "-l", &log, "-o", &opts, "-w", "start"],
    );
    let pid = postmaster_pid(&data);
    assert!(alive(pid));
    sqlx::query("UPDATE restore_jobs SET status = 'succeeded', step = 'done', finished_at = now() WHERE id = $1")
        .bind(done.id)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn); // the runner dies
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // The cluster's OS user owns the scratch tree: a symlink in it, and one in place of a
    // scratch directory, point at files outside. Cleanup removes the links, not their targets.
    let outside = tempfile_dir("leftover-outside");
    let precious = outside.join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    std::os::unix::fs::symlink(&precious, left.join("link-to-precious")).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("link-to-outside")).unwrap();
    let planted = base.join("restore-0123456789ab");
    std::os::unix::fs::symlink(&outside, &planted).unwrap();

    // A restore of another tenant that is still running: its directory is its own.
    let mut live_conn = host.control().await.unwrap();
    let live = pgaas::archive::jobs::enqueue(
        &mut live_conn,
        *b.tenant.id.as_uuid(),
        chrono::Utc::now(),
        None,
    )
    .await
    .unwrap();
    assert!(
        pgaas::archive::jobs::claim(&mut live_conn, live.id)
            .await
            .unwrap()
            .is_some()
    );
    let live_dir = base.join(format!("restore-{}", &live.id.simple().to_string()[..12]));
    std::fs::create_dir_all(&live_dir).unwrap();

    // Doctor names the leftover with what removes it, and not the live one.
    let out = ap.cli(&["doctor"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&left.display().to_string()), "{said}");
    assert!(said.contains("rm -rf"), "{said}");
    assert!(!said.contains(&live_dir.display().to_string()), "{said}");

    // The worker's start removes it, stopping its server first.
    pgaas::archive::jobs::recover_interrupted(&host)
        .await
        .unwrap();
    assert!(!left.exists(), "the leftover scratch directory was removed");
    assert!(
        std::fs::symlink_metadata(&planted).is_err(),
        "the planted symlink itself was removed"
    );
    for _ in 0..50 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!alive(pid), "the leftover scratch server was stopped");
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "keep me",
        "nothing outside the scratch tree was touched"
    );
    assert!(live_dir.exists(), "a running restore keeps its directory");

    let out = ap.cli(&["doctor"]);
    assert!(
        !text(&out).contains(&left.display().to_string()),
        "{}",
        text(&out)
    );
    drop(live_conn);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgaas-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
