//! A restore loads the tenant's own code: a CHECK constraint evaluated for every row COPY loads,
//! an index expression evaluated when the index is built, a trigger. Each calls a function that
//! tries `RESET ROLE` and `RESET SESSION AUTHORIZATION` to reach whatever the restore logged in
//! as, then tries what a superuser could (make itself SUPERUSER, make a role, run a program). In
//! place and into a new database, the load holds no more than the tenant: the function ran (its
//! evidence rows say so), as the tenant or the throwaway load role, never a superuser, and the
//! load role is gone afterwards. A function that sleeps through its restore is stopped at
//! `backups.restore_timeout_secs` and the restore fails, leaving nothing behind.

use std::time::{Duration, Instant};

use crate::{
    backup::{pgaas, remove, run_one, su, tenant, text},
    harness::{pgaas_bin, platform, temp_state_dir},
};

/// The tenant's hostile schema: `zz_items` with a CHECK, an expression index and a trigger that
/// all call `escalate()`, which records who it runs as in `evidence`, once as it is called and
/// once after resetting its role (that row is written only if the reset role may write there).
fn plant(db: &str, role: &str, pwned: &str) {
    su(
        db,
        &format!(
            r#"SET ROLE {role};
CREATE TABLE evidence (app text, who text, sess text, super bool);
GRANT INSERT ON evidence TO PUBLIC;
CREATE FUNCTION escalate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
  -- Quiet while the test plants it (as the superuser with SET ROLE); loud in the restore.
  IF current_setting('application_name') = 'psql' THEN RETURN true; END IF;
  BEGIN
    INSERT INTO public.evidence SELECT current_setting('application_name'), current_user, session_user,
      (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
  EXCEPTION WHEN others THEN NULL; END;
  BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN others THEN NULL; END;
  BEGIN EXECUTE 'RESET SESSION AUTHORIZATION'; EXCEPTION WHEN others THEN NULL; END;
  BEGIN
    INSERT INTO public.evidence SELECT current_setting('application_name'), current_user, session_user,
      (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
  EXCEPTION WHEN others THEN NULL; END;
  BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
  BEGIN EXECUTE 'CREATE ROLE {pwned} LOGIN SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
  BEGIN EXECUTE 'GRANT pg_execute_server_program TO {role}'; EXCEPTION WHEN others THEN NULL; END;
  BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''true'''; INSERT INTO public.evidence VALUES ('program', current_user, session_user, true);
  EXCEPTION WHEN others THEN NULL; END;
  -- Cover the tracks: back to the tenant's role, so the rest of the load goes on as before.
  BEGIN EXECUTE 'SET ROLE {role}'; EXCEPTION WHEN others THEN NULL; END;
  RETURN true;
END $f$;
CREATE FUNCTION escalate_i(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN PERFORM public.escalate(); RETURN $1; END $f$;
CREATE FUNCTION escalate_t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.escalate(); RETURN NEW; END $f$;
CREATE TABLE zz_items (id int PRIMARY KEY CHECK (public.escalate()), name text);
INSERT INTO zz_items SELECT g, 'item ' || g FROM generate_series(1, 20) g;
CREATE INDEX zz_items_expr ON zz_items ((public.escalate_i(id)));
CREATE TRIGGER zz_items_t BEFORE INSERT ON zz_items FOR EACH ROW EXECUTE FUNCTION public.escalate_t();
"#
        ),
    );
}

/// What the load left: no row says a superuser ran the function, some row says it ran during
/// the load, the tenant is no superuser, no role was made, no load role of the tenant is left.
fn assert_held(db: &str, role: &str, pwned: &str) {
    let p = platform();
    assert_eq!(
        su(
            db,
            "SELECT count(*) FROM evidence WHERE super IS NOT FALSE OR app = 'program'"
        ),
        "0",
        "the tenant's code ran with more than the tenant's rights: {}",
        su(
            db,
            "SELECT string_agg(concat_ws(' ', app, who, sess, super), '; ') FROM evidence"
        )
    );
    let during = su(
        db,
        "SELECT string_agg(DISTINCT who || '/' || sess, ' ') FROM evidence WHERE app = 'pgaas-pg_restore'",
    );
    assert!(
        !during.is_empty(),
        "the tenant's function never ran during the load, so nothing was tried"
    );
    for who in during.split(' ') {
        assert!(
            !who.contains(&p.superuser) && !who.contains(&p.settings.control_db.user),
            "the load ran as {who}"
        );
    }
    assert_eq!(
        su(
            "postgres",
            &format!(
                "SELECT rolsuper::text FROM pg_roles WHERE rolname = '{role}'
                 UNION ALL SELECT 'made ' || rolname FROM pg_roles WHERE rolname = '{pwned}'"
            )
        ),
        "false"
    );
    assert_eq!(
        su(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                  WHERE m.roleid = '{role}'::regrole AND starts_with(r.rolname, 'pgaas_load_')"
            )
        ),
        "0",
        "the load role outlived the restore"
    );
    // The tenant still owns everything, and its data is whole.
    assert_eq!(su(db, "SELECT count(*) FROM zz_items"), "20");
    assert_eq!(
        su(
            db,
            &format!(
                "SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
                  AND c.relowner <> '{role}'::regrole"
            )
        ),
        "0"
    );
}

#[tokio::test]
async fn a_dump_restore_in_place_runs_the_tenants_code_with_the_tenants_rights_only() {
    let t = tenant("hostile-inplace").await;
    let (db, role) = (t.database_name.as_str(), t.username.as_str());
    let pwned = format!("pwned_{}", &db[db.len() - 8..]);
    plant(db, role, &pwned);
    let backups = temp_state_dir("bk-hostile-inplace");
    run_one(&backups, db);
    let out = pgaas(&backups, &["restore", db, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_held(db, role, &pwned);
    remove(&t).await;
}

#[tokio::test]
async fn a_dump_restore_into_a_new_database_runs_the_tenants_code_with_the_tenants_rights_only() {
    let t = tenant("hostile-into").await;
    let (db, role) = (t.database_name.as_str(), t.username.as_str());
    let pwned = format!("pwned_{}", &db[db.len() - 8..]);
    plant(db, role, &pwned);
    let backups = temp_state_dir("bk-hostile-into");
    run_one(&backups, db);
    let new = format!("{db}_copy");
    let out = pgaas(&backups, &["restore", db, "--into", &new]);
    assert!(out.status.success(), "{}", text(&out));
    assert_held(&new, role, &pwned);
    su("postgres", &format!("DROP DATABASE {new} WITH (FORCE)"));
    remove(&t).await;
}

#[tokio::test]
async fn a_tenant_that_sleeps_through_its_restore_is_stopped_at_the_time_limit() {
    let t = tenant("hostile-sleep").await;
    let (db, role) = (t.database_name.as_str(), t.username.as_str());
    su(
        db,
        &format!(
            r#"SET ROLE {role};
CREATE FUNCTION nap() RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF current_setting('application_name') = 'pgaas-pg_restore' THEN
    PERFORM set_config('statement_timeout', '0', false);
    PERFORM pg_sleep(3600);
  END IF;
  RETURN true;
END $f$;
CREATE TABLE slow (id int CHECK (public.nap()));
INSERT INTO slow VALUES (1);"#
        ),
    );
    let backups = temp_state_dir("bk-hostile-sleep");
    run_one(&backups, db);
    let new = format!("{db}_slow");
    let p = platform();
    let started = Instant::now();
    let out = pgaas_bin()
        .arg("--config")
        .arg(p.state_dir.join("pgaas.yaml"))
        .env("PGAAS_PATHS__BACKUP_DIR", &backups)
        .env("PGAAS_BACKUPS__RESTORE_TIMEOUT_SECS", "10")
        .args(["restore", db, "--into", &new])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backups.restore_timeout_secs"),
        "{}",
        text(&out)
    );
    assert!(
        took < Duration::from_secs(120),
        "the restore held on for {took:?}"
    );
    assert_eq!(
        su(
            "postgres",
            &format!(
                "SELECT (SELECT count(*) FROM pg_database WHERE datname = '{new}')
                      + (SELECT count(*) FROM pg_stat_activity WHERE starts_with(usename, 'pgaas_load_') AND datname = '{new}')
                      + (SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                          WHERE m.roleid = '{role}'::regrole AND starts_with(r.rolname, 'pgaas_load_'))"
            )
        ),
        "0",
        "the stopped restore left its database, a session or its load role"
    );
    remove(&t).await;
}
