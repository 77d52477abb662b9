//! Allow-lists proven with real sockets: clients bound to 127.0.0.2 / 127.0.0.3 (all of
//! 127.0.0.0/8 is local, and the server sees the bound source address) connect over TLS to
//! PostgreSQL and to PgBouncer, and pg_hba decides.

use std::{net::IpAddr, sync::Arc, time::Duration};

use pgaas::{
    model::{AllowEntry, FriendlyName, OwnerEmail},
    tenant::{AuditContext, NewTenant, Provisioned, TenantError, TenantService},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpSocket;

use crate::harness::platform;

pub struct Creds {
    pub user: String,
    pub password: String,
    pub database: String,
}

impl From<&Provisioned> for Creds {
    fn from(p: &Provisioned) -> Self {
        Creds {
            user: p.tenant.username.as_str().into(),
            password: p.password.expose().into(),
            database: p.tenant.database_name.as_str().into(),
        }
    }
}

fn tls(ca_file: &std::path::Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// Connect from `source` to `port` on loopback; `tls` false sends no SSLRequest (plaintext).
pub async fn connect_from(
    source: IpAddr,
    port: u16,
    creds: &Creds,
    use_tls: bool,
) -> Result<tokio_postgres::Client, String> {
    connect_with_ca(&platform().ca_file, source, port, creds, use_tls).await
}

/// [`connect_from`] to a platform whose server certificate `ca_file` signed.
pub async fn connect_with_ca(
    ca_file: &std::path::Path,
    source: IpAddr,
    port: u16,
    creds: &Creds,
    use_tls: bool,
) -> Result<tokio_postgres::Client, String> {
    let target: IpAddr = if source.is_ipv4() {
        [127, 0, 0, 1].into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    connect_to(ca_file, source, target, port, creds, use_tls).await
}

/// [`connect_with_ca`] to a server listening on `target` (another loopback address).
pub async fn connect_to(
    ca_file: &std::path::Path,
    source: IpAddr,
    target: IpAddr,
    port: u16,
    creds: &Creds,
    use_tls: bool,
) -> Result<tokio_postgres::Client, String> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect((target, port).into())
        .await
        .map_err(|e| e.to_string())?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(&creds.user)
        .password(&creds.password)
        .dbname(&creds.database)
        .connect_timeout(Duration::from_secs(10));
    let result = if use_tls {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let mut make = tls(ca_file);
        let connect =
            tokio_postgres::tls::MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(
                &mut make,
                "localhost",
            )
            .map_err(|e| e.to_string())?;
        config.connect_raw(stream, connect).await.map(|(c, conn)| {
            tokio::spawn(conn);
            c
        })
    } else {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        config
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map(|(c, conn)| {
                tokio::spawn(conn);
                c
            })
    };
    let client = result.map_err(|e| match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    })?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    Ok(client)
}

pub fn v4(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

async fn create(svc: &TenantService, email: &str) -> Provisioned {
    svc.create(
        NewTenant {
            friendly_name: FriendlyName::parse("allow-list test").unwrap(),
            owner_email: OwnerEmail::parse(email).unwrap(),
            max_connections: Some(10),
            max_size_mb: None,
        },
        &AuditContext::cli(),
    )
    .await
    .unwrap()
}

fn refused_by_hba(r: Result<tokio_postgres::Client, String>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: connected, but pg_hba should have refused it"),
        Err(e) => assert!(
            e.contains("pg_hba") || e.contains("rejected"),
            "{what}: refused for another reason: {e}"
        ),
    }
}

#[tokio::test]
async fn an_entry_restricts_its_database_directly_and_through_pgbouncer_and_removal_reopens() {
    let p = platform();
    let svc = &p.tenants();
    let ctx = AuditContext::cli();
    let a = create(svc, "allow-a@example.com").await;
    let b = create(svc, "allow-b@example.com").await;
    let (ca, cb) = (Creds::from(&a), Creds::from(&b));
    let (pg, bouncer) = (p.pg_port, p.pgbouncer_port);

    // Empty list: any address, TLS only.
    for port in [pg, bouncer] {
        connect_from(v4(3), port, &ca, true).await.unwrap();
    }

    let entry = svc
        .allow(
            a.tenant.id,
            AllowEntry::parse("127.0.0.2").unwrap(),
            Some("office".into()),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(entry.ip_address, "127.0.0.2/32");
    for port in [pg, bouncer] {
        connect_from(v4(2), port, &ca, true)
            .await
            .unwrap_or_else(|e| panic!("listed address refused on {port}: {e}"));
        refused_by_hba(
            connect_from(v4(3), port, &ca, true).await,
            &format!("unlisted address on port {port}"),
        );
        // Another tenant's list does not touch this one.
        connect_from(v4(3), port, &cb, true).await.unwrap();
    }

    svc.disallow(a.tenant.id, entry.id, &ctx).await.unwrap();
    for port in [pg, bouncer] {
        connect_from(v4(3), port, &ca, true)
            .await
            .unwrap_or_else(|e| panic!("after removal, port {port}: {e}"));
    }
    svc.delete(a.tenant.id, &ctx).await.unwrap();
    svc.delete(b.tenant.id, &ctx).await.unwrap();
}

#[tokio::test]
async fn plaintext_is_refused_on_every_tcp_path() {
    let p = platform();
    let svc = p.tenants();
    let t = create(&svc, "plain@example.com").await;
    let c = Creds::from(&t);
    for port in [p.pg_port, p.pgbouncer_port] {
        let err = connect_from(v4(2), port, &c, false)
            .await
            .err()
            .unwrap_or_else(|| panic!("plaintext accepted on {port}"));
        assert!(
            err.contains("no encryption")
                || err.contains("SSL required")
                || err.contains("rejected"),
            "{port}: {err}"
        );
    }
    svc.delete(t.tenant.id, &AuditContext::cli()).await.unwrap();
}

#[tokio::test]
async fn deleting_a_database_removes_its_rules() {
    let p = platform();
    let svc = p.tenants();
    let ctx = AuditContext::cli();
    let t = create(&svc, "delete-rules@example.com").await;
    svc.allow(
        t.tenant.id,
        AllowEntry::parse("127.0.0.9/32").unwrap(),
        None,
        &ctx,
    )
    .await
    .unwrap();
    let hba = std::fs::read_to_string(p.state_dir.join("pgdata/pg_hba.conf")).unwrap();
    assert!(hba.contains(t.tenant.database_name.as_str()));
    svc.delete(t.tenant.id, &ctx).await.unwrap();
    let hba = std::fs::read_to_string(p.state_dir.join("pgdata/pg_hba.conf")).unwrap();
    assert!(
        !hba.contains(t.tenant.database_name.as_str()),
        "stale lines left for a deleted database"
    );
}

#[tokio::test]
async fn refused_changes_leave_file_and_rows_untouched() {
    let p = platform();
    let svc = p.tenants();
    let ctx = AuditContext::cli();
    let t = create(&svc, "refused@example.com").await;
    svc.allow(
        t.tenant.id,
        AllowEntry::parse("10.1.0.0/16").unwrap(),
        None,
        &ctx,
    )
    .await
    .unwrap();
    // Other tests change the shared file concurrently: compare this tenant's lines (the
    // byte-for-byte check runs on a private platform in `allowlist_faults`).
    let path = p.state_dir.join("pgdata/pg_hba.conf");
    let own = |name: &str| -> Vec<String> {
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| l.contains(name))
            .map(String::from)
            .collect()
    };
    let name = t.tenant.database_name.as_str();
    let before = own(name);
    assert!(!before.is_empty());
    let rows_before = svc.list_allowed(t.tenant.id).await.unwrap().len();

    let dup = svc
        .allow(
            t.tenant.id,
            AllowEntry::parse("10.1.0.0/16").unwrap(),
            None,
            &ctx,
        )
        .await;
    assert!(matches!(dup, Err(TenantError::Conflict(_))), "{dup:?}");
    let unknown = pgaas::model::TenantId::new_random();
    let missing = svc
        .allow(
            unknown,
            AllowEntry::parse("10.2.0.0/16").unwrap(),
            None,
            &ctx,
        )
        .await;
    assert!(
        matches!(missing, Err(TenantError::NotFound(_))),
        "{missing:?}"
    );
    assert!(matches!(
        svc.list_allowed(unknown).await,
        Err(TenantError::NotFound(_))
    ));
    let no_entry = svc.disallow(t.tenant.id, uuid::Uuid::new_v4(), &ctx).await;
    assert!(
        matches!(no_entry, Err(TenantError::EntryNotFound(_))),
        "{no_entry:?}"
    );

    assert_eq!(
        own(name),
        before,
        "pg_hba.conf changed on a refused request"
    );
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("10.2.0.0/16")
    );
    assert_eq!(
        svc.list_allowed(t.tenant.id).await.unwrap().len(),
        rows_before
    );
    svc.delete(t.tenant.id, &ctx).await.unwrap();
}

#[tokio::test]
async fn fifty_concurrent_changes_across_ten_databases_all_land() {
    let p = platform();
    let svc = p.tenants();
    let ctx = AuditContext::cli();
    let mut tenants = Vec::new();
    for i in 0..10 {
        tenants.push(create(&svc, &format!("concurrent{i}@example.com")).await);
    }
    let svc = Arc::new(svc.clone());
    let mut tasks = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for j in 0..5u8 {
            let svc = svc.clone();
            let id = t.tenant.id;
            let entry = AllowEntry::parse(&format!("10.{i}.{j}.0/24")).unwrap();
            tasks.push(tokio::spawn(async move {
                svc.allow(id, entry, None, &AuditContext::cli()).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let hba = std::fs::read_to_string(p.state_dir.join("pgdata/pg_hba.conf")).unwrap();
    for i in 0..10 {
        for j in 0..5 {
            assert!(
                hba.contains(&format!("10.{i}.{j}.0/24")),
                "10.{i}.{j}.0/24 missing from pg_hba.conf"
            );
        }
    }
    // In force: the server's view of the file has them too, and the generation matches.
    let local = format!(
        "host={} port={} user={} dbname=postgres",
        p.socket_dir.display(),
        p.pg_port,
        p.superuser
    );
    let (ok, count, err) = crate::harness::psql(
        &local,
        "SELECT count(*) FROM pg_hba_file_rules WHERE address LIKE '10.%' AND netmask = '255.255.255.0'",
        &[],
    );
    assert!(ok, "{err}");
    assert!(count.parse::<i64>().unwrap() >= 50, "{count}");
    for t in &tenants {
        svc.delete(t.tenant.id, &ctx).await.unwrap();
    }
}

#[tokio::test]
async fn ipv6_entries_hold_too() {
    let p = platform();
    let svc = p.tenants();
    let ctx = AuditContext::cli();
    let t = create(&svc, "ipv6@example.com").await;
    let c = Creds::from(&t);
    let v6: IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
    connect_from(v6, p.pg_port, &c, true).await.unwrap();
    svc.allow(
        t.tenant.id,
        AllowEntry::parse("127.0.0.2").unwrap(),
        None,
        &ctx,
    )
    .await
    .unwrap();
    refused_by_hba(
        connect_from(v6, p.pg_port, &c, true).await,
        "::1 with only an IPv4 entry",
    );
    let e = svc
        .allow(t.tenant.id, AllowEntry::parse("::1").unwrap(), None, &ctx)
        .await
        .unwrap();
    assert_eq!(e.ip_address, "::1/128");
    connect_from(v6, p.pg_port, &c, true).await.unwrap();
    refused_by_hba(
        connect_from(v4(3), p.pg_port, &c, true).await,
        "127.0.0.3 not listed",
    );
    svc.delete(t.tenant.id, &ctx).await.unwrap();
}
