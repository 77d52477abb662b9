//! `/api/databases/{id}/backups`: a backup made through the API (as the API role), listed,
//! audited, and refused without a key or for an unknown id.

use serde_json::Value;

use super::{listed, load, platform, remove, su, tenant};

#[tokio::test]
async fn api_backups_are_made_listed_audited_and_need_a_key() {
    let p = platform();
    let t = tenant("api").await;
    load(&t);
    let client = reqwest::Client::new();
    let url = |id: &str| format!("{}/api/databases/{id}/backups", p.base_url);
    let id = t.id.to_string();

    let res = client
        .post(url(&id))
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let data = &body["data"];
    let name = data["file_name"].as_str().unwrap().to_string();
    assert!(name.ends_with(".dump"), "{body}");
    assert!(data["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(data["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(data["checksum"], "verified");
    assert!(data["created_at"].is_string());
    // Dumped as the API role into the platform's backup directory, restorable like any other.
    let path = p
        .settings
        .paths
        .backup_dir
        .join(t.database_name.as_str())
        .join(&name);
    assert!(path.is_file());
    assert!(
        !body
            .to_string()
            .contains(&p.settings.paths.backup_dir.display().to_string()),
        "no host paths: {body}"
    );

    let res = client
        .get(url(&id))
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(list["data"][0]["file_name"], name.as_str());

    let unknown = uuid::Uuid::new_v4().to_string();
    for req in [client.post(url(&unknown)), client.get(url(&unknown))] {
        let res = req.header("X-API-Key", &p.api_key).send().await.unwrap();
        assert_eq!(res.status(), 404);
    }
    for req in [client.post(url(&id)), client.get(url(&id))] {
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    let control = &p.settings.control_db.name;
    let audit = su(
        control,
        &format!(
            "SELECT outcome || ' ' || (details->>'file_name') FROM audit_logs WHERE action = 'database.backup' AND resource_id = '{id}'"
        ),
    );
    assert_eq!(audit, format!("success {name}"));
    let listed = listed(&p.settings.paths.backup_dir, t.database_name.as_str());
    assert_eq!(listed.len(), 1, "still one: the 401s made nothing");
    remove(&t).await;
}

/// A backup asked for while an in-place point-in-time restore swaps the database (the job
/// running, the database closed) is busy, not an internal error: 409 with Retry-After.
#[tokio::test]
async fn a_backup_during_an_in_place_restore_swap_is_busy() {
    let p = platform();
    let t = tenant("swap").await;
    let (db, id) = (t.database_name.as_str(), t.id.to_string());
    let control = &p.settings.control_db.name;
    su(
        control,
        &format!(
            "INSERT INTO restore_jobs (database_id, database_name, target_time, status)
             VALUES ('{id}', '{db}', now(), 'running')"
        ),
    );
    su(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    );
    let res = reqwest::Client::new()
        .post(format!("{}/api/databases/{id}/backups", p.base_url))
        .header("X-API-Key", &p.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert!(res.headers().get("retry-after").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "busy", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("restored in place"),
        "{body}"
    );
    su(
        "postgres",
        &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"),
    );
    su(
        control,
        &format!("UPDATE restore_jobs SET status = 'failed' WHERE database_id = '{id}'"),
    );
    remove(&t).await;
}
