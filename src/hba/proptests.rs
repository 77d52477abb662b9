//! Property tests: for random policies and random connection attempts, the compiled rules (and
//! the rendered pg_hba.conf, parsed back) decide exactly what the policy says. The policy is
//! stated here independently of the compiler, as plain conditions, so an ordering mistake in the
//! compiler (the original's allow-list defect) cannot hide behind a matching mistake in the test.
//! Seeded, so a failure names its case and reproduces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use super::*;
use crate::render::hba::render_pg_hba;

const SU: &str = "postgres";
const API: &str = "pgaas_api";
const CONTROL: &str = "postgres_control";
const GROUP: &str = "pgaas_tenants";
const CONSOLE: &str = "pgaas";
const REPLICATOR: &str = "pgaas_replicator";
const REWIND: &str = "pgaas_rewind";

/// What the policy says at the pg_hba level (database privileges come after, in the server).
fn oracle(p: &HbaPolicy, c: &Client) -> Decision {
    let member = c.user_groups.iter().any(|g| g == GROUP);
    // A tenant's own database: the one of its role's name, or the one its row pairs it with.
    let own_database = member
        && (c.database == c.user
            || p.tenants
                .iter()
                .any(|t| t.database == c.database && t.role == c.user));
    let Some(addr) = c.addr else {
        return if c.user == SU {
            Decision::Accept(HbaMethod::Peer {
                map: Some(PEER_MAP.into()),
            })
        } else if c.user == API || own_database {
            Decision::Accept(HbaMethod::ScramSha256)
        } else {
            Decision::Reject
        };
    };
    if c.user == SU || !c.tls {
        return Decision::Reject;
    }
    // A cluster's rewind role reads `postgres` from the nodes' addresses (the replication role
    // only makes replication connections, which no client here is); nothing else, anywhere.
    if c.user == REPLICATOR || c.user == REWIND {
        let peer = p
            .replication
            .as_ref()
            .is_some_and(|r| r.peers.contains(&addr));
        return if c.user == REWIND && c.database == "postgres" && peer {
            Decision::Accept(HbaMethod::ScramSha256)
        } else {
            Decision::Reject
        };
    }
    if c.user == API {
        return if c.database == CONTROL
            && addr.is_loopback()
            && (addr == IpAddr::V4(Ipv4Addr::LOCALHOST) || addr == IpAddr::V6(Ipv6Addr::LOCALHOST))
        {
            Decision::Accept(HbaMethod::ScramSha256)
        } else {
            Decision::Reject
        };
    }
    // A database with an allow-list takes its own role from its listed networks, nobody else.
    let listed = p
        .tenants
        .iter()
        .find(|t| t.database == c.database && !t.allow.is_empty());
    if let Some(t) = listed {
        return if t.role == c.user && t.allow.iter().any(|n| n.contains(addr)) {
            Decision::Accept(HbaMethod::ScramSha256)
        } else {
            Decision::Reject
        };
    }
    if own_database {
        Decision::Accept(HbaMethod::ScramSha256)
    } else {
        Decision::Reject
    }
}

fn random_net(rng: &mut StdRng) -> IpNetwork {
    if rng.random_bool(0.7) {
        let prefix = *[8u8, 16, 24, 30, 32].choose(rng).unwrap();
        let ip = Ipv4Addr::from(
            rng.random::<u32>() & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0),
        );
        IpNetwork::new(IpAddr::V4(ip), prefix).unwrap()
    } else {
        let prefix = *[32u8, 48, 64, 128].choose(rng).unwrap();
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        let ip = Ipv6Addr::from(rng.random::<u128>() & mask);
        IpNetwork::new(IpAddr::V6(ip), prefix).unwrap()
    }
}

fn random_policy(rng: &mut StdRng) -> HbaPolicy {
    let n = rng.random_range(0..6);
    let tenants = (0..n)
        .map(|i| {
            let lists = rng.random_range(0..4);
            TenantAccess {
                database: format!("tenant_{i:016x}"),
                // Roles named after their database, and some made before that rule.
                role: if rng.random_bool(0.3) {
                    format!("user_{i:016x}")
                } else {
                    format!("tenant_{i:016x}")
                },
                allow: if rng.random_bool(0.4) {
                    vec![]
                } else {
                    (0..lists).map(|_| random_net(rng)).collect()
                },
            }
        })
        .collect();
    HbaPolicy {
        superuser: SU.into(),
        api_role: API.into(),
        control_db: CONTROL.into(),
        tenant_group: GROUP.into(),
        admin_os_users: vec!["postgres".into(), "root".into()],
        pooler_admins: vec![SU.into(), CONSOLE.into()],
        tenants,
        // A cluster's replication lines must not open anything a tenant or outsider can use.
        replication: rng
            .random_bool(0.5)
            .then(|| crate::model::hba::ReplicationAccess {
                role: REPLICATOR.into(),
                rewind_role: REWIND.into(),
                peers: vec![
                    "10.1.0.1".parse().unwrap(),
                    "10.1.0.2".parse().unwrap(),
                    "fd00::2".parse().unwrap(),
                ],
            }),
    }
}

fn random_client(rng: &mut StdRng, p: &HbaPolicy) -> Client {
    let mut dbs: Vec<String> = p.tenants.iter().map(|t| t.database.clone()).collect();
    dbs.extend([
        CONTROL.to_string(),
        "postgres".into(),
        "pgbouncer".into(),
        "tenant_ffffffffffffffff".into(),
        "user_0000000000000000".into(),
    ]);
    let mut users: Vec<String> = p.tenants.iter().map(|t| t.role.clone()).collect();
    users.extend([
        SU.to_string(),
        API.into(),
        "someone".into(),
        "tenant_ffffffffffffffff".into(),
        "user_ffffffffffffffff".into(),
        REPLICATOR.into(),
        REWIND.into(),
    ]);
    let user = users.choose(rng).unwrap().clone();
    let member = user.starts_with("user_") || user.starts_with("tenant_");
    // Addresses near the listed networks are the interesting ones.
    let nets: Vec<IpNetwork> = p.tenants.iter().flat_map(|t| t.allow.clone()).collect();
    let addr = match rng.random_range(0..7) {
        0 => None,
        6 => Some(
            *["10.1.0.1", "10.1.0.2", "10.1.0.3", "fd00::2"]
                .choose(rng)
                .unwrap(),
        )
        .map(|a| a.parse().unwrap()),
        1 => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        2 => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        3 if !nets.is_empty() => Some(nets.choose(rng).unwrap().network()),
        4 => Some(IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))),
        _ => Some(IpAddr::V6(Ipv6Addr::from(rng.random::<u128>()))),
    };
    Client {
        database: dbs.choose(rng).unwrap().clone(),
        user,
        // Membership of other tenants' roles (which tenants can grant) must change nothing.
        user_groups: match (member, rng.random_bool(0.5)) {
            (false, _) => vec![],
            (true, false) => vec![GROUP.into()],
            (true, true) => {
                let mut g = vec![GROUP.into()];
                g.extend(p.tenants.iter().map(|t| t.role.clone()));
                g
            }
        },
        addr,
        tls: rng.random_bool(0.7),
    }
}

/// Parse a rendered pg_hba.conf back into rules (the subset pgaas writes), so the property
/// covers rendering and quoting, not only the compiler's rule list.
fn parse(text: &str) -> Vec<HbaRule> {
    fn names(field: &str) -> Vec<HbaName> {
        let mut out = Vec::new();
        let mut rest = field;
        while !rest.is_empty() {
            let (item, tail) = if let Some(q) = rest.strip_prefix('"') {
                let end = q.find('"').expect("closing quote");
                (
                    HbaName::Name(q[..end].to_string()),
                    q[end + 1..].trim_start_matches(','),
                )
            } else {
                let (item, tail) = rest.split_once(',').unwrap_or((rest, ""));
                let name = match item {
                    "all" => HbaName::All,
                    "sameuser" => HbaName::SameUser,
                    "replication" => HbaName::Replication,
                    g if g.starts_with('+') => HbaName::Group(g[1..].to_string()),
                    n => HbaName::Name(n.to_string()),
                };
                (name, tail)
            };
            out.push(item);
            rest = tail;
        }
        out
    }
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let kind = match f[0] {
                "local" => ConnKind::Local,
                "host" => ConnKind::Host,
                "hostssl" => ConnKind::HostSsl,
                "hostnossl" => ConnKind::HostNoSsl,
                other => panic!("unexpected connection type {other:?} in {l:?}"),
            };
            let (address, method_at) = if kind == ConnKind::Local {
                (None, 3)
            } else if f[3] == "all" {
                (Some(HbaAddress::All), 4)
            } else {
                (Some(HbaAddress::Net(f[3].parse().expect("a CIDR"))), 4)
            };
            let method = match f[method_at] {
                "reject" => HbaMethod::Reject,
                "scram-sha-256" => HbaMethod::ScramSha256,
                "peer" => HbaMethod::Peer {
                    map: f
                        .get(method_at + 1)
                        .and_then(|m| m.strip_prefix("map="))
                        .map(String::from),
                },
                other => panic!("unexpected method {other:?}"),
            };
            HbaRule {
                kind,
                databases: names(f[1]),
                users: names(f[2]),
                address,
                method,
                comment: String::new(),
            }
        })
        .collect()
}

#[test]
fn compiled_and_rendered_rules_decide_what_the_policy_says() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let policy = random_policy(&mut rng);
        let rules = compile(&policy).unwrap();
        let rendered = parse(&render_pg_hba(&rules, seed).unwrap());
        for _ in 0..200 {
            let client = random_client(&mut rng, &policy);
            let want = oracle(&policy, &client);
            assert_eq!(
                decide(&rules, &client),
                want,
                "seed {seed}: compiled rules, {client:?}"
            );
            assert_eq!(
                decide(&rendered, &client),
                want,
                "seed {seed}: rendered file, {client:?}"
            );
        }
    }
}

/// Over TCP, PgBouncer decides as PostgreSQL does for every role that can be in its auth file
/// (tenants) and for the roles that must never come over TCP, so the pooler is no bypass and no
/// oracle for passwords PostgreSQL would not even ask for.
#[test]
fn both_ports_decide_the_same_over_tcp() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let policy = random_policy(&mut rng);
        let pg = compile(&policy).unwrap();
        let bouncer = compile_pgbouncer(&policy).unwrap();
        for _ in 0..200 {
            let mut client = random_client(&mut rng, &policy);
            if client.addr.is_none() {
                continue;
            }
            // PgBouncer never sees groups; the console's users exist only there.
            let console = rng.random_bool(0.05);
            if console {
                client.user = CONSOLE.into();
                client.user_groups.clear();
            }
            let tenant = client.user_groups.iter().any(|g| g == GROUP);
            let bouncer_client = Client {
                user_groups: vec![],
                ..client.clone()
            };
            let got = decide(&bouncer, &bouncer_client);
            if console || client.user == SU || client.user == API || client.database == "pgbouncer"
            {
                assert_eq!(got, Decision::Reject, "seed {seed}: {client:?}");
            } else if tenant {
                assert_eq!(got, decide(&pg, &client), "seed {seed}: {client:?}");
            }
        }
    }
}
