//! Continuous archiving on a cluster (`ha_cluster` with the real engines, and moto behind
//! stunnel as the S3 repository both nodes share): the primary archives and takes the backups,
//! the standby leaves them to it; when the primary dies the promoted node archives its new
//! timeline into the same repository, its worker (which waited while the node was a standby)
//! takes an incremental backup at once, the node takes the next timer backup, and the worker
//! restores a tenant to an instant after the failover.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    archive::{count, instant, s3, text},
    ha_cluster::{
        Cluster, Node, insert_retrying, pgaas_bin, psql_retrying, wait_primary, wait_status,
    },
    harness::temp_state_dir,
};

fn cli(node: &Node, args: &[&str]) -> Output {
    pgaas_bin()
        .arg("--config")
        .arg(node.dir.join("pgaas.yaml"))
        .args(args)
        .output()
        .unwrap()
}

/// Until the worker's log says `needle`.
async fn wait_worker_says(node: &Node, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !node.worker_log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the worker on {} never said {needle:?}:\n{}",
            node.name,
            node.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_follows_the_primary_and_a_tenant_recovers_past_a_failover() {
    let base = temp_state_dir("ha-archive");
    let server = s3::start(&base);
    let repo = s3::repository(&server, &base);
    let mut cl = Cluster::start_with(base.clone(), 2, |s, dir| {
        let a = &mut s.archive;
        a.enabled = true;
        a.s3 = Some(pgaas::settings::S3Repository {
            cipher_pass_file: dir.join("backup-passphrase"),
            ..repo.clone()
        });
        a.config_dir = dir.join("pgbackrest");
        a.repo_path = dir.join("pgbackrest-repo");
        a.spool_path = dir.join("pgbackrest-spool");
        a.lock_path = dir.join("pgbackrest-spool/lock");
        a.log_path = dir.join("pgbackrest-log");
        a.scratch_dir = dir.join("scratch");
        a.archive_timeout_secs = 10;
        a.process_max = 1;
    })
    .await;
    let primary = cl.primary().await;
    let standby = 1 - primary;
    wait_status(
        &cl.http,
        &cl.nodes[standby],
        "/sync",
        Duration::from_secs(90),
    )
    .await;
    cl.start_api(primary, &[primary, standby]).await;
    let api = cl.apis();

    // A tenant with rows, then the stanza and the first full backup, which only the primary
    // takes: the shared repository has one number, 2, and no local repository 1 exists.
    let (code, body, _) = api(primary)
        .call(
            "POST",
            "/api/databases",
            Some(json!({ "friendlyName": "archived", "ownerEmail": "ha@example.com" })),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let tenant_id = body["data"]["id"].as_str().unwrap().to_string();
    let db = body["data"]["database_name"].as_str().unwrap().to_string();
    let url = body["data"]["connection_string"].as_str().unwrap().replace(
        "sslmode=require",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            cl.ca.cert_file.display()
        ),
    ) + "&connect_timeout=2";
    assert!(psql_retrying(
        &url,
        "CREATE TABLE acked (id bigint PRIMARY KEY)",
        Duration::from_secs(10)
    ));
    assert!(insert_retrying(&url, 1, Duration::from_secs(10)).is_some());

    let conf = std::fs::read_to_string(cl.nodes[primary].settings.archive.config_file()).unwrap();
    assert!(
        !conf.contains("repo1-") && conf.contains("repo2-type=s3"),
        "a node's pgBackRest has the shared repository only:\n{conf}"
    );
    let out = cli(&cl.nodes[standby], &["backup", "base", "--type", "full"]);
    assert!(
        out.status.success() && text(&out).contains("is a standby"),
        "a standby's backup timer: {}",
        text(&out)
    );
    {
        let host = pgaas::archive::restore::ArchiveHost::new(
            std::sync::Arc::new(cl.nodes[primary].settings.clone()),
            None,
        )
        .unwrap();
        assert_eq!(host.engine.repos, vec![2]);
        pgaas::archive::bootstrap(&host, &pgaas::archive::terminal_progress())
            .await
            .unwrap_or_else(|e| panic!("stanza and first backup on the primary: {e}"));
    }
    let out = cli(&cl.nodes[standby], &["backup", "status"]);
    assert!(
        text(&out).contains("the primary's (this node is a standby)"),
        "{}",
        text(&out)
    );
    for i in [primary, standby] {
        cl.nodes[i].start_worker();
    }
    wait_worker_says(&cl.nodes[standby], "this node is a standby").await;
    // A restore asked of the standby's API is refused cleanly: its control DB is read-only.
    let (code, body, retry) = api(standby)
        .call(
            "POST",
            &format!("/api/databases/{tenant_id}/restore"),
            Some(json!({ "targetTime": chrono::Utc::now().to_rfc3339(), "into": "nope" })),
        )
        .await;
    assert_eq!(code, 503, "a restore on the standby's API: {body}");
    assert!(retry.is_some(), "{body}");
    assert!(insert_retrying(&url, 2, Duration::from_secs(10)).is_some());
    // Everything the primary finished is in the repository before it dies: a standby does not
    // archive what it receives, so a segment it had not pushed yet would be a gap (README).
    let su = cl.nodes[primary].su("postgres").await.unwrap();
    let current: String = su
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    su.batch_execute("SELECT pg_switch_wal()").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived: Option<String> = su
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .unwrap()
            .get(0);
        if archived.is_some_and(|a| a >= current) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "segment {current} was not archived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(su);

    // The primary's machine dies; the standby is promoted and writes go on, on a new timeline.
    cl.nodes[primary].kill_hard();
    let new_primary = wait_primary(&cl.http, &cl.nodes[..2], Duration::from_secs(90)).await;
    assert_eq!(new_primary, standby);
    let p = new_primary;
    assert!(
        insert_retrying(&url, 3, Duration::from_secs(60)).is_some(),
        "no write after the failover"
    );
    let su = cl.nodes[p].su(&db).await.unwrap();
    su.batch_execute("CHECKPOINT").await.unwrap();
    let timeline: i32 = su
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(timeline >= 2, "the promoted node is on timeline {timeline}");
    let t = instant(&su).await;
    assert!(insert_retrying(&url, 4, Duration::from_secs(10)).is_some());
    su.execute("DROP TABLE acked", &[]).await.unwrap();

    // The promoted node's worker took over (it undid nothing: no job was running) and took an
    // incremental backup at once; the node takes backups into the same repository from now on.
    wait_worker_says(&cl.nodes[p], "this node is primary: the worker runs").await;
    wait_worker_says(&cl.nodes[p], "incremental backup after the promotion taken").await;
    let out = cli(&cl.nodes[p], &["backup", "base", "--type", "diff"]);
    assert!(
        out.status.success() && text(&out).contains("repository 2: diff backup taken"),
        "a backup on the promoted node: {}",
        text(&out)
    );

    // The tenant back to the instant after the failover. The instant was taken a second or two
    // after the promotion, before the worker (which looks every 10 s) could finish its backup:
    // pgBackRest restores the full backup taken before the failover, and the WAL of both
    // timelines comes from the repository, archived by each primary in turn.
    let (code, body, _) = api(p)
        .call(
            "POST",
            &format!("/api/databases/{tenant_id}/restore"),
            Some(json!({ "targetTime": t.to_rfc3339(), "into": "after_failover" })),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let job = body["data"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    let done = loop {
        let (code, body, _) = api(p)
            .call(
                "GET",
                &format!("/api/databases/{tenant_id}/restore/{job}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let status = body["data"]["status"].as_str().unwrap_or("").to_string();
        if status == "succeeded" || status == "failed" {
            break body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "restore job still {status}: {body}\n{}",
            cl.nodes[p].worker_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        done["status"],
        "succeeded",
        "{done}\n{}",
        cl.nodes[p].worker_log()
    );
    let restored = cl.nodes[p]
        .su(&format!("{db}_after_failover"))
        .await
        .unwrap();
    let ids: Vec<i64> = restored
        .query("SELECT id FROM acked ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        vec![1, 2, 3],
        "the rows of both timelines up to the instant, none after"
    );
    assert!(
        count(&su, "acked").await.is_err(),
        "the tenant's own database was left as it was"
    );
    drop(server);
}
