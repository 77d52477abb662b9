//! `pgaas allow DB CIDR` / `pgaas deny DB ENTRY`: the allow-list from the host's shell, through
//! the same service as the API, so the change is in force (pg_hba.conf and PgBouncer's written,
//! validated, reloaded) when the command returns.

use std::process::ExitCode;

use crate::{
    model::AllowEntry,
    tenant::{AuditContext, TenantError, parse_description},
};

#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// The database: its id or its name (tenant_...).
    pub database: String,
    /// An address (one host) or a network with zero host bits: 203.0.113.5, 192.168.1.0/24, 2001:db8::/32.
    pub cidr: String,
    /// What the entry is for (at most 200 characters), shown in listings and the audit trail.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DenyArgs {
    /// The database: its id or its name (tenant_...).
    pub database: String,
    /// The entry: its id, or the network as listed (203.0.113.5/32).
    pub entry: String,
}

pub fn allow(config: super::Sources, a: AllowArgs) -> anyhow::Result<ExitCode> {
    run(config, |svc| async move {
        let tenant = svc.find(&a.database).await?;
        let entry = AllowEntry::parse(&a.cidr)?;
        let description = parse_description(a.description.as_deref())?;
        let row = svc
            .allow(tenant.id, entry, description, &AuditContext::cli())
            .await?;
        println!(
            "{} may now connect to {} (entry {}); the rule is in force",
            row.ip_address,
            tenant.database_name.as_str(),
            row.id
        );
        Ok(())
    })
}

pub fn deny(config: super::Sources, a: DenyArgs) -> anyhow::Result<ExitCode> {
    run(config, |svc| async move {
        let tenant = svc.find(&a.database).await?;
        let row = svc.find_allowed(tenant.id, &a.entry).await?;
        svc.disallow(tenant.id, row.id, &AuditContext::cli())
            .await?;
        let left = svc.list_allowed(tenant.id).await?.len();
        if left == 0 {
            println!(
                "{} removed; the allow-list of {} is empty: any address may connect (TLS only)",
                row.ip_address,
                tenant.database_name.as_str()
            );
        } else {
            println!(
                "{} removed; {left} entries remain for {}",
                row.ip_address,
                tenant.database_name.as_str()
            );
        }
        Ok(())
    })
}

fn run<F, Fut>(config: super::Sources, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(crate::tenant::TenantService) -> Fut,
    Fut: std::future::Future<Output = Result<(), TenantError>>,
{
    super::with_control_db(config, |settings, pool| async move {
        match f(super::host_tenants(pool, settings)).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => super::explain(e),
        }
    })
}
