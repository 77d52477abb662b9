//! The operator CLI against the shared platform, as a separate process with the platform's
//! effective settings file: `pgaas db create|list|show|delete` and `pgaas key create|list|revoke`.

use std::process::Output;

use super::*;
use crate::harness::pgaas_bin;

pub(crate) fn pgaas(args: &[&str]) -> Output {
    let config = platform().state_dir.join("pgaas.yaml");
    pgaas_bin()
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn cli_db_create_list_show_delete() {
    let email = unique_email("cli");
    let out = pgaas(&[
        "db",
        "create",
        "--friendly-name",
        "CLI café",
        "--owner-email",
        &email,
        "--max-connections",
        "3",
        "--json",
    ]);
    let created = stdout_json(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only this once"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not answering"),
        "the platform's PgBouncer runs: no note about it"
    );
    let id = created["id"].as_str().unwrap().to_string();
    let db = created["database_name"].as_str().unwrap().to_string();
    let user = created["username"].as_str().unwrap().to_string();
    let password = created["password"].as_str().unwrap().to_string();
    assert_eq!(created["max_connections"], 3);
    let url = created["connection_string"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "postgresql://{user}:{password}@localhost:{}/{db}?sslmode=require",
            platform().pg_port
        )
    );
    let (ok, out_sql, err) = tenant_psql(&user, &password, &db, "SELECT current_database()");
    assert!(ok, "{err}");
    assert_eq!(out_sql, db);

    let list = stdout_json(&pgaas(&["db", "list", "--owner-email", &email, "--json"]));
    assert_eq!(list["count"], 1);
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert!(list["data"][0].get("password").is_none());
    let table = pgaas(&["db", "list", "--owner-email", &email]);
    let table = String::from_utf8_lossy(&table.stdout);
    let header = table.lines().next().unwrap();
    for col in [
        "ID",
        "DATABASE",
        "OWNER",
        "FRIENDLY NAME",
        "STATUS",
        "MAX CONN",
        "CREATED",
    ] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table.contains(&db) && table.contains("CLI café") && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(&password));

    let shown = stdout_json(&pgaas(&["db", "show", &id, "--json"]));
    assert_eq!(shown["database_name"], db.as_str());
    assert!(
        shown["stats"]["size_bytes"].as_i64().unwrap() > 0,
        "{shown}"
    );
    assert_eq!(shown["stats"]["max_connections"], 3);
    assert!(!shown.to_string().contains(&password));

    // A shadow database for migration tools, by name; made once, reachable, dropped.
    let out = pgaas(&["db", "shadow", &db]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.starts_with("created"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{user}:********@localhost:{}/{db}_shadow",
            platform().pg_port
        )),
        "{text}"
    );
    let (ok, _, err) = tenant_psql(&user, &password, &format!("{db}_shadow"), "SELECT 1");
    assert!(ok, "{err}");
    let again = String::from_utf8_lossy(&pgaas(&["db", "shadow", &id]).stdout).to_string();
    assert!(again.starts_with("exists:"), "{again}");
    let dropped = pgaas(&["db", "shadow", &db, "--drop"]);
    assert!(String::from_utf8_lossy(&dropped.stdout).starts_with("dropped"));

    // Not a terminal and no --yes: refused, nothing dropped.
    let out = pgaas(&["db", "delete", &id]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(pgaas(&["db", "show", &id]).status.success());

    let out = pgaas(&["db", "delete", &id, "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown database is the operator's to correct, like any other bad argument.
    let out = pgaas(&["db", "show", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let (ok, _, _) = tenant_psql(&user, &password, &db, "SELECT 1");
    assert!(!ok, "deleted tenant still connects");

    // Bad input is refused before anything happens, with exit 2.
    let out = pgaas(&[
        "db",
        "create",
        "--friendly-name",
        "x",
        "--owner-email",
        "not-an-email",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ownerEmail"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The status `GET /api/databases` answers with this key.
fn list_with_key(key: &str) -> u16 {
    let url = format!("{}/api/databases?limit=1", platform().base_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let res = reqwest::Client::new()
            .get(url)
            .header("X-API-Key", key)
            .send()
            .await;
        res.unwrap().status().as_u16()
    })
}

#[test]
fn cli_key_create_list_revoke() {
    let name = format!("cli-test-{}", uuid::Uuid::new_v4().simple());
    let out = pgaas(&[
        "key",
        "create",
        "--name",
        &name,
        "--scope",
        "write",
        "--expires-in-days",
        "7",
        "--json",
    ]);
    let created = stdout_json(&out);
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("pgaas_") && key.len() == 58, "{key}");
    assert_eq!(created["scopes"], serde_json::json!(["write"]));

    let listed = stdout_json(&pgaas(&["key", "list", "--json"]));
    let mine = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(mine["name"], name.as_str());
    assert_eq!(mine["state"], "active");
    assert!(mine["expires_at"].is_string());
    let table = pgaas(&["key", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("pgaas_{}", &key[6..14])), "{table}");
    assert!(!table.contains(&key[15..]), "a key secret in the listing");

    assert_eq!(list_with_key(&key), 200, "the new key works");
    let out = pgaas(&["key", "revoke", &key[6..14]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = stdout_json(&pgaas(&["key", "list", "--json"]));
    let mine = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(mine["state"], "revoked");
    assert!(mine["revoked_at"].is_string());
    // The API trusts a verified key for a second (`api::auth`): a revocation by another process
    // is in force once that second has passed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        list_with_key(&key),
        401,
        "the revoked key is still accepted a second after `pgaas key revoke`"
    );
    // Again: idempotent.
    assert!(pgaas(&["key", "revoke", &id]).status.success());
    let out = pgaas(&["key", "revoke", "00000000"]);
    assert_eq!(out.status.code(), Some(2));
    let out = pgaas(&["key", "revoke", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
}
