//! A local server speaking the Cloudflare v4 endpoints pgaas uses (the real API is unreachable
//! here): `GET /zones?name=`, `POST /zones/{id}/dns_records`, `DELETE /zones/{id}/dns_records/{rid}`,
//! with bearer-token authentication and Cloudflare's `{success, errors, result}` envelope. Records
//! it accepts are written into a real BIND zone (RFC 2136), so Pebble validates against real DNS.
//! HTTPS with a certificate from the given files, as the real API is HTTPS only.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{delete, get},
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

#[derive(Clone)]
struct Shared {
    token: String,
    zone: String,
    dns_server: String,
    key_file: String,
    records: Arc<Mutex<HashMap<String, (String, String)>>>,
    calls: Arc<Mutex<Vec<String>>>,
    next: Arc<Mutex<u32>>,
}

pub struct FakeCloudflare {
    /// `https://127.0.0.1:<port>/client/v4`
    pub api: String,
    calls: Arc<Mutex<Vec<String>>>,
    records: Arc<Mutex<HashMap<String, (String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn envelope(status: StatusCode, result: Value) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({ "success": true, "errors": [], "messages": [], "result": result })),
    )
}

fn refused(status: StatusCode, message: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({
            "success": false,
            "errors": [{ "code": 10000, "message": message }],
            "messages": [],
            "result": null,
        })),
    )
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", s.token))
}

async fn nsupdate(s: &Shared, line: String) -> bool {
    use tokio::io::AsyncWriteExt;
    let (host, port) = s.dns_server.split_once(':').unwrap();
    let mut child = tokio::process::Command::new("nsupdate")
        .arg("-k")
        .arg(&s.key_file)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("server {host} {port}\n{line}\nsend\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    child.wait().await.unwrap().success()
}

async fn zones(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    s.calls.lock().unwrap().push(format!(
        "GET zones?name={}",
        q.get("name").cloned().unwrap_or_default()
    ));
    if !authorized(&s, &headers) {
        return refused(StatusCode::FORBIDDEN, "Authentication error");
    }
    let hit = q.get("name").is_some_and(|n| *n == s.zone);
    envelope(
        StatusCode::OK,
        if hit {
            json!([{ "id": ZONE_ID, "name": s.zone, "status": "active",
                     "name_servers": [format!("ns.{}", s.zone)] }])
        } else {
            json!([])
        },
    )
}

async fn create(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath(zone): UrlPath<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    s.calls.lock().unwrap().push("POST dns_records".into());
    if !authorized(&s, &headers) {
        return refused(StatusCode::FORBIDDEN, "Authentication error");
    }
    if zone != ZONE_ID || body["type"] != "TXT" {
        return refused(StatusCode::BAD_REQUEST, "Invalid zone or record type");
    }
    let (name, content) = (
        body["name"].as_str().unwrap_or_default().to_string(),
        body["content"].as_str().unwrap_or_default().to_string(),
    );
    let ttl = body["ttl"].as_u64().unwrap_or(1);
    if !nsupdate(&s, format!("update add {name}. {ttl} IN TXT \"{content}\"")).await {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "upstream DNS update failed",
        );
    }
    let id = {
        let mut n = s.next.lock().unwrap();
        *n += 1;
        format!("rec{n:04}")
    };
    s.records
        .lock()
        .unwrap()
        .insert(id.clone(), (name.clone(), content.clone()));
    envelope(
        StatusCode::OK,
        json!({ "id": id, "type": "TXT", "name": name, "content": content, "ttl": ttl }),
    )
}

async fn remove(
    State(s): State<Shared>,
    headers: HeaderMap,
    UrlPath((zone, id)): UrlPath<(String, String)>,
) -> (StatusCode, Json<Value>) {
    s.calls.lock().unwrap().push(format!("DELETE {id}"));
    if !authorized(&s, &headers) {
        return refused(StatusCode::FORBIDDEN, "Authentication error");
    }
    let found = s.records.lock().unwrap().remove(&id);
    let Some((name, content)) = found.filter(|_| zone == ZONE_ID) else {
        return refused(StatusCode::NOT_FOUND, "Record not found");
    };
    nsupdate(&s, format!("update delete {name}. TXT \"{content}\"")).await;
    envelope(StatusCode::OK, json!({ "id": id }))
}

impl FakeCloudflare {
    /// Serve on a free port of 127.0.0.1 with `cert`/`key` (PEM), accepting `token`, for `zone`,
    /// writing records into the BIND server at `dns_server` with `key_file`.
    pub async fn start(
        token: &str,
        zone: &str,
        dns_server: &str,
        key_file: &Path,
        cert: &Path,
        key: &Path,
    ) -> Self {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let shared = Shared {
            token: token.to_string(),
            zone: zone.to_string(),
            dns_server: dns_server.to_string(),
            key_file: key_file.to_string_lossy().into_owned(),
            records: Arc::default(),
            calls: Arc::default(),
            next: Arc::default(),
        };
        let (calls, records) = (shared.calls.clone(), shared.records.clone());
        let app = Router::new()
            .route("/client/v4/zones", get(zones))
            .route(
                "/client/v4/zones/{zone}/dns_records",
                axum::routing::post(create),
            )
            .route("/client/v4/zones/{zone}/dns_records/{id}", delete(remove))
            .with_state(shared);
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            api: format!("https://127.0.0.1:{port}/client/v4"),
            calls,
            records,
            task,
        }
    }

    /// Every request so far, as `METHOD what`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Records created and not deleted.
    pub fn live_records(&self) -> usize {
        self.records.lock().unwrap().len()
    }
}

impl Drop for FakeCloudflare {
    fn drop(&mut self) {
        self.task.abort();
    }
}
