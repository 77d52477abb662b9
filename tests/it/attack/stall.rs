//! One tenant stalling the API for everyone. A tenant holding a lock on its own database
//! (`BEGIN; ALTER DATABASE own CONNECTION LIMIT 4; SELECT pg_sleep(20)`) plus ten PATCH calls for
//! it used to take every pooled connection: `/health` answered 503 and other tenants' requests
//! failed with 500. Waits are bounded now, each tenant's changes queue without holding a
//! connection, and the waiting request gets 409 or 503 with `Retry-After`.

use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_holding_locks_on_its_own_database_stalls_only_itself() {
    let p = platform();
    let svc = p.tenants();
    let staller = tenant(&svc, "staller").await;
    let bystander = tenant(&svc, "bystander").await;
    let session = own_session(&staller).await;
    session
        .batch_execute(&format!(
            "BEGIN; ALTER DATABASE \"{}\" CONNECTION LIMIT 4;",
            staller.tenant.database_name
        ))
        .await
        .unwrap();
    let backend: i32 = session
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeper = tokio::spawn(async move {
        let _ = session.batch_execute("SELECT pg_sleep(30)").await;
    });

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let patches: Vec<_> = (0..10)
        .map(|_| {
            let (http, url, key) = (
                http.clone(),
                format!("{}/api/databases/{}", p.base_url, staller.tenant.id),
                p.api_key.clone(),
            );
            tokio::spawn(async move {
                let r = http
                    .patch(url)
                    .header("X-API-Key", key)
                    .json(&serde_json::json!({ "maxConnections": 7 }))
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry)
            })
        })
        .collect();

    // While they wait, changes to other tenants go through: a create and a new limit for a
    // neighbour each take the host-wide connection budget's lock, which a PATCH stuck behind
    // the staller's lock must not be holding.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api = |m: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let (http, url, key) = (
            http.clone(),
            format!("{}{path}", p.base_url),
            p.api_key.clone(),
        );
        async move {
            let mut req = http.request(m, url).header("X-API-Key", key);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, made) = api(
        reqwest::Method::POST,
        "/api/databases".into(),
        Some(serde_json::json!({
            "friendlyName": "stall newcomer",
            "ownerEmail": format!("newcomer-{}@attack.example.com", uuid::Uuid::new_v4().simple()),
            "maxConnections": 3
        })),
    )
    .await;
    assert_eq!(status, 201, "a create while a neighbour stalls: {made}");
    let (status, body) = api(
        reqwest::Method::PATCH,
        format!("/api/databases/{}", bystander.tenant.id),
        Some(serde_json::json!({ "maxConnections": 6 })),
    )
    .await;
    assert_eq!(
        status, 200,
        "a neighbour's new limit while one stalls: {body}"
    );
    assert!(
        patches.iter().any(|p| !p.is_finished()),
        "the staller's PATCHes were still waiting meanwhile"
    );

    // And the health check and other tenants are served, promptly.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..8 {
        let health = quick
            .get(format!("{}/health", p.base_url))
            .send()
            .await
            .expect("/health did not answer within 2 s");
        assert_eq!(health.status(), 200);
        let other = quick
            .get(format!(
                "{}/api/databases/{}",
                p.base_url, bystander.tenant.id
            ))
            .header("X-API-Key", &p.api_key)
            .send()
            .await
            .expect("another tenant's GET did not answer within 2 s");
        assert_eq!(other.status(), 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for patch in patches {
        let (status, retry) = patch.await.unwrap();
        assert!(
            status == 409 || status == 503,
            "a PATCH behind the tenant's own lock answered {status}"
        );
        assert!(retry, "{status} without Retry-After");
    }

    // Once the tenant lets go, the same request goes through.
    su("postgres")
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap();
    let _ = sleeper.await;
    let r = http
        .patch(format!(
            "{}/api/databases/{}",
            p.base_url, staller.tenant.id
        ))
        .header("X-API-Key", &p.api_key)
        .json(&serde_json::json!({ "maxConnections": 7 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    remove(&svc, &staller).await;
    remove(&svc, &bystander).await;
    let (status, body) = api(
        reqwest::Method::DELETE,
        format!("/api/databases/{}", made["data"]["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert!(status < 300, "{status} {body}");
}
