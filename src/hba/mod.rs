//! The pg_hba rule compiler: turns pgaas's access policy (who is the superuser, which tenants
//! exist and which addresses they allow) into an ordered, first-match rule list for PostgreSQL
//! and for PgBouncer, applies it (writes the files through `render::hba`, has the servers
//! validate and reload them), and models how the servers evaluate them.
//!
//! The order is the policy: pg_hba.conf is first-match, so an allow line placed after a broad
//! accept does nothing (the original's allow-list defect). The rule types are `model::hba`'s;
//! names are only turned into text, quoted for the target dialect, when a file is rendered, and
//! any name or construct a dialect cannot express is refused there rather than written
//! approximately.

pub mod apply;
pub mod check;
mod compile;
mod eval;

pub use crate::model::hba::{
    CompiledRules, ConnKind, HbaAddress, HbaError, HbaMethod, HbaName, HbaPolicy, HbaRule,
    TenantAccess, check_network,
};
pub use compile::{PEER_MAP, compile, compile_all, compile_pgbouncer};
pub use eval::{Client, Decision, decide};

impl HbaPolicy {
    /// The policy without tenants, from settings: the superuser reachable by peer from the
    /// cluster's OS user and from root, the API role on the control DB.
    pub fn base(settings: &crate::settings::Settings) -> Self {
        let mut admin_os_users = vec![settings.postgres.os_user.clone()];
        if settings.postgres.os_user != "root" {
            admin_os_users.push("root".into());
        }
        let mut pooler_admins = vec![settings.postgres.superuser.clone()];
        if !pooler_admins.contains(&settings.api.system_user) {
            pooler_admins.push(settings.api.system_user.clone());
        }
        HbaPolicy {
            superuser: settings.postgres.superuser.clone(),
            api_role: settings.control_db.user.clone(),
            control_db: settings.control_db.name.clone(),
            tenant_group: crate::model::TENANT_GROUP.to_string(),
            admin_os_users,
            pooler_admins,
            tenants: Vec::new(),
            replication: settings
                .cluster
                .enabled()
                .then(|| crate::model::hba::ReplicationAccess {
                    role: settings.cluster.replication_user.clone(),
                    rewind_role: settings.cluster.rewind_user.clone(),
                    peers: settings.cluster.data_nodes().map(|n| n.address).collect(),
                }),
        }
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
