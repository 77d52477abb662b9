//! The fixed rule order for PostgreSQL and for PgBouncer. First match wins in both, so each
//! function below reads top to bottom as the policy itself: admin paths, then blanket rejects for
//! the roles that must never come over TCP, then the tenants that need lines of their own
//! (allow-lists, roles not named after their database), then the default tenant path (each role
//! to the database of its own name, `sameuser`), then reject everything else. Both files follow
//! the same order, so both ports decide the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::{
    ConnKind, HbaAddress, HbaError, HbaMethod, HbaName, HbaPolicy, HbaRule, TenantAccess,
    check_network,
};

pub use crate::render::hba::PEER_MAP;

fn rule(
    kind: ConnKind,
    databases: Vec<HbaName>,
    users: Vec<HbaName>,
    address: Option<HbaAddress>,
    method: HbaMethod,
    comment: &str,
) -> HbaRule {
    HbaRule {
        kind,
        databases,
        users,
        address,
        method,
        comment: comment.to_string(),
    }
}

fn name(n: &str) -> Vec<HbaName> {
    vec![HbaName::name(n)]
}

fn all() -> Vec<HbaName> {
    vec![HbaName::All]
}

fn host_only(ip: IpAddr) -> HbaAddress {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    HbaAddress::Net(IpNetwork::new(ip, prefix).expect("full-length prefix is valid"))
}

/// Tenants in a stable order with normalised, de-duplicated allow-lists, so the rendered file only
/// changes when the policy does (not when rows come back in another order).
fn normalised_tenants(policy: &HbaPolicy) -> Result<Vec<TenantAccess>, HbaError> {
    let mut tenants = policy.tenants.clone();
    for t in &mut tenants {
        for net in &t.allow {
            check_network(*net)?;
        }
        t.allow.sort_by_key(|n| (n.is_ipv6(), n.ip(), n.prefix()));
        t.allow.dedup();
    }
    // A tenant without a list whose role is named after its database needs no line: the
    // `sameuser` rule covers it.
    tenants.retain(|t| !t.allow.is_empty() || t.database != t.role);
    tenants.sort_by(|a, b| (&a.database, &a.role).cmp(&(&b.database, &b.role)));
    tenants.dedup();
    Ok(tenants)
}

/// Plaintext TCP is refused for everyone, on both servers.
fn no_plaintext() -> HbaRule {
    rule(
        ConnKind::HostNoSsl,
        all(),
        all(),
        Some(HbaAddress::All),
        HbaMethod::Reject,
        "no plaintext TCP for anyone",
    )
}

/// Lines of the tenants that need their own: each listed tenant's allow lines then the reject
/// that closes its database to every other address (and to every other role), each tenant
/// whose role is not named after its database admitted on its own pair. They come before the
/// `sameuser` rule, which must not admit a listed tenant from anywhere. Membership decides no
/// database and no address: a tenant can grant its role to another (PostgreSQL 15 lets a
/// session user grant membership in itself), so a rule keyed on a group a tenant can reach
/// would let a neighbour lift an allow-list. The tenant group in the default rule only says
/// that a role is a tenant at all.
fn tenant_rules(tenants: &[TenantAccess], out: &mut Vec<HbaRule>) {
    for t in tenants {
        if t.allow.is_empty() {
            out.push(rule(
                ConnKind::HostSsl,
                name(&t.database),
                name(&t.role),
                Some(HbaAddress::All),
                HbaMethod::ScramSha256,
                &format!(
                    "tenant {}: role {} is not named after its database",
                    t.database, t.role
                ),
            ));
            continue;
        }
        for (i, net) in t.allow.iter().enumerate() {
            let comment = if i == 0 {
                format!("tenant {}: allow-list", t.database)
            } else {
                String::new()
            };
            out.push(HbaRule {
                comment,
                ..rule(
                    ConnKind::HostSsl,
                    name(&t.database),
                    name(&t.role),
                    Some(HbaAddress::Net(*net)),
                    HbaMethod::ScramSha256,
                    "",
                )
            });
        }
        out.push(rule(
            ConnKind::Host,
            name(&t.database),
            all(),
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "",
        ));
    }
}

/// Socket lines for tenants whose role is not named after their database (PgBouncer's path).
fn legacy_socket_rules(tenants: &[TenantAccess], out: &mut Vec<HbaRule>) {
    for t in tenants.iter().filter(|t| t.database != t.role) {
        out.push(rule(
            ConnKind::Local,
            name(&t.database),
            name(&t.role),
            None,
            HbaMethod::ScramSha256,
            "",
        ));
    }
}

/// A cluster's nodes: the standby streams WAL, and an old primary rejoining reads the new one
/// with `pg_rewind` (which needs a database: `postgres`), each with its own role, over TLS, from
/// the nodes' addresses only. No tenant address matches these roles, and no tenant role these
/// lines.
fn replication_rules(r: &crate::model::hba::ReplicationAccess, out: &mut Vec<HbaRule>) {
    // Patroni checks its own node's timeline with a replication connection over the socket.
    out.push(rule(
        ConnKind::Local,
        vec![HbaName::Replication],
        name(&r.role),
        None,
        HbaMethod::ScramSha256,
        "the cluster: Patroni's replication checks on this node, over the socket",
    ));
    let mut peers = r.peers.clone();
    peers.sort();
    peers.dedup();
    for (i, ip) in peers.iter().enumerate() {
        out.push(rule(
            ConnKind::HostSsl,
            vec![HbaName::Replication],
            name(&r.role),
            Some(host_only(*ip)),
            HbaMethod::ScramSha256,
            if i == 0 {
                "the cluster: streaming replication and pg_rewind between the PostgreSQL nodes"
            } else {
                ""
            },
        ));
        out.push(rule(
            ConnKind::HostSsl,
            name("postgres"),
            name(&r.rewind_role),
            Some(host_only(*ip)),
            HbaMethod::ScramSha256,
            "",
        ));
    }
}

/// The PostgreSQL rule list (pg_hba.conf), in first-match order.
pub fn compile(policy: &HbaPolicy) -> Result<Vec<HbaRule>, HbaError> {
    let tenants = normalised_tenants(policy)?;
    let mut rules = vec![
        rule(
            ConnKind::Local,
            all(),
            name(&policy.superuser),
            None,
            HbaMethod::Peer {
                map: Some(PEER_MAP.into()),
            },
            "the superuser: local socket only, by peer, for the OS users in pg_ident.conf",
        ),
        rule(
            ConnKind::Local,
            all(),
            name(&policy.api_role),
            None,
            HbaMethod::ScramSha256,
            "the API, over the socket: its control database, and tenant databases for backups and \
             cleanup (it is a member of every tenant role)",
        ),
    ];
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        rules.push(rule(
            ConnKind::HostSsl,
            name(&policy.control_db),
            name(&policy.api_role),
            Some(host_only(ip)),
            HbaMethod::ScramSha256,
            if ip.is_ipv4() {
                "the API: or its control database over TLS from this host only"
            } else {
                ""
            },
        ));
    }
    let mut never_over_tcp = vec![
        HbaName::name(&policy.superuser),
        HbaName::name(&policy.api_role),
    ];
    if let Some(r) = &policy.replication {
        replication_rules(r, &mut rules);
        never_over_tcp.extend([HbaName::name(&r.role), HbaName::name(&r.rewind_role)]);
    }
    rules.extend([
        rule(
            ConnKind::Host,
            all(),
            never_over_tcp,
            Some(HbaAddress::All),
            HbaMethod::Reject,
            if policy.replication.is_some() {
                "the superuser, the API and the cluster's roles never over TCP otherwise"
            } else {
                "the superuser and the API never over TCP otherwise"
            },
        ),
        no_plaintext(),
        rule(
            ConnKind::Local,
            vec![HbaName::SameUser],
            vec![HbaName::group(&policy.tenant_group)],
            None,
            HbaMethod::ScramSha256,
            "tenants over the socket, each to its own database: this is how PgBouncer reaches the \
             server",
        ),
        rule(
            ConnKind::Local,
            all(),
            vec![HbaName::group(crate::model::LOAD_GROUP)],
            None,
            HbaMethod::ScramSha256,
            "restores: a throwaway role per load, a member of one tenant's role and nothing \
             else, over the socket; only its tenant's databases grant it CONNECT",
        ),
    ]);
    legacy_socket_rules(&tenants, &mut rules);
    tenant_rules(&tenants, &mut rules);
    rules.extend([
        rule(
            ConnKind::HostSsl,
            vec![HbaName::SameUser],
            vec![HbaName::group(&policy.tenant_group)],
            Some(HbaAddress::All),
            HbaMethod::ScramSha256,
            "tenants without an allow-list: TLS + SCRAM from anywhere, each role only to the \
             database of its own name, whatever privileges tenants grant each other",
        ),
        rule(
            ConnKind::Host,
            all(),
            all(),
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "everything else",
        ),
        rule(ConnKind::Local, all(), all(), None, HbaMethod::Reject, ""),
    ]);
    Ok(rules)
}

/// The PgBouncer rule list (pgbouncer_hba.conf). PgBouncer sees the real client address, so the
/// allow-lists must be enforced here: the server only sees PgBouncer's socket. It decides as
/// pg_hba.conf does, before any password is checked: a client PostgreSQL would refuse is refused
/// here without learning whether its password is right. PgBouncer knows no groups (a `+group`
/// line would be dropped with a warning and the request would fall through), so the tenant rule
/// admits any role in its auth file, which holds only tenants and the console's users; the
/// console's users are rejected over TCP by name before it.
pub fn compile_pgbouncer(policy: &HbaPolicy) -> Result<Vec<HbaRule>, HbaError> {
    let tenants = normalised_tenants(policy)?;
    let admins: Vec<HbaName> = if policy.pooler_admins.is_empty() {
        name(&policy.superuser)
    } else {
        policy.pooler_admins.iter().map(HbaName::name).collect()
    };
    let mut never_tcp = vec![
        HbaName::name(&policy.superuser),
        HbaName::name(&policy.api_role),
    ];
    for a in &policy.pooler_admins {
        if !never_tcp.contains(&HbaName::name(a)) {
            never_tcp.push(HbaName::name(a));
        }
    }
    let mut rules = vec![
        rule(
            ConnKind::Local,
            name("pgbouncer"),
            admins,
            None,
            HbaMethod::Peer { map: None },
            "the admin console: over PgBouncer's own socket only, by peer, for the OS user of \
             the same name",
        ),
        rule(
            ConnKind::Local,
            all(),
            all(),
            None,
            HbaMethod::Reject,
            "nothing else over the socket: tenants come over TLS",
        ),
        rule(
            ConnKind::Host,
            name("pgbouncer"),
            all(),
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "the console never over TCP, whoever asks",
        ),
        rule(
            ConnKind::Host,
            all(),
            never_tcp,
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "the superuser, the API and the console's users never through the pooler over TCP",
        ),
        no_plaintext(),
    ];
    tenant_rules(&tenants, &mut rules);
    rules.extend([
        rule(
            ConnKind::HostSsl,
            vec![HbaName::SameUser],
            all(),
            Some(HbaAddress::All),
            HbaMethod::ScramSha256,
            "tenants without an allow-list: TLS + SCRAM from anywhere, each role only to the \
             database of its own name",
        ),
        rule(
            ConnKind::Host,
            all(),
            all(),
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "everything else",
        ),
    ]);
    Ok(rules)
}

/// Both rule lists of one policy.
pub fn compile_all(policy: &HbaPolicy) -> Result<crate::model::hba::CompiledRules, HbaError> {
    Ok(crate::model::hba::CompiledRules {
        postgres: compile(policy)?,
        pgbouncer: compile_pgbouncer(policy)?,
    })
}
