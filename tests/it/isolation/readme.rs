//! The original README's "Testing Examples", end to end: create, connect with the returned
//! credentials over TLS (verify-full), create a table, insert, select, see the stats, delete, and
//! find the credentials, role and database gone; once through the tenant service, once through
//! the HTTP API with its connection string and a PATCH of the connection limit.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn readme_flow_create_connect_use_stats_delete() {
    let svc = service();
    let created = create(&svc, "readme", None).await;
    let t = &created.tenant;
    let (user, db, pw) = (
        t.username.as_str(),
        t.database_name.as_str(),
        created.password.expose(),
    );

    let sql = "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
               INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com'), ('Linus', 'linus@example.com');
               SELECT string_agg(name, ',' ORDER BY id) FROM users;";
    let (ok, out, err) = tenant_psql(user, pw, db, sql);
    assert!(
        ok,
        "psql with the returned credentials (verify-full): {err}"
    );
    assert!(out.ends_with("Ada,Linus"), "{out}");

    // A live session, counted by the stats.
    let client = connect(user, pw, db).await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    let stats = svc.stats(t.id).await.unwrap();
    assert!(stats.size_bytes > 0, "{stats:?}");
    assert!(stats.active_connections >= 1, "{stats:?}");
    assert_eq!(stats.max_connections, 20);

    svc.delete(t.id, &AuditContext::cli()).await.unwrap();
    // The open session was ended by the drop, and the credentials no longer work.
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "session survived DROP DATABASE"
    );
    let e = connect(user, pw, db)
        .await
        .expect_err("deleted tenant still connects");
    // The role is gone, so pg_hba.conf's tenant-group rule no longer matches: refused before
    // any password exchange.
    assert!(
        matches!(
            code(&e),
            Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                | Some(&SqlState::INVALID_PASSWORD)
        ),
        "{}",
        describe(&e)
    );
    let (ok, _, err) = tenant_psql(user, pw, db, "SELECT 1");
    assert!(
        !ok && (err.contains("pg_hba.conf rejects")
            || err.contains("password authentication failed")),
        "{err}"
    );
    assert!(!role_exists(user).await, "role {user} left behind");
    assert!(!database_exists(db).await, "database {db} left behind");
    assert!(matches!(
        svc.get(t.id).await,
        Err(pgaas::tenant::TenantError::NotFound(_))
    ));
}

/// The same flow through the HTTP API, connecting with the very connection string it returns
/// (made stricter: `verify-full` against the CA instead of `require`), and raising the limit
/// with PATCH.
#[tokio::test(flavor = "multi_thread")]
async fn readme_flow_through_the_http_api_with_patch() {
    let p = platform();
    let http = reqwest::Client::new();
    let api = |m: reqwest::Method, path: &str| {
        http.request(m, format!("{}{path}", p.base_url))
            .header("X-API-Key", &p.api_key)
    };
    let res = api(reqwest::Method::POST, "/api/databases")
        .json(&serde_json::json!({
            "friendlyName": "readme over http",
            "ownerEmail": unique_email("http"),
            "maxConnections": 2,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: serde_json::Value = res.json().await.unwrap();
    let data = &body["data"];
    let id = data["id"].as_str().unwrap().to_string();
    let (user, db) = (
        data["username"].as_str().unwrap(),
        data["database_name"].as_str().unwrap(),
    );
    let password = data["password"].as_str().unwrap();
    let url = data["connection_string"].as_str().unwrap();
    assert!(url.ends_with("?sslmode=require"), "{url}");
    let strict = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        url.trim_end_matches("?sslmode=require"),
        p.ca_file.display()
    );
    let (ok, out, err) = psql(
        &strict,
        "CREATE TABLE users (id serial PRIMARY KEY, name text);
         INSERT INTO users (name) VALUES ('Grace');
         SELECT name FROM users;",
        &[],
    );
    assert!(ok, "the returned connection string: {err}");
    assert!(out.ends_with("Grace"), "{out}");

    let held = connect(user, password, db).await.unwrap();
    let stats: serde_json::Value = api(reqwest::Method::GET, &format!("/api/databases/{id}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["data"]["size_bytes"].as_i64().unwrap() > 0, "{stats}");
    assert!(
        stats["data"]["active_connections"].as_i64().unwrap() >= 1,
        "{stats}"
    );
    assert_eq!(stats["data"]["max_connections"], 2);

    let second = connect(user, password, db).await.unwrap();
    let e = connect(user, password, db)
        .await
        .expect_err("a 3rd connection with limit 2");
    assert!(is_too_many(&e), "{}", describe(&e));
    let res = api(reqwest::Method::PATCH, &format!("/api/databases/{id}"))
        .json(&serde_json::json!({ "maxConnections": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let third = connect(user, password, db)
        .await
        .expect("the raised limit holds");
    let e = connect(user, password, db)
        .await
        .expect_err("a 4th connection with limit 3");
    assert!(is_too_many(&e), "{}", describe(&e));
    drop((held, second, third));

    let res = api(reqwest::Method::DELETE, &format!("/api/databases/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (ok, _, _) = psql(&strict, "SELECT 1", &[]);
    assert!(!ok, "the connection string still works after DELETE");
    let res = api(reqwest::Method::GET, &format!("/api/databases/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(!role_exists(user).await && !database_exists(db).await);
}
