//! Restores from the CLI: in place after a table is dropped, into a new database beside an
//! untouched original, and a damaged dump refused before anything changes.

use super::{
    checksum, files, listed, load, pgaas, remove, run_one, su, temp_state_dir, tenant, text,
};

#[tokio::test]
async fn backup_drop_a_table_restore_in_place_and_the_data_is_identical() {
    let t = tenant("inplace").await;
    let db = t.database_name.as_str();
    load(&t);
    let before = checksum(db);
    let backups = temp_state_dir("bk-inplace");

    let out = pgaas(
        &backups,
        &["backup", "run", "--database", &t.id.to_string()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{db}: dumping")) && stderr.contains("verified"),
        "{stderr}"
    );
    let dir = backups.join(db);
    let names = files(&dir);
    assert_eq!(
        names.len(),
        2,
        "a dump and its sidecar, nothing else: {names:?}"
    );
    let dump = dir.join(&names[0]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dump.display().to_string()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dump).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // The sidecar is what sha256sum writes, so operators can check it without pgaas.
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg(&names[1])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    su(
        db,
        "DROP TABLE items; UPDATE notes SET body = 'changed' WHERE id < 10;",
    );
    assert_ne!(
        su(
            db,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'items'"
        ),
        "1"
    );

    // Without a terminal and without --yes, nothing happens.
    let out = pgaas(&backups, &["restore", db]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        text(&out)
    );
    assert_eq!(
        su(
            db,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'items'"
        ),
        "0"
    );

    // What the database is besides its data: a restore in place keeps it all, a read-only
    // default among it (the tenant has no quota here, so quota enforcement, which would reset a
    // read-only default on a tenant under its quota, leaves it alone).
    su(
        &crate::harness::platform().settings.control_db.name,
        &format!("UPDATE databases SET max_size_mb = 0 WHERE database_name = '{db}'"),
    );
    su(
        "postgres",
        &format!(
            "ALTER DATABASE {db} CONNECTION LIMIT 4; ALTER DATABASE {db} SET application_name = 'kept_app'; ALTER DATABASE {db} SET default_transaction_read_only = on"
        ),
    );
    let props = format!(
        "SELECT d.datconnlimit || ' ' || pg_get_userbyid(d.datdba) || ' ' || array_to_string(s.setconfig, '|')
         FROM pg_database d JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0
         WHERE d.datname = '{db}'"
    );
    let props_before = su("postgres", &props);
    let out = pgaas(&backups, &["restore", db, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(su("postgres", &props), props_before);
    su(
        "postgres",
        &format!("ALTER DATABASE {db} RESET default_transaction_read_only"),
    );
    assert_eq!(checksum(db), before);
    assert_eq!(
        su(
            db,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ),
        t.username.as_str()
    );
    remove(&t).await;
}

#[tokio::test]
async fn restore_into_a_new_database_copies_the_data_and_leaves_the_original_alone() {
    let t = tenant("into").await;
    let db = t.database_name.as_str();
    load(&t);
    let at_backup = checksum(db);
    let backups = temp_state_dir("bk-into");
    let out = pgaas(&backups, &["backup", "run", "--database", db]);
    assert!(out.status.success(), "{}", text(&out));
    su(db, "INSERT INTO items VALUES (100000, 'after the backup')");
    let original = checksum(db);
    assert_ne!(original, at_backup);

    let copy = format!("{db}_copy");
    for bad in ["Bad-Name", "postgres", db] {
        let out = pgaas(&backups, &["restore", db, "--into", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
    }
    // The names of the shadow database and of a copy an in-place restore keeps are refused,
    // by name: what owns them would otherwise drop or trip over the restored data.
    for (reserved, owner) in [
        (format!("{db}_shadow"), "shadow database"),
        (format!("{db}_20260101000000"), "keeps"),
    ] {
        let out = pgaas(&backups, &["restore", db, "--into", &reserved]);
        assert_eq!(out.status.code(), Some(2), "{reserved}: {}", text(&out));
        assert!(text(&out).contains(owner), "{reserved}: {}", text(&out));
        assert_eq!(
            su(
                "postgres",
                &format!("SELECT count(*) FROM pg_database WHERE datname = '{reserved}'")
            ),
            "0"
        );
    }
    let out = pgaas(&backups, &["restore", &t.id.to_string(), "--into", &copy]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        checksum(&copy),
        at_backup,
        "the copy holds the backup's data"
    );
    assert_eq!(checksum(db), original, "the original is untouched");
    let (owner, public_connect) = (
        su(
            "postgres",
            &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{copy}'"),
        ),
        su(
            "postgres",
            &format!("SELECT has_database_privilege('public', '{copy}', 'CONNECT')"),
        ),
    );
    assert_eq!(owner, t.username.as_str());
    assert_eq!(public_connect, "f");
    assert_eq!(
        su(
            &copy,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"
        ),
        t.username.as_str()
    );
    su("postgres", &format!("DROP DATABASE {copy} WITH (FORCE)"));
    remove(&t).await;
}

#[tokio::test]
async fn a_checksum_mismatch_makes_restore_refuse_without_touching_anything() {
    let t = tenant("mismatch").await;
    let db = t.database_name.as_str();
    load(&t);
    let backups = temp_state_dir("bk-mismatch");
    let dump = run_one(&backups, db);
    su(db, "DELETE FROM items WHERE id > 1000");
    let now = checksum(db);
    let mut bytes = std::fs::read(&dump).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&dump, bytes).unwrap();

    let listed = listed(&backups, db);
    assert_eq!(listed[0]["checksum"], "mismatch");
    let copy = format!("{db}_never");
    let from = dump.display().to_string();
    for args in [
        vec!["restore", db, "--yes"],
        vec!["restore", db, "--yes", "--from", &from],
        vec!["restore", db, "--from", &from, "--into", &copy],
    ] {
        let out = pgaas(&backups, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("nothing was changed") || stderr.contains("no verified backup"),
            "{stderr}"
        );
    }
    assert_eq!(checksum(db), now);
    assert_eq!(
        su(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{copy}'")
        ),
        "0"
    );
    remove(&t).await;
}
