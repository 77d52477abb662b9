//! Steps that talk to PostgreSQL or a CA: `sql` (as the superuser over the local socket, guarded
//! by an `unless` query), `control_db` (roles, database, grants, migrations, and the hba files
//! and PgBouncer's auth file brought in line with the rows), `api_key` (the first admin key,
//! kept for the summary and shown once), and `tls` (local CA, or ACME).

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};

use super::{Effects, Plan};
use crate::{
    control_db,
    hba::{compile, compile_pgbouncer},
    install::{
        context::{Attrs, Cx, TlsMode, read_opt},
        host,
        manifest::{Manifest, Record},
        playbook::{ApiKeyStep, Handler, HandlerAction, SqlStep},
        steps::render::PGBOUNCER_UNIT,
    },
    pg::tls::{CertInfo, LocalCa, ServerCertTarget, server_names},
    render::hba::{render_pg_hba, render_pgbouncer_hba},
    settings::{Secret, read_secret_file},
};

/// Connect, retrying for a while: the server may be coming back from a restart.
async fn connect(opts: &PgConnectOptions, wait: Duration) -> Result<PgConnection, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match PgConnection::connect_with(opts).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub fn sql_check(s: &SqlStep, cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    let Some(admin) = cx.admin.clone() else {
        plan.change(format!(
            "run in {}: {} (no server in this run)",
            s.database,
            s.statements.join("; ")
        ));
        return Ok(plan);
    };
    let opts = admin.database(&s.database);
    let unless = s.unless.clone();
    let found = cx.block_on(async move {
        let mut conn = connect(&opts, Duration::ZERO).await?;
        let row = sqlx::query(&unless).fetch_optional(&mut conn).await?;
        Ok::<_, sqlx::Error>(row.is_some())
    })?;
    match found {
        Ok(true) => {}
        Ok(false) => plan.change(format!(
            "run in {}: {}",
            s.database,
            s.statements.join("; ")
        )),
        Err(e) => plan.change(format!(
            "run in {}: {} (the server is not reachable yet: {e})",
            s.database,
            s.statements.join("; ")
        )),
    }
    Ok(plan)
}

pub fn sql_apply(s: &SqlStep, cx: &mut Cx) -> Result<Effects> {
    let opts = cx.admin()?.database(&s.database);
    let statements = s.statements.clone();
    cx.block_on(async move {
        let mut conn = connect(&opts, Duration::from_secs(30)).await?;
        conn.execute("SET log_statement = 'none'").await?;
        for stmt in &statements {
            conn.execute(stmt.as_str())
                .await
                .with_context(|| format!("running {stmt:?}"))?;
        }
        Ok::<_, anyhow::Error>(())
    })??;
    Ok(Effects::default())
}

fn api_password(cx: &Cx) -> Result<Option<Secret>> {
    let Some(file) = &cx.settings.control_db.password_file else {
        bail!(
            "control_db.password_file must be set for an installed host (the API reads its password from it)"
        );
    };
    Ok(read_secret_file(&cx.path(file))?)
}

const BOOTSTRAP: &str = "create or update the API role";

/// The hba family's files, which the API's user must own.
fn hba_family(cx: &Cx) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for dir in [&cx.vars.hba_dir, &cx.vars.pgbouncer_auth_dir] {
        if let Ok(entries) = std::fs::read_dir(cx.path(Path::new(dir))) {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

fn family_attrs(cx: &Cx) -> Attrs {
    Attrs::new(&cx.vars.api_user, &cx.vars.pg_user, 0o640)
}

pub fn control_db_check(cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    let settings = cx.settings.clone();
    let Some(password) = api_password(cx)? else {
        plan.change(format!(
            "{BOOTSTRAP} {} and the control database {}",
            settings.control_db.user, settings.control_db.name
        ));
        return Ok(plan);
    };
    let applier = host::hba_applier(&settings, cx.vars.pg_version, cx.root.as_deref(), None);
    let findings = cx.block_on(async move {
        let opts = control_db::connect_options(&settings, Some(&password));
        let Ok(mut conn) = connect(&opts, Duration::from_secs(10)).await else {
            return Ok::<_, anyhow::Error>(vec![format!(
                "{BOOTSTRAP} {} and the control database {}",
                settings.control_db.user, settings.control_db.name
            )]);
        };
        let mut out = Vec::new();
        // An install made by an earlier release: the API role still has CREATEROLE (or ADMIN
        // on the tenant group), or the functions that replace it are missing.
        let retire: bool = sqlx::query_scalar(
            "SELECT r.rolcreaterole
                    OR EXISTS (SELECT 1 FROM pg_auth_members m
                               WHERE m.member = r.oid
                                 AND m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $2))
                    OR to_regprocedure('pgaas_priv.drop_tenant_role(text, text)') IS NULL
             FROM pg_roles r WHERE r.rolname = $1",
        )
        .bind(&settings.control_db.user)
        .bind(crate::model::TENANT_GROUP)
        .fetch_one(&mut conn)
        .await?;
        if retire {
            out.push(format!(
                "{BOOTSTRAP} {}: take back CREATEROLE and ADMIN on the tenant group, and \
                 define the pgaas_priv functions that make tenant roles",
                settings.control_db.user
            ));
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        let pending = control_db::MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count();
        if pending > 0 {
            out.push(format!("apply {pending} control-DB migration(s)"));
            return Ok(out);
        }
        let policy = applier.policy(&mut conn).await?;
        let generation =
            u64::try_from(crate::hba::apply::current_generation(&mut conn).await?).unwrap_or(0);
        let want_pg = render_pg_hba(&compile(&policy)?, generation)?;
        if read_opt(&applier.pg_hba_file)?.as_deref() != Some(want_pg.as_bytes()) {
            out.push(format!(
                "rewrite {} from the control DB",
                applier.pg_hba_file.display()
            ));
        }
        if let Some(files) = &applier.pgbouncer {
            let want = render_pgbouncer_hba(&compile_pgbouncer(&policy)?, generation)?;
            if read_opt(&files.hba_file)?.as_deref() != Some(want.as_bytes()) {
                out.push(format!(
                    "rewrite {} from the control DB",
                    files.hba_file.display()
                ));
            }
            let secrets: Vec<(String, String)> =
                sqlx::query_as("SELECT rolname, rolpassword FROM pgaas_priv.tenant_secrets()")
                    .fetch_all(&mut conn)
                    .await?;
            let existing = read_opt(&files.userlist_file)?;
            let existing_text = existing.as_deref().map(String::from_utf8_lossy);
            let want = applier.userlist(files, &secrets, existing_text.as_deref());
            if existing.as_deref() != Some(want.as_bytes()) {
                out.push(format!(
                    "rewrite {} (tenant verifiers)",
                    files.userlist_file.display()
                ));
            }
            let tenants = applier.pooler_tenants(&mut conn, &secrets).await?;
            let want = crate::render::render_tenants(&tenants, &files.limits);
            if read_opt(&files.tenants_file)?.as_deref() != Some(want.as_bytes()) {
                out.push(format!(
                    "rewrite {} (per-tenant pool limits)",
                    files.tenants_file.display()
                ));
            }
        }
        Ok(out)
    })??;
    plan.changes = findings;
    let want = family_attrs(cx);
    for f in hba_family(cx) {
        for d in cx.attr_drift(&f, &want) {
            plan.change(format!("{}: {d}", f.display()));
        }
    }
    Ok(plan)
}

/// What only the primary's install can make (a standby waits for it to arrive by
/// replication); the access files are every node's own.
pub fn control_db_primary_work(plan: &Plan) -> bool {
    plan.changes
        .iter()
        .any(|c| c.starts_with(BOOTSTRAP) || c.contains("migration"))
}

pub fn control_db_apply(cx: &mut Cx, plan: &Plan) -> Result<Effects> {
    let settings = cx.settings.clone();
    let file = settings
        .control_db
        .password_file
        .clone()
        .unwrap_or_default();
    let password = api_password(cx)?.ok_or_else(|| {
        anyhow!(
            "{} is missing; the secret step must come before control_db",
            file.display()
        )
    })?;
    let admin = cx.admin()?;
    // A standby's control DB is the primary's, read-only here: only its access files are
    // written (from the replicated rows).
    let standby = super::cluster::is_standby(cx)?;
    let bootstrap = !standby && plan.changes.iter().any(|c| c.starts_with(BOOTSTRAP));
    let applier = host::hba_applier(&settings, cx.vars.pg_version, cx.root.as_deref(), None);
    let before = hba_family(cx)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).ok()))
        .collect::<Vec<_>>();
    cx.block_on(async move {
        // The server may still be restarting from a handler.
        connect(&admin.clone().database("postgres"), Duration::from_secs(60))
            .await
            .context("connecting as the superuser over the local socket")?;
        if bootstrap {
            control_db::bootstrap(&admin, &settings, &password).await?;
        }
        let pool = control_db::pool(control_db::connect_options(&settings, Some(&password)), 2);
        if !standby {
            control_db::migrate(&pool).await?;
        }
        applier.sync(&pool).await?;
        pool.close().await;
        Ok::<_, anyhow::Error>(())
    })??;
    let want = family_attrs(cx);
    let mut effects = Effects::default();
    for f in hba_family(cx) {
        if !cx.attr_drift(&f, &want).is_empty() {
            cx.set_attrs(&f, &want)?;
        }
        let was = before
            .iter()
            .find(|(p, _)| *p == f)
            .and_then(|(_, b)| b.clone());
        if was.as_deref() != std::fs::read(&f).ok().as_deref() {
            if f.file_name().is_some_and(|n| {
                n == "userlist.txt" || n == "pgbouncer_hba.conf" || n == crate::render::TENANTS_FILE
            }) {
                effects
                    .notify
                    .push(Handler::new(HandlerAction::Reload, PGBOUNCER_UNIT));
            }
            if was.is_none() {
                if let Some(host_path) = host_path(cx, &f) {
                    effects.records.push(Record::File { path: host_path });
                }
            }
        }
    }
    Ok(effects)
}

/// The host path of a path under the root prefix.
fn host_path(cx: &Cx, p: &Path) -> Option<std::path::PathBuf> {
    match &cx.root {
        None => Some(p.to_path_buf()),
        Some(r) => p.strip_prefix(r).ok().map(|rel| Path::new("/").join(rel)),
    }
}

async fn active_keys(settings: &crate::settings::Settings, password: &Secret) -> Result<i64> {
    let pool = control_db::pool(control_db::connect_options(settings, Some(password)), 1);
    let n = control_db::api_keys::count_active(&pool).await;
    pool.close().await;
    Ok(n?)
}

pub fn api_key_check(cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    let settings = cx.settings.clone();
    let n = match api_password(cx)? {
        Some(p) => cx.block_on(async move { active_keys(&settings, &p).await.ok() })?,
        None => None,
    };
    if n.unwrap_or(0) == 0 {
        plan.change("create the first admin API key (shown once, at the end)");
    }
    Ok(plan)
}

pub fn api_key_apply(s: &ApiKeyStep, cx: &mut Cx) -> Result<Effects> {
    let settings = cx.settings.clone();
    let password =
        api_password(cx)?.ok_or_else(|| anyhow!("the control DB password file is missing"))?;
    let name = s.name.clone();
    let key = cx.block_on(async move {
        if active_keys(&settings, &password).await? > 0 {
            return Ok(None);
        }
        let pool = control_db::pool(control_db::connect_options(&settings, Some(&password)), 1);
        let key = control_db::api_keys::create_admin_key(&pool, &name).await?;
        pool.close().await;
        Ok::<_, anyhow::Error>(Some(key))
    })??;
    if key.is_some() {
        cx.first_api_key = key;
    }
    Ok(Effects::default())
}

/// The names the server certificate covers: the public host, and on a cluster every
/// PostgreSQL node (its DNS name and address), so a client that verifies the host name reaches
/// whichever node is the primary.
fn cert_names(s: &crate::settings::Settings) -> Vec<String> {
    let mut names = server_names(&s.public_host);
    for n in s.cluster.data_nodes() {
        for name in n.host.iter().cloned().chain([n.address.to_string()]) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

fn tls_paths(cx: &Cx) -> (ServerCertTarget, LocalCa) {
    let tls = &cx.settings.tls;
    let key_owner = cx.ids(&cx.vars.pg_user, &cx.vars.pg_user);
    let target = ServerCertTarget {
        cert_file: cx.path(&tls.cert_file),
        key_file: cx.path(&tls.key_file),
        key_owner,
    };
    (
        target,
        LocalCa::in_dir(&cx.path(Path::new(&cx.vars.tls_dir))),
    )
}

fn current(path: &Path) -> Option<CertInfo> {
    CertInfo::from_pem(&std::fs::read_to_string(path).ok()?)
}

pub fn tls_check(cx: &mut Cx) -> Result<Plan> {
    let (target, ca) = tls_paths(cx);
    let mut plan = Plan::default();
    let cert = current(&target.cert_file).filter(|_| target.key_file.exists());
    match &cx.tls {
        TlsMode::SelfSigned => {
            let names = cert_names(&cx.settings);
            let ca_subject = current(&ca.cert_file).map(|c| c.subject);
            let good = cert.is_some_and(|c| {
                Some(&c.issuer) == ca_subject.as_ref()
                    && c.days_left() > 30
                    && names
                        .iter()
                        .all(|n| c.sans.iter().any(|s| s.eq_ignore_ascii_case(n)))
            });
            if !good {
                plan.change(format!(
                    "issue a server certificate for {} from the local CA in {}",
                    names.join(", "),
                    cx.vars.tls_dir
                ));
            }
        }
        TlsMode::Acme {
            domain,
            directory,
            dns,
            ..
        } => {
            let good = cert.is_some_and(|c| {
                c.days_left() > 30
                    && !c.issuer.contains("pgaas local CA")
                    && c.sans.iter().any(|s| s.eq_ignore_ascii_case(domain))
            });
            if !good {
                plan.change(format!(
                    "obtain a certificate for {domain} from {directory} ({})",
                    if dns.is_some() { "DNS-01" } else { "HTTP-01" }
                ));
            }
        }
    }
    if plan.is_ok() {
        let want = Attrs::new(&cx.vars.pg_user, &cx.vars.pg_user, 0o600);
        for d in cx.attr_drift(&target.key_file, &want) {
            plan.change(format!("{}: {d}", cx.settings.tls.key_file.display()));
        }
    }
    Ok(plan)
}

pub fn tls_apply(cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let (target, ca) = tls_paths(cx);
    let host_files = [
        cx.settings.tls.cert_file.clone(),
        cx.settings.tls.key_file.clone(),
        Path::new(&cx.vars.tls_dir).join("ca.crt"),
        Path::new(&cx.vars.tls_dir).join("ca.key"),
    ];
    let existed: Vec<bool> = host_files.iter().map(|p| cx.path(p).exists()).collect();
    match cx.tls.clone() {
        TlsMode::SelfSigned => {
            ca.ensure_server_cert(&target, &cert_names(&cx.settings))?;
        }
        TlsMode::Acme {
            domain,
            email,
            directory,
            ca_file,
            listen,
            dns,
        } => {
            if cx.root.is_some() {
                bail!("ACME needs the real host (no root prefix): the CA must reach this machine");
            }
            let settings = cx.settings.clone();
            let req = crate::acme::IssueRequest {
                domain,
                email,
                directory,
                challenge: if dns.is_some() {
                    crate::acme::ChallengeKind::Dns01
                } else {
                    crate::acme::ChallengeKind::Http01
                },
                listen,
                eab: None,
                ca_file,
                tls_dir: None,
                dns,
            };
            cx.block_on(async move { crate::acme::issue(&settings, req).await })??;
        }
    }
    let want = Attrs::new(&cx.vars.pg_user, &cx.vars.pg_user, 0o600);
    if !cx.attr_drift(&target.key_file, &want).is_empty() {
        cx.set_attrs(&target.key_file, &want)?;
    }
    let mut effects = Effects {
        notify: vec![
            Handler::new(HandlerAction::Reload, cx.vars.postgres_unit.clone()),
            Handler::new(HandlerAction::Reload, PGBOUNCER_UNIT),
        ],
        ..Effects::default()
    };
    for (p, had) in host_files.iter().zip(existed) {
        if !had && cx.path(p).exists() && !manifest.owns_path(p) {
            effects.records.push(Record::File { path: p.clone() });
        }
    }
    Ok(effects)
}
