//! One tenant back to an instant: exactly the rows committed before it, the neighbours and the
//! tenant's later work untouched where they should be, only the tenant able to reach what a
//! restore makes, the window enforced, and a restore cut short undone.

use reqwest::Method;
use serde_json::json;

use super::{ArchivePlatform, count, instant, pg_time, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_goes_back_to_an_instant_into_a_new_database_and_in_place() {
    let ap = ArchivePlatform::up("pitr", |_, _| {}).await;
    let (a, b) = (ap.tenant("a").await, ap.tenant("b").await);
    // Both databases are younger than the first backup: their window starts at the next one.
    ap.backup("incr");
    // The window opens a second after the backup ends (its end is known to the second).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let pg = ap.pg_port();
    let sa = ap.session(&a, None, pg).await.unwrap();
    let sb = ap.session(&b, None, pg).await.unwrap();
    sa.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'before' FROM generate_series(1, 500) g")
        .await
        .unwrap();
    sb.batch_execute("CREATE TABLE n (id int); INSERT INTO n SELECT generate_series(1, 50)")
        .await
        .unwrap();
    let t = instant(&sa).await;
    // After the instant: more rows, an update, then the mistake.
    sa.batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(501, 700) g; UPDATE t SET v = 'changed' WHERE id <= 10")
        .await
        .unwrap();
    sa.batch_execute("DROP TABLE t").await.unwrap();
    sb.batch_execute("INSERT INTO n SELECT generate_series(51, 80)")
        .await
        .unwrap();

    // --into through the CLI: a new database of A's, the original untouched.
    let out = ap.cli(&[
        "restore",
        a.tenant.database_name.as_str(),
        "--time",
        &pg_time(t),
        "--into",
        "before_drop",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let new = format!("{}_before_drop", a.tenant.database_name.as_str());
    assert!(text(&out).contains(&new), "{}", text(&out));
    for port in [pg, ap.pooler_port()] {
        let s = ap
            .session(&a, Some(&new), port)
            .await
            .unwrap_or_else(|e| panic!("A reaches {new} on {port}: {e}"));
        assert_eq!(
            count(&s, "t").await.unwrap(),
            500,
            "exactly the rows before the instant"
        );
        let changed: i64 = s
            .query_one("SELECT count(*) FROM t WHERE v <> 'before'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(changed, 0, "nothing from after the instant");
        let owner: String = s
            .query_one(
                "SELECT tableowner::text FROM pg_tables WHERE tablename = 't'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            owner,
            a.tenant.username.as_str(),
            "the restored objects belong to the tenant"
        );
    }
    assert!(
        count(&sa, "t").await.is_err(),
        "A's own database still has its table dropped"
    );
    // B cannot reach A's new database on either port, with its own password or A's name.
    for port in [pg, ap.pooler_port()] {
        let r = ap.session(&b, Some(&new), port).await;
        assert!(r.is_err(), "B reached A's restored database on {port}");
    }
    // Nobody else may connect to it: not PUBLIC.
    let su = ap.su("postgres").await;
    let public_connect: bool = su
        .query_one(
            "SELECT has_database_privilege('public', $1, 'CONNECT')",
            &[&new],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!public_connect, "the restored database is closed to PUBLIC");

    // In place through the API, with a session of A open: it ends, and A reconnects to the data
    // as of the instant; the data it replaced stays, dated, A's to read.
    let (status, body) = ap
        .api(
            Method::POST,
            &format!("/api/databases/{}/restore", a.tenant.id),
            Some(json!({ "targetTime": t.to_rfc3339() })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = body["data"]["id"].as_str().unwrap().to_string();
    let done = ap.wait_job(&a, &job).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let kept = done["kept_as"].as_str().unwrap().to_string();
    assert!(
        sa.query_one("SELECT 1", &[]).await.is_err(),
        "A's old session was ended"
    );
    for port in [pg, ap.pooler_port()] {
        let s = ap.session(&a, None, port).await.unwrap();
        assert_eq!(count(&s, "t").await.unwrap(), 500, "in place, on {port}");
    }
    let old = ap.session(&a, Some(&kept), pg).await.unwrap();
    assert!(
        count(&old, "t").await.is_err(),
        "the kept data is what was replaced"
    );
    // B was never touched: all its rows, before and after the instant, and its session lives.
    assert_eq!(count(&sb, "n").await.unwrap(), 80);

    // Audit rows, and the job list.
    let (_, list) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/restore", a.tenant.id),
            None,
        )
        .await;
    assert_eq!(list["count"], 2, "{list}");
    let (_, audit) = ap
        .api(
            Method::GET,
            &format!("/api/audit-logs?databaseId={}", a.tenant.id),
            None,
        )
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"database.restore"), "{actions:?}");
    assert!(
        actions.contains(&"database.restore_requested"),
        "{actions:?}"
    );

    // The operator drops the kept copy; A can no longer reach it, and deleting A takes the rest.
    let out = ap.cli(&["db", "drop-extra", &kept]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(ap.session(&a, Some(&kept), pg).await.is_err());
    ap.tenants
        .delete(a.tenant.id, &pgaas::tenant::AuditContext::cli())
        .await
        .unwrap();
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &[&format!("{}%", a.tenant.database_name.as_str())],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a deleted tenant's restored databases go with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instant_outside_the_window_is_refused_with_the_window() {
    let ap = ArchivePlatform::up("window", |_, _| {}).await;
    let a = ap.tenant("w").await;
    let db = a.tenant.database_name.as_str().to_string();
    // No backup holds A yet: nothing is recoverable, and the message says what to do.
    let now = chrono::Utc::now();
    let out = ap.cli(&["restore", &db, "--time", &pg_time(now), "--into", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no backup holds this database"),
        "{}",
        text(&out)
    );
    ap.backup("incr");
    // Before A's first backup, and in the future: refused, naming the window.
    for (t, why) in [
        (
            now - chrono::Duration::hours(1),
            "outside the recoverable window",
        ),
        (
            chrono::Utc::now() + chrono::Duration::hours(1),
            "in the future",
        ),
    ] {
        let out = ap.cli(&["restore", &db, "--time", &pg_time(t), "--into", "x"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let all = text(&out);
        assert!(all.contains(why) && all.contains(" to "), "{all}");
        let (status, body) = ap
            .api(
                Method::POST,
                &format!("/api/databases/{}/restore", a.tenant.id),
                Some(json!({ "targetTime": t.to_rfc3339(), "into": "x" })),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], "targetTime", "{body}");
        assert!(body["message"].as_str().unwrap().contains(why), "{body}");
    }
    // Bad input: no offset, a hostile name, unknown fields; nothing is queued.
    for (body, field) in [
        (
            json!({ "targetTime": "2026-11-29 14:32:00" }),
            Some("targetTime"),
        ),
        // Multibyte characters once panicked the parser instead of answering 422.
        (json!({ "targetTime": "éé" }), Some("targetTime")),
        (
            json!({ "targetTime": chrono::Utc::now().to_rfc3339(), "into": "x; DROP DATABASE y" }),
            Some("into"),
        ),
        (
            json!({ "targetTime": chrono::Utc::now().to_rfc3339(), "into": "../../etc" }),
            Some("into"),
        ),
        (
            json!({ "targetTime": chrono::Utc::now().to_rfc3339(), "set": "20261130-000000F" }),
            None,
        ),
        (json!({}), Some("targetTime")),
    ] {
        let (status, answer) = ap
            .api(
                Method::POST,
                &format!("/api/databases/{}/restore", a.tenant.id),
                Some(body.clone()),
            )
            .await;
        assert!(matches!(status, 400 | 422), "{body}: {status} {answer}");
        if let Some(f) = field {
            assert_eq!(answer["field"], f, "{body}: {answer}");
        }
    }
    let (_, list) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/restore", a.tenant.id),
            None,
        )
        .await;
    assert_eq!(list["count"], 0, "nothing was queued: {list}");
    // The window is reported with the backups.
    let (status, body) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/backups", a.tenant.id),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let pit = &body["point_in_time"];
    assert_eq!(pit["enabled"], true, "{body}");
    assert!(pit["earliest"].is_string(), "{body}");
    assert!(pit["latest"].is_string(), "{body}");
    assert_eq!(pit["archiving_failing"], false, "{body}");
    // A second restore of the same database while one is queued: 409.
    let su = ap.su(&ap.platform.settings.control_db.name).await;
    su.execute(
        "INSERT INTO restore_jobs (database_id, database_name, target_time, status) VALUES ($1::text::uuid, $2, now(), 'running')",
        &[&a.tenant.id.to_string(), &db],
    )
    .await
    .unwrap();
    // An instant inside the window (the window opens at the tenant's first whole second, so a
    // tenant made a moment ago has none yet): the only thing wrong is the job already running.
    let earliest: chrono::DateTime<chrono::Utc> =
        pit["earliest"].as_str().unwrap().parse().unwrap();
    while chrono::Utc::now() <= earliest + chrono::Duration::seconds(1) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, body) = ap
        .api(
            Method::POST,
            &format!("/api/databases/{}/restore", a.tenant.id),
            Some(json!({ "targetTime": chrono::Utc::now().to_rfc3339(), "into": "y" })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cut_short_is_undone() {
    let ap = ArchivePlatform::up("undo", |_, _| {}).await;
    let a = ap.tenant("u").await;
    let db = a.tenant.database_name.as_str().to_string();
    let host = ap.platform.archive.clone().unwrap();
    // A runner that died mid-swap: the job claimed and running, a half-made database, the
    // tenant's own database closed, a scratch directory left behind.
    let mut conn = host.control().await.unwrap();
    let job =
        pgaas::archive::jobs::enqueue(&mut conn, *a.tenant.id.as_uuid(), chrono::Utc::now(), None)
            .await
            .unwrap();
    let claimed = pgaas::archive::jobs::claim(&mut conn, job.id)
        .await
        .unwrap();
    assert!(claimed.is_some());
    let short = &job.id.simple().to_string()[..12];
    let work = format!("{db}_r{}", &short[..8]);
    let su = ap.su("postgres").await;
    su.batch_execute(&format!("CREATE DATABASE {work}"))
        .await
        .unwrap();
    su.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    let scratch = ap
        .platform
        .settings
        .archive
        .scratch_dir
        .join(format!("restore-{short}"));
    std::fs::create_dir_all(&scratch).unwrap();
    // While its runner holds the job, nothing is undone.
    assert!(
        pgaas::archive::jobs::recover_interrupted(&host)
            .await
            .unwrap()
            .is_empty()
    );
    drop(conn); // the runner dies
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let undone = pgaas::archive::jobs::recover_interrupted(&host)
        .await
        .unwrap();
    assert_eq!(undone, vec![job.id]);
    let exists: bool = su
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&work],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "the half-made database was dropped");
    assert!(!scratch.exists(), "the scratch directory was removed");
    ap.session(&a, None, ap.pg_port())
        .await
        .expect("the tenant's database is open again");
    let mut conn = host.control().await.unwrap();
    let j = pgaas::archive::jobs::get(&mut conn, job.id).await.unwrap();
    assert_eq!(j.status, "failed");
    assert!(j.error.unwrap().contains("interrupted"));
}

/// One tenant's stuck restore held up every restore on the host: the worker had no limit on a
/// job. Past `archive.restore_job_timeout_secs` the job is stopped and undone, and an API
/// client learns why in a classified sentence, never the tools' raw text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_past_its_time_limit_is_undone_and_clients_get_a_classified_reason() {
    let ap = ArchivePlatform::up("joblimit", |_, _| {}).await;
    let a = ap.tenant("t").await;
    let db = a.tenant.database_name.as_str().to_string();
    ap.backup("incr");
    let (_, body) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/backups", a.tenant.id),
            None,
        )
        .await;
    let earliest: chrono::DateTime<chrono::Utc> = body["point_in_time"]["earliest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    while chrono::Utc::now() <= earliest + chrono::Duration::seconds(1) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut host = ap.platform.archive.clone().unwrap();
    host.job_timeout = std::time::Duration::from_secs(3);
    let mut conn = host.control().await.unwrap();
    let job =
        pgaas::archive::jobs::enqueue(&mut conn, *a.tenant.id.as_uuid(), chrono::Utc::now(), None)
            .await
            .unwrap();
    let job = pgaas::archive::jobs::claim(&mut conn, job.id)
        .await
        .unwrap()
        .unwrap();
    // A job that hangs: its first step waits on its row, which another session holds (a
    // repository that stops answering, a replay that never ends, look the same to the worker).
    let (blocker, blocker_conn) = tokio_postgres::Config::new()
        .host_path(&ap.platform.cluster.socket_dir)
        .port(ap.pg_port())
        .user(&ap.platform.cluster.superuser)
        .dbname(&ap.platform.settings.control_db.name)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(blocker_conn);
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM restore_jobs WHERE id = '{}' FOR UPDATE",
            job.id
        ))
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        blocker.batch_execute("COMMIT").await.unwrap();
    });
    let started = std::time::Instant::now();
    let err =
        pgaas::archive::jobs::run_claimed(&host, &mut conn, &job, &pgaas::archive::log_progress())
            .await
            .unwrap_err();
    assert!(
        matches!(err, pgaas::archive::ArchiveError::JobTimedOut { .. }),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // Undone: nothing of it is left, the tenant's database is as it was and open.
    let short = &job.id.simple().to_string()[..12];
    let scratch = ap
        .platform
        .settings
        .archive
        .scratch_dir
        .join(format!("restore-{short}"));
    for _ in 0..600 {
        if !scratch.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!scratch.exists(), "the scratch cluster was removed");
    let su = ap.su("postgres").await;
    let made: bool = su
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&format!("{db}_r{}", &short[..8])],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!made, "no restored database was left");
    ap.session(&a, None, ap.pg_port())
        .await
        .expect("the tenant's database is open");
    let row = pgaas::archive::jobs::get(&mut conn, job.id).await.unwrap();
    assert_eq!(row.status, "failed");
    assert!(
        row.error
            .as_deref()
            .unwrap()
            .contains("archive.restore_job_timeout_secs"),
        "the operator's detail is kept: {row:?}"
    );
    let (status, body) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/restore/{}", a.tenant.id, job.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["error"], "the job ran past its time limit; nothing was changed",
        "{body}"
    );
    // A failure that quoted pg_restore (a path, the text a tenant's function raised): the
    // client gets a sentence, not the text.
    let su_control = ap.su(&ap.platform.settings.control_db.name).await;
    su_control
        .execute(
            "INSERT INTO restore_jobs (database_id, database_name, target_time, status, error, finished_at)
             VALUES ($1::text::uuid, $2, now(), 'failed', $3, now())",
            &[
                &a.tenant.id.to_string(),
                &db,
                &"pg_restore: error: could not execute query: ERROR:  tenant-secret-xyzzy\nCONTEXT: /var/lib/pgaas/scratch/restore-0123456789ab/data",
            ],
        )
        .await
        .unwrap();
    let (status, body) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/restore", a.tenant.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let all = body.to_string();
    assert!(
        !all.contains("tenant-secret-xyzzy") && !all.contains("/var/lib/pgaas"),
        "{all}"
    );
    assert!(all.contains("the operator has the details"), "{all}");
}

/// The worker ran one job at a time, so one tenant's long restore held up every other
/// tenant's: restores of different tenants now run side by side (two by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_of_two_tenants_run_at_the_same_time() {
    let ap = ArchivePlatform::up("concurrent", |_, _| {}).await;
    let (a, b) = (ap.tenant("ca").await, ap.tenant("cb").await);
    ap.backup("incr");
    let (_, body) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/backups", b.tenant.id),
            None,
        )
        .await;
    let earliest: chrono::DateTime<chrono::Utc> = body["point_in_time"]["earliest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    while chrono::Utc::now() <= earliest + chrono::Duration::seconds(1) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let time = chrono::Utc::now().to_rfc3339();
    let mut ids = Vec::new();
    for t in [&a, &b] {
        let (status, body) = ap
            .api(
                Method::POST,
                &format!("/api/databases/{}/restore", t.tenant.id),
                Some(json!({ "targetTime": time, "into": "side" })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["data"]["id"].as_str().unwrap().to_string());
    }
    let su = ap.su(&ap.platform.settings.control_db.name).await;
    let mut both_running = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let rows = su
            .query(
                "SELECT status FROM restore_jobs WHERE id::text = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap();
        let statuses: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if statuses.iter().filter(|s| *s == "running").count() == 2 {
            both_running = true;
        }
        if statuses.iter().all(|s| s == "succeeded" || s == "failed") {
            assert!(statuses.iter().all(|s| s == "succeeded"), "{statuses:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        both_running,
        "the two tenants' restores ran at the same time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_restore_keeps_the_connection_limit_settings_and_quota_default() {
    let ap = ArchivePlatform::up("pitr-keeps", |_, _| {}).await;
    let a = ap.tenant("k").await;
    let db = a.tenant.database_name.as_str().to_string();
    ap.backup("incr");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let pg = ap.pg_port();
    let sa = ap.session(&a, None, pg).await.unwrap();
    sa.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5)")
        .await
        .unwrap();
    let t = instant(&sa).await;
    // The operator's limit, the tenant's own database settings (a list value among them), and
    // the read-only default a quota sets.
    let (status, body) = ap
        .api(
            Method::PATCH,
            &format!("/api/databases/{}", a.tenant.id),
            Some(json!({ "maxConnections": 7 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sa.batch_execute(&format!(
        "ALTER DATABASE {db} SET search_path = \"$user\", public, \"Odd, one\"; ALTER DATABASE {db} SET application_name = 'kept_app'"
    ))
    .await
    .unwrap();
    let su = ap.su("postgres").await;
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET default_transaction_read_only = on"
    ))
    .await
    .unwrap();
    let props = "SELECT d.datconnlimit, pg_get_userbyid(d.datdba)::text,
                        (SELECT array_to_string(s.setconfig, '|') FROM pg_db_role_setting s
                          WHERE s.setdatabase = d.oid AND s.setrole = 0)
                 FROM pg_database d WHERE d.datname = $1";
    // Restore targets never take the name of the shadow, of a kept copy, or the database's own.
    for into in [
        "shadow".to_string(),
        format!("{db}_shadow"),
        "20260101000000".to_string(),
        db.clone(),
    ] {
        let (status, body) = ap
            .api(
                Method::POST,
                &format!("/api/databases/{}/restore", a.tenant.id),
                Some(json!({ "targetTime": t.to_rfc3339(), "into": into })),
            )
            .await;
        assert_eq!(status, 422, "{into}: {body}");
        let message = body.to_string();
        assert!(
            message.contains("shadow database")
                || message.contains("restore keeps")
                || message.contains("in place"),
            "{into}: {body}"
        );
    }
    // A database nobody has is the operator's to correct: exit 2, like a malformed name.
    let out = ap.cli(&["restore", "tenant_0000000000000000", "--time", &pg_time(t)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = ap.cli(&["restore", &db, "--time", &pg_time(t), "--into", "shadow"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("shadow database"), "{}", text(&out));
    // In place from the CLI asks, as a dump restore in place does: without a terminal,
    // nothing happens without --yes.
    let out = ap.cli(&["restore", &db, "--time", &pg_time(t)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    let (_, list) = ap
        .api(
            Method::GET,
            &format!("/api/databases/{}/restore", a.tenant.id),
            None,
        )
        .await;
    assert_eq!(list["count"], 0, "no job was queued: {list}");
    let before = su.query_one(props, &[&db]).await.unwrap();
    let before: (i32, String, String) = (before.get(0), before.get(1), before.get(2));
    assert_eq!(before.0, 7);

    let (status, body) = ap
        .api(
            Method::POST,
            &format!("/api/databases/{}/restore", a.tenant.id),
            Some(json!({ "targetTime": t.to_rfc3339() })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = body["data"]["id"].as_str().unwrap().to_string();
    let done = ap.wait_job(&a, &job).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let after = su.query_one(props, &[&db]).await.unwrap();
    let after: (i32, String, Option<String>) = (after.get(0), after.get(1), after.get(2));
    assert_eq!(after.0, 7, "the connection limit stays");
    assert_eq!(after.1, before.1, "the owner stays");
    assert_eq!(
        after.2.as_deref(),
        Some(before.2.as_str()),
        "every database setting stays"
    );
    let s = ap.session(&a, None, pg).await.unwrap();
    assert_eq!(count(&s, "t").await.unwrap(), 5);
    let row = s
        .query_one(
            "SELECT current_setting('search_path'), current_setting('application_name'), current_setting('default_transaction_read_only')",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        got,
        (
            "\"$user\", public, \"Odd, one\"".to_string(),
            "kept_app".to_string(),
            "on".to_string()
        ),
        "a new session of the tenant sees its settings and the quota's read-only default"
    );
}
