//! `pgaas db list|show|create|delete`: the tenant databases from the host's shell, through the
//! same `TenantService` the API uses (so validation, ordering and audit rows are the same), with
//! `AuditContext::cli()` as the actor. `list` prints what the original's `pg-list-databases`
//! showed; every command takes `--json` for scripts. Also home of the control-DB connection the
//! other operator commands (`key`, `doctor`) share.

use std::{
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
};

use serde_json::json;

use crate::{
    model::{FriendlyName, OwnerEmail, TenantStatus},
    settings::Settings,
    tenant::{AuditContext, ListQuery, NewTenant, Tenant, TenantError, TenantService},
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List tenant databases, newest first.
    List(ListArgs),
    /// One tenant database with its live size and connections.
    Show(ShowArgs),
    /// Provision a tenant database; prints its password once.
    Create(CreateArgs),
    /// Drop a tenant database and its role (asks first on a terminal).
    Delete(DeleteArgs),
    /// Drop one of a tenant's other databases: a restore's (--into) or the data a restore in
    /// place replaced (kept under a dated name).
    DropExtra(DropExtraArgs),
    /// Create a tenant's shadow database for migration tools (Prisma's shadowDatabaseUrl), or
    /// --drop it; prints its URL (the tenant's password works there).
    Shadow(ShadowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShadowArgs {
    /// The database: its id or its name (tenant_...).
    pub database: String,
    /// Drop the shadow database instead (its sessions end).
    #[arg(long)]
    pub drop: bool,
}

#[derive(Debug, clap::Args)]
pub struct DropExtraArgs {
    /// The database's name (`pgaas restore` printed it).
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only databases in this status (provisioning, active, suspended, deleting, failed).
    #[arg(long)]
    pub status: Option<TenantStatus>,
    /// Only databases of this owner.
    #[arg(long, value_name = "EMAIL")]
    pub owner_email: Option<String>,
    /// At most this many rows (1..=1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The database: its id or its name (tenant_...).
    pub database: String,
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A name for people (1 to 100 characters); the database and role get generated names.
    #[arg(long, value_name = "NAME")]
    pub friendly_name: String,
    /// The customer's e-mail address, for listing by owner.
    #[arg(long, value_name = "EMAIL")]
    pub owner_email: String,
    /// Connection limit for the database and its role (default from settings).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Storage quota in MB (default: tenants.default_max_size_mb).
    #[arg(long, value_name = "MB")]
    pub max_size_mb: Option<u64>,
    /// Print JSON (the API\'s shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The database: its id or its name (tenant_...).
    pub database: String,
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long)]
    pub yes: bool,
}

pub fn run(config: super::Sources, cmd: Command) -> anyhow::Result<ExitCode> {
    super::with_control_db(config, |settings, pool| async move {
        // With the host's hba applier, so deleting a listed tenant takes its lines out too.
        let service: TenantService = super::host_tenants(pool, settings);
        let result = match cmd {
            Command::List(a) => list(&service, a).await,
            Command::Show(a) => show(&service, a).await,
            Command::Create(a) => create(&service, a).await,
            Command::Delete(a) => delete(&service, a).await,
            Command::DropExtra(a) => {
                service
                    .drop_extra(&a.name, &crate::tenant::AuditContext::cli())
                    .await?;
                println!("dropped {}", a.name);
                Ok(ExitCode::SUCCESS)
            }
            Command::Shadow(a) => shadow(&service, a).await,
        };
        result.or_else(super::explain)
    })
}

async fn list(service: &TenantService, a: ListArgs) -> Result<ExitCode, TenantError> {
    let page = service
        .list(&ListQuery {
            status: a.status,
            owner_email: a.owner_email,
            limit: a.limit,
            ..ListQuery::default()
        })
        .await?;
    if a.json {
        let out =
            json!({ "count": page.total, "data": page.items, "next_cursor": page.next_cursor });
        println!("{out:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = page
        .items
        .iter()
        .map(|t| {
            [
                t.id.to_string(),
                t.database_name.to_string(),
                t.owner_email.clone(),
                t.friendly_name.clone(),
                t.status.to_string(),
                t.max_connections.to_string(),
                t.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ]
        })
        .collect();
    let header = [
        "ID",
        "DATABASE",
        "OWNER",
        "FRIENDLY NAME",
        "STATUS",
        "MAX CONN",
        "CREATED",
    ];
    print!("{}", super::table(&header, &rows));
    println!(
        "{} of {} database(s){}",
        rows.len(),
        page.total,
        if page.next_cursor.is_some() {
            "; raise --limit to see more"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(service: &TenantService, a: ShowArgs) -> Result<ExitCode, TenantError> {
    let tenant = service.find(&a.database).await?;
    // A tenant mid-provisioning has no database yet: show the row, say why stats are missing.
    let stats = match service.stats(tenant.id).await {
        Ok(s) => Ok(s),
        Err(TenantError::State(m)) => Err(m),
        Err(e) => return Err(e),
    };
    if a.json {
        let mut out = serde_json::to_value(&tenant).map_err(TenantError::internal)?;
        out["stats"] = match &stats {
            Ok(s) => serde_json::to_value(s).map_err(TenantError::internal)?,
            Err(_) => serde_json::Value::Null,
        };
        println!("{out:#}");
        return Ok(ExitCode::SUCCESS);
    }
    print_tenant(&tenant);
    match stats {
        Ok(s) => {
            println!(
                "  size:              {} ({} bytes)",
                s.size_pretty, s.size_bytes
            );
            println!(
                "  connections:       {} of {}",
                s.active_connections, s.max_connections
            );
        }
        Err(m) => println!("  stats:             unavailable: {m}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_tenant(t: &Tenant) {
    println!("{} ({})", t.database_name, t.id);
    println!("  friendly name:     {}", t.friendly_name);
    println!("  owner:             {}", t.owner_email);
    println!("  username:          {}", t.username);
    println!("  status:            {}", t.status);
    println!("  max connections:   {}", t.max_connections);
    println!("  created:           {}", t.created_at.to_rfc3339());
    println!("  updated:           {}", t.updated_at.to_rfc3339());
}

async fn create(service: &TenantService, a: CreateArgs) -> Result<ExitCode, TenantError> {
    let new = NewTenant {
        friendly_name: FriendlyName::parse(&a.friendly_name)?,
        owner_email: OwnerEmail::parse(&a.owner_email)?,
        max_connections: a.max_connections,
        max_size_mb: a.max_size_mb,
    };
    let created = service.create(new, &AuditContext::cli()).await?;
    let t = &created.tenant;
    let password = created.password.expose();
    let urls = connection_urls(service.settings(), t, password);
    if a.json {
        let mut out = serde_json::to_value(t).map_err(TenantError::internal)?;
        out["password"] = json!(password);
        out["connection_string"] = json!(urls.direct);
        out["DIRECT_URL"] = json!(urls.direct);
        if let Some(pooled) = &urls.pooled {
            out["DATABASE_URL"] = json!(pooled);
            out["PRISMA_DATABASE_URL"] = json!(crate::api::urls::prisma(
                pooled,
                service.settings().pgbouncer.pool_mode
            ));
        }
        println!("{out:#}");
    } else {
        print_tenant(t);
        println!("  password:          {password}");
        println!("  connection string: {}", urls.direct);
        if let Some(pooled) = &urls.pooled {
            println!("  pooled URL:        {pooled}");
        }
    }
    if urls.pooled.is_some() && !pooler_answers(service.settings()) {
        eprintln!(
            "note: PgBouncer is not answering on port {}: the pooled URL works once it runs \
             (`systemctl status pgbouncer`, or `pgaas status`); the direct URL works now.",
            service.settings().pgbouncer.port
        );
    }
    // On stderr so `--json` output stays one document.
    eprintln!(
        "The password is shown only this once: pgaas keeps only a hash of it. Store it now; \
         a lost password is replaced with POST /api/databases/{}/rotate-password.",
        t.id
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether something accepts connections on PgBouncer's port here (its listen address, or
/// loopback when it listens on every address).
fn pooler_answers(settings: &Settings) -> bool {
    let port = settings.pgbouncer.port;
    let addr = settings
        .pgbouncer
        .listen_addr
        .split(',')
        .next()
        .unwrap_or("*")
        .trim();
    let ip: std::net::IpAddr = match addr {
        "*" | "" | "0.0.0.0" => std::net::Ipv4Addr::LOCALHOST.into(),
        "::" => std::net::Ipv6Addr::LOCALHOST.into(),
        a => a.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::new(ip, port),
        std::time::Duration::from_secs(1),
    )
    .is_ok()
}

async fn shadow(service: &TenantService, a: ShadowArgs) -> Result<ExitCode, TenantError> {
    let tenant = service.find(&a.database).await?;
    let ctx = AuditContext::cli();
    if a.drop {
        match service.drop_shadow(tenant.id, &ctx).await? {
            true => println!("dropped the shadow database of {}", tenant.database_name),
            false => println!("{} has no shadow database", tenant.database_name),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (tenant, name, made) = service.create_shadow(tenant.id, &ctx).await?;
    let s = service.settings();
    let url = crate::api::urls::url(
        &s.public_host,
        s.postgres.port,
        tenant.username.as_str(),
        None,
        &name,
    );
    println!(
        "{} {name}\n  SHADOW_DATABASE_URL: {url}\n  (the password is the database's own)",
        if made { "created" } else { "exists:" }
    );
    Ok(ExitCode::SUCCESS)
}

struct Urls {
    direct: String,
    pooled: Option<String>,
}

/// The original's URL shape (`sslmode=require`), on the configured public host. Generated
/// passwords are alphanumeric, so nothing in the URL needs percent-encoding.
fn connection_urls(settings: &Settings, t: &Tenant, password: &str) -> Urls {
    let host = if settings.public_host.contains(':') {
        format!("[{}]", settings.public_host)
    } else {
        settings.public_host.clone()
    };
    let url = |port: u16| {
        format!(
            "postgresql://{}:{password}@{host}:{port}/{}?sslmode=require",
            t.username, t.database_name
        )
    };
    Urls {
        direct: url(settings.postgres.port),
        pooled: settings
            .pgbouncer
            .enabled
            .then(|| url(settings.pgbouncer.port)),
    }
}

async fn delete(service: &TenantService, a: DeleteArgs) -> Result<ExitCode, TenantError> {
    let tenant = service.find(&a.database).await?;
    if !a.yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            eprintln!(
                "error: refusing to delete {} without --yes when stdin is not a terminal",
                tenant.database_name
            );
            return Ok(ExitCode::from(2));
        }
        eprint!(
            "Delete {} ({}, owner {})? All its data is dropped and cannot be recovered.\n\
             Type the database name to confirm: ",
            tenant.database_name, tenant.friendly_name, tenant.owner_email
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(TenantError::internal)?;
        if answer.trim() != tenant.database_name.as_str() {
            eprintln!("not confirmed; nothing deleted");
            return Ok(ExitCode::from(1));
        }
    }
    service.delete(tenant.id, &AuditContext::cli()).await?;
    println!("deleted {} ({})", tenant.database_name, tenant.id);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pooler_probe_sees_a_listener_and_its_absence() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = Settings::default();
        s.pgbouncer.listen_addr = "*".into();
        s.pgbouncer.port = listener.local_addr().unwrap().port();
        assert!(pooler_answers(&s));
        s.pgbouncer.listen_addr = "127.0.0.1".into();
        assert!(pooler_answers(&s));
        drop(listener);
        assert!(!pooler_answers(&s), "nothing listens on a closed port");
    }
}
