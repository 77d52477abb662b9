//! The fixed rule order for PostgreSQL and for PgBouncer. First match wins in both, so each
//! function below reads top to bottom as the policy itself: admin paths, then blanket rejects for
//! the roles that must never come over TCP, then per-tenant allow-lists, then the default tenant
//! path, then reject everything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::{
    ConnKind, HbaAddress, HbaError, HbaMethod, HbaName, HbaPolicy, HbaRule, TenantAccess,
    check_network,
};

/// The pg_ident map that lets named OS users in as the superuser.
pub const PEER_MAP: &str = "pgaas_admin";

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
    tenants.sort_by(|a, b| (&a.database, &a.role).cmp(&(&b.database, &b.role)));
    tenants.dedup();
    Ok(tenants)
}

/// Allow lines for each tenant that has an allow-list; for PgBouncer (which has no groups to
/// exclude listed tenants from its default rule) each followed by the reject that closes its
/// database to every other address.
fn tenant_allow_rules(tenants: &[TenantAccess], with_reject: bool, out: &mut Vec<HbaRule>) {
    for t in tenants.iter().filter(|t| !t.allow.is_empty()) {
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
        if with_reject {
            out.push(rule(
                ConnKind::Host,
                name(&t.database),
                all(),
                Some(HbaAddress::All),
                HbaMethod::Reject,
                &format!("tenant {}: every other address", t.database),
            ));
        }
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
            name(&policy.control_db),
            name(&policy.api_role),
            None,
            HbaMethod::ScramSha256,
            "the API: its control database, over the socket",
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
                "the API: or over TLS from this host only"
            } else {
                ""
            },
        ));
    }
    rules.extend([
        rule(
            ConnKind::Host,
            all(),
            vec![
                HbaName::name(&policy.superuser),
                HbaName::name(&policy.api_role),
            ],
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "the superuser and the API never over TCP otherwise",
        ),
        rule(
            ConnKind::HostNoSsl,
            all(),
            all(),
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "no plaintext TCP for anyone",
        ),
        rule(
            ConnKind::Local,
            all(),
            vec![HbaName::group(&policy.tenant_group)],
            None,
            HbaMethod::ScramSha256,
            "tenants over the socket: this is how PgBouncer reaches the server",
        ),
    ]);
    // The default path comes first, so most connections match after a handful of lines however
    // many tenants have lists. Only roles of tenants without an allow-list are members of the
    // open group (pgaas moves a role out before its first entry takes effect and back after its
    // last is gone), so a listed tenant never matches here and falls through to its own lines.
    rules.push(rule(
        ConnKind::HostSsl,
        all(),
        vec![HbaName::group(&policy.open_group)],
        Some(HbaAddress::All),
        HbaMethod::ScramSha256,
        "tenants without an allow-list: TLS + SCRAM from anywhere; CONNECT is revoked from \
         PUBLIC on every database, so each role reaches only its own",
    ));
    tenant_allow_rules(&tenants, false, &mut rules);
    rules.extend([
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
/// allow-lists must be enforced here: the server only sees PgBouncer's socket. PgBouncer knows no
/// groups and no ident maps, so the default tenant path accepts any user PgBouncer can
/// authenticate from its auth_file; the server then still requires tenant-group membership
/// (socket rule) and the CONNECT privilege for the pooled connection.
pub fn compile_pgbouncer(policy: &HbaPolicy) -> Result<Vec<HbaRule>, HbaError> {
    let tenants = normalised_tenants(policy)?;
    let mut rules = vec![
        rule(
            ConnKind::Local,
            name("pgbouncer"),
            if policy.pooler_admins.is_empty() {
                name(&policy.superuser)
            } else {
                policy.pooler_admins.iter().map(HbaName::name).collect()
            },
            None,
            HbaMethod::Peer { map: None },
            "the admin console, over PgBouncer's own socket, for the OS user of the same name",
        ),
        rule(
            ConnKind::Host,
            all(),
            vec![
                HbaName::name(&policy.superuser),
                HbaName::name(&policy.api_role),
            ],
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "the superuser and the API never through the pooler over TCP",
        ),
        rule(
            ConnKind::HostNoSsl,
            all(),
            all(),
            Some(HbaAddress::All),
            HbaMethod::Reject,
            "no plaintext TCP for anyone",
        ),
    ];
    tenant_allow_rules(&tenants, true, &mut rules);
    rules.extend([
        rule(
            ConnKind::HostSsl,
            all(),
            all(),
            Some(HbaAddress::All),
            HbaMethod::ScramSha256,
            "tenants without an allow-list: TLS + SCRAM from anywhere",
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
