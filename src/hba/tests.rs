//! The policy as behaviour: who gets in, from where, and how, under the compiled rules.

use std::net::IpAddr;

use super::*;
use crate::render::hba::{
    Dialect, format_rules, render_pg_hba, render_pg_ident, render_pgbouncer_hba,
};

fn policy() -> HbaPolicy {
    HbaPolicy {
        superuser: "postgres".into(),
        api_role: "pgaas_api".into(),
        control_db: "postgres_control".into(),
        tenant_group: "pgaas_tenants".into(),
        admin_os_users: vec!["postgres".into(), "root".into()],
        pooler_admins: vec!["postgres".into(), "pgaas".into()],
        tenants: vec![
            TenantAccess {
                database: "tenant_open".into(),
                role: "tenant_open".into(),
                allow: vec![],
            },
            // Made before roles were named after their databases.
            TenantAccess {
                database: "tenant_legacy".into(),
                role: "user_legacy".into(),
                allow: vec![],
            },
            TenantAccess {
                database: "tenant_locked".into(),
                role: "tenant_locked".into(),
                allow: vec![
                    "203.0.113.0/24".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
            },
        ],
        replication: None,
    }
}

fn client(db: &str, user: &str, addr: Option<&str>, tls: bool) -> Client {
    // Tenant roles are in the tenant group.
    let groups = if user.starts_with("user_") || user.starts_with("tenant_") {
        vec!["pgaas_tenants".to_string()]
    } else {
        vec![]
    };
    Client {
        database: db.into(),
        user: user.into(),
        user_groups: groups,
        addr: addr.map(|a| a.parse::<IpAddr>().unwrap()),
        tls,
    }
}

const SCRAM: Decision = Decision::Accept(HbaMethod::ScramSha256);

fn both() -> [Vec<HbaRule>; 2] {
    [
        compile(&policy()).unwrap(),
        compile_pgbouncer(&policy()).unwrap(),
    ]
}

#[test]
fn superuser_over_tcp_is_rejected_even_with_tls() {
    for rules in both() {
        for addr in ["127.0.0.1", "198.51.100.7", "::1"] {
            assert_eq!(
                decide(&rules, &client("postgres", "postgres", Some(addr), true)),
                Decision::Reject
            );
        }
    }
}

#[test]
fn superuser_on_the_socket_uses_peer_through_the_admin_map() {
    let rules = compile(&policy()).unwrap();
    assert_eq!(
        decide(&rules, &client("postgres", "postgres", None, false)),
        Decision::Accept(HbaMethod::Peer {
            map: Some(PEER_MAP.into())
        })
    );
}

#[test]
fn plaintext_tcp_is_rejected_for_everyone() {
    for rules in both() {
        for (db, user) in [
            ("tenant_open", "tenant_open"),
            ("tenant_locked", "tenant_locked"),
            ("tenant_legacy", "user_legacy"),
            ("x", "nobody"),
        ] {
            assert_eq!(
                decide(&rules, &client(db, user, Some("198.51.100.7"), false)),
                Decision::Reject
            );
        }
    }
}

#[test]
fn tenant_over_tls_is_accepted_with_scram() {
    for rules in both() {
        for (db, user) in [
            ("tenant_open", "tenant_open"),
            ("tenant_legacy", "user_legacy"),
        ] {
            for addr in ["198.51.100.7", "2001:db8::1"] {
                assert_eq!(
                    decide(&rules, &client(db, user, Some(addr), true)),
                    SCRAM,
                    "{db} {user} {addr}"
                );
            }
        }
    }
}

#[test]
fn allow_list_admits_listed_networks_and_refuses_the_rest() {
    for rules in both() {
        assert_eq!(
            decide(
                &rules,
                &client("tenant_locked", "tenant_locked", Some("203.0.113.9"), true)
            ),
            SCRAM
        );
        assert_eq!(
            decide(
                &rules,
                &client(
                    "tenant_locked",
                    "tenant_locked",
                    Some("2001:db8:1::5"),
                    true
                )
            ),
            SCRAM
        );
        assert_eq!(
            decide(
                &rules,
                &client("tenant_locked", "tenant_locked", Some("198.51.100.7"), true)
            ),
            Decision::Reject,
            "tenant from a non-listed address is refused"
        );
        // Another tenant's role, even from a listed network.
        assert_eq!(
            decide(
                &rules,
                &client("tenant_locked", "tenant_open", Some("203.0.113.9"), true)
            ),
            Decision::Reject
        );
    }
}

#[test]
fn a_tenant_reaches_only_its_own_database_whatever_it_was_granted() {
    // Roles of other tenants (which a tenant can grant itself into on PostgreSQL 15) change
    // nothing: no rule lets membership choose the database or the address.
    let mut intruder = client("tenant_open", "tenant_locked", Some("198.51.100.7"), true);
    intruder.user_groups.extend([
        "tenant_open".to_string(),
        "user_legacy".to_string(),
        "pgaas_open_tenants".to_string(),
    ]);
    for rules in both() {
        for db in [
            "tenant_open",
            "tenant_legacy",
            "postgres",
            "postgres_control",
            "template1",
        ] {
            let c = Client {
                database: db.into(),
                ..intruder.clone()
            };
            assert_eq!(decide(&rules, &c), Decision::Reject, "{db}");
        }
        // Its own database, from outside its list: still refused, whatever it is a member of.
        let c = Client {
            database: "tenant_locked".into(),
            ..intruder.clone()
        };
        assert_eq!(decide(&rules, &c), Decision::Reject);
        for (db, user) in [
            ("tenant_locked", "user_legacy"),
            ("tenant_open", "user_legacy"),
            ("tenant_legacy", "tenant_open"),
        ] {
            assert_eq!(
                decide(&rules, &client(db, user, Some("203.0.113.9"), true)),
                Decision::Reject,
                "{user} -> {db}"
            );
        }
    }
}

#[test]
fn the_pooler_console_is_reachable_over_its_socket_by_peer_only() {
    let rules = compile_pgbouncer(&policy()).unwrap();
    for admin in ["postgres", "pgaas"] {
        assert_eq!(
            decide(&rules, &client("pgbouncer", admin, None, false)),
            Decision::Accept(HbaMethod::Peer { map: None })
        );
        for addr in ["127.0.0.1", "::1", "198.51.100.7"] {
            for db in ["pgbouncer", "tenant_open", admin] {
                assert_eq!(
                    decide(&rules, &client(db, admin, Some(addr), true)),
                    Decision::Reject,
                    "{admin} -> {db} from {addr}"
                );
            }
        }
    }
    for user in ["tenant_open", "pgbouncer", "stats", "nobody"] {
        for addr in [None, Some("127.0.0.1"), Some("198.51.100.7")] {
            assert_eq!(
                decide(&rules, &client("pgbouncer", user, addr, true)),
                Decision::Reject,
                "{user} from {addr:?}"
            );
        }
    }
    // Tenants come over TLS, never over the pooler's socket.
    assert_eq!(
        decide(&rules, &client("tenant_open", "tenant_open", None, false)),
        Decision::Reject
    );
}

#[test]
fn api_role_reaches_the_control_db_from_this_host_only() {
    let rules = compile(&policy()).unwrap();
    assert_eq!(
        decide(
            &rules,
            &client("postgres_control", "pgaas_api", None, false)
        ),
        SCRAM
    );
    assert_eq!(
        decide(
            &rules,
            &client("postgres_control", "pgaas_api", Some("127.0.0.1"), true)
        ),
        SCRAM
    );
    assert_eq!(
        decide(
            &rules,
            &client("postgres_control", "pgaas_api", Some("::1"), true)
        ),
        SCRAM
    );
    assert_eq!(
        decide(
            &rules,
            &client("postgres_control", "pgaas_api", Some("127.0.0.1"), false)
        ),
        Decision::Reject
    );
    assert_eq!(
        decide(
            &rules,
            &client("postgres_control", "pgaas_api", Some("10.0.0.2"), true)
        ),
        Decision::Reject
    );
    // Over the socket it reaches tenant databases too (backups, cleanup after a delete): it is
    // a member of every tenant role anyway.
    assert_eq!(
        decide(&rules, &client("tenant_open", "pgaas_api", None, false)),
        SCRAM
    );
    assert_eq!(
        decide(
            &rules,
            &client("tenant_open", "pgaas_api", Some("127.0.0.1"), true)
        ),
        Decision::Reject
    );
}

#[test]
fn unknown_roles_are_rejected_by_an_explicit_rule_not_by_falling_off_the_end() {
    let rules = compile(&policy()).unwrap();
    assert_eq!(
        decide(
            &rules,
            &client("tenant_open", "nobody", Some("198.51.100.7"), true)
        ),
        Decision::Reject
    );
    assert_eq!(
        decide(&rules, &client("tenant_open", "nobody", None, false)),
        Decision::Reject
    );
    // Tenants reach the server socket (PgBouncer's path) with SCRAM, each its own database.
    assert_eq!(
        decide(&rules, &client("tenant_open", "tenant_open", None, false)),
        SCRAM
    );
    assert_eq!(
        decide(&rules, &client("tenant_legacy", "user_legacy", None, false)),
        SCRAM
    );
    assert_eq!(
        decide(&rules, &client("tenant_open", "tenant_locked", None, false)),
        Decision::Reject
    );
}

#[test]
fn pgbouncer_rules_use_only_what_pgbouncer_understands() {
    let rules = compile_pgbouncer(&policy()).unwrap();
    let text = render_pgbouncer_hba(&rules, 1).unwrap();
    let active: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        active.iter().flatten().all(|f| !f.starts_with('+')),
        "no groups:\n{text}"
    );
    assert!(
        active.iter().flatten().all(|f| !f.starts_with("map=")),
        "no ident maps:\n{text}"
    );
    for l in active.iter().filter(|l| l[0] != "local") {
        assert!(l[3].contains('/'), "PgBouncer addresses are CIDRs: {l:?}");
    }
    // The server dialect would refuse nothing; PgBouncer refuses a group.
    let server = compile(&policy()).unwrap();
    assert!(matches!(
        format_rules(&server, Dialect::PgBouncer),
        Err(HbaError::Unsupported { .. })
    ));
}

#[test]
fn cidr_with_host_bits_is_refused() {
    let mut p = policy();
    p.tenants[2].allow.push("10.1.2.3/8".parse().unwrap());
    let err = compile(&p).unwrap_err();
    assert!(matches!(err, HbaError::HostBits { .. }), "{err}");
    assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
}

#[test]
fn rule_order_does_not_depend_on_row_order() {
    let mut p = policy();
    p.tenants.reverse();
    p.tenants[0].allow.reverse();
    assert_eq!(compile(&p).unwrap(), compile(&policy()).unwrap());
}

#[test]
fn names_are_quoted_when_needed_and_refused_when_inexpressible() {
    let mut p = policy();
    p.tenants = vec![TenantAccess {
        database: "all".into(),
        role: "my role#1".into(),
        allow: vec![],
    }];
    p.tenants[0].allow.push("192.0.2.0/24".parse().unwrap());
    let text = render_pg_hba(&compile(&p).unwrap(), 1).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("hostssl") && l.contains(" \"all\" ")),
        "{text}"
    );
    assert!(text.contains("\"my role#1\""), "{text}");

    for bad in [
        "a\nlocal all all trust",
        "a\"b",
        "a\\",
        "nul\0",
        "",
        &"x".repeat(64),
    ] {
        let mut p = policy();
        p.tenants[2].database = bad.to_string();
        let err = render_pg_hba(&compile(&p).unwrap(), 1).unwrap_err();
        assert!(
            matches!(err, crate::render::RenderError::Hba(HbaError::Name { .. })),
            "{bad:?}: {err}"
        );
    }
    let mut p = policy();
    p.tenant_group = "odd group".into();
    assert!(
        render_pg_hba(&compile(&p).unwrap(), 1).is_err(),
        "a group must be plain"
    );
    let mut p = policy();
    p.admin_os_users.push("/regex".into());
    assert!(render_pg_ident(&p, 1).is_err());
}

#[test]
fn quoted_keyword_is_a_name_in_the_model_too() {
    // A role literally named "all" matches only itself.
    let rules = vec![HbaRule {
        kind: ConnKind::Local,
        databases: vec![HbaName::All],
        users: vec![HbaName::name("all")],
        address: None,
        method: HbaMethod::Reject,
        comment: String::new(),
    }];
    assert_eq!(
        decide(&rules, &client("x", "someone", None, false)),
        Decision::NoMatch
    );
    assert_eq!(
        decide(&rules, &client("x", "all", None, false)),
        Decision::Reject
    );
}
