//! DNS-01: for hosts whose ports 80 and 443 belong to something else (a reverse proxy), the CA
//! checks a TXT record at `_acme-challenge.<name>` instead of calling back.
//!
//! The record is written either with RFC 2136 dynamic updates signed with a TSIG key
//! (`nsupdate -k`, BIND 9's client, which speaks to any server that accepts updates: BIND, Knot,
//! PowerDNS) or through Cloudflare's API (a token with DNS edit rights on the zone, read from a
//! file). The CA is told to validate only once the record is visible where the CA will look:
//! the server that took the update, or every name server Cloudflare lists for the zone
//! (`dig +norecurse` against each; `--dns-check-server` overrides). Every record written is deleted when the order ends, whatever
//! happened. The key file is the operator's secret: it must be readable by its owner alone, and
//! is named (never shown) in errors. Before anything is ordered the key file and the tools are
//! checked, so a mistake costs the CA nothing.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, process::Command};

use super::AcmeError;

/// How long a record may take to appear at the server that took the update.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The TTL of the challenge records: short, so a stale one does not linger in caches.
const TXT_TTL: u32 = 60;

/// Where and how the challenge records are written (stored with the issue parameters, so a
/// renewal writes them the same way).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum DnsProvider {
    /// RFC 2136 dynamic updates signed with a TSIG key.
    Rfc2136 {
        /// The primary server that accepts updates: `host` or `host:port` (`[v6]:port`).
        server: String,
        /// A TSIG key in BIND's format (`tsig-keygen` writes one), readable by its owner only.
        key_file: PathBuf,
        /// The zone to update, when the server cannot work it out from the name.
        #[serde(default)]
        zone: Option<String>,
    },
    /// Cloudflare's API (v4) with an API token allowed to edit the zone's DNS.
    Cloudflare {
        /// The API token, in a file readable by its owner only.
        token_file: PathBuf,
        /// The zone, when it is not the name's parent domain.
        #[serde(default)]
        zone: Option<String>,
        /// The API's base URL.
        #[serde(default = "cloudflare_api")]
        api: String,
        /// Where to check that the record is visible, instead of the zone's name servers.
        #[serde(default)]
        check_server: Option<String>,
    },
}

pub const CLOUDFLARE_API: &str = "https://api.cloudflare.com/client/v4";

fn cloudflare_api() -> String {
    CLOUDFLARE_API.to_string()
}

impl DnsProvider {
    /// Where records go, for messages.
    fn server(&self) -> &str {
        match self {
            Self::Rfc2136 { server, .. } => server,
            Self::Cloudflare { api, .. } => api,
        }
    }
}

/// `host:port` / `[v6]:port` / `host` into (host, port).
fn split_server(server: &str) -> Result<(String, u16), AcmeError> {
    let bad = || {
        AcmeError::Usage(format!(
            "--dns-server {server:?} is not HOST or HOST:PORT (an address or a name; [v6]:port)"
        ))
    };
    if let Some(rest) = server.strip_prefix('[') {
        let (host, port) = rest.split_once(']').ok_or_else(bad)?;
        let port = match port.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if port.is_empty() => 53,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    if server.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((server.to_string(), 53));
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (server, 53),
    };
    let ok = host.parse::<std::net::IpAddr>().is_ok() || crate::settings::is_host_name(host);
    if !ok || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The record name for an identifier.
pub fn record_name(identifier: &str) -> String {
    format!("_acme-challenge.{}.", identifier.trim_end_matches('.'))
}

/// A record this publisher wrote: its name, value and (Cloudflare) id.
struct Published {
    name: String,
    value: String,
    id: Option<String>,
}

/// Writes challenge records and removes them again.
pub struct DnsPublisher {
    provider: DnsProvider,
    /// RFC 2136: the server that takes updates. Cloudflare: `--dns-check-server`, if given.
    target: Option<(String, u16)>,
    cloudflare: Option<Cloudflare>,
    published: Mutex<Vec<Published>>,
}

impl DnsPublisher {
    /// Check everything that can be checked before the CA is asked for anything.
    pub fn prepare(provider: &DnsProvider, ca_file: Option<&Path>) -> Result<Self, AcmeError> {
        let check_zone = |zone: &Option<String>| match zone {
            Some(z) if !crate::settings::is_host_name(z.trim_end_matches('.')) => Err(
                AcmeError::Usage(format!("--dns-zone {z:?} is not a zone name")),
            ),
            _ => Ok(()),
        };
        let tools: &[&str] = match provider {
            DnsProvider::Rfc2136 { .. } => &["nsupdate", "dig"],
            DnsProvider::Cloudflare { .. } => &["dig"],
        };
        for tool in tools {
            if which(tool).is_none() {
                return Err(AcmeError::Usage(format!(
                    "DNS-01 needs `{tool}`: apt-get install bind9-dnsutils"
                )));
            }
        }
        let (target, cloudflare) = match provider {
            DnsProvider::Rfc2136 {
                server,
                key_file,
                zone,
            } => {
                check_secret_file(
                    key_file,
                    "--dns-key-file",
                    "give the key the DNS server's administrator made with tsig-keygen",
                )?;
                check_zone(zone)?;
                (Some(split_server(server)?), None)
            }
            DnsProvider::Cloudflare {
                token_file,
                zone,
                api,
                check_server,
            } => {
                check_secret_file(
                    token_file,
                    "--cloudflare-token-file",
                    "write a Cloudflare API token with Zone.DNS Edit into it",
                )?;
                check_zone(zone)?;
                let token = std::fs::read_to_string(token_file).map_err(|e| {
                    AcmeError::Usage(format!(
                        "--cloudflare-token-file {}: {e}",
                        token_file.display()
                    ))
                })?;
                let token = token.trim().to_string();
                if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(AcmeError::Usage(format!(
                        "--cloudflare-token-file {} does not hold one API token",
                        token_file.display()
                    )));
                }
                if !api.starts_with("https://") {
                    return Err(AcmeError::Usage(format!(
                        "--cloudflare-api {api:?} must be an https:// URL"
                    )));
                }
                let target = check_server.as_deref().map(split_server).transpose()?;
                let cf = Cloudflare {
                    http: super::client::http_client(ca_file)?,
                    api: api.trim_end_matches('/').to_string(),
                    token: crate::model::Secret::new(token),
                    zone: zone.clone(),
                    found: Mutex::new(None),
                };
                (target, Some(cf))
            }
        };
        Ok(Self {
            provider: provider.clone(),
            target,
            cloudflare,
            published: Mutex::new(Vec::new()),
        })
    }

    /// Write the TXT record for `identifier` and wait until the server answers with it.
    pub async fn publish(&self, identifier: &str, value: &str) -> Result<(), AcmeError> {
        let name = record_name(identifier);
        let (id, servers) = match &self.cloudflare {
            None => {
                self.update(&name, value, true).await?;
                (
                    None,
                    vec![self.target.clone().expect("RFC 2136 has a server")],
                )
            }
            Some(cf) => {
                let zone = cf.zone_for(identifier).await?;
                let id = cf.create(&zone, &name, value).await?;
                let servers = match &self.target {
                    Some(t) => vec![t.clone()],
                    None => zone.name_servers.iter().map(|n| (n.clone(), 53)).collect(),
                };
                (Some(id), servers)
            }
        };
        self.published
            .lock()
            .expect("publisher lock")
            .push(Published {
                name: name.clone(),
                value: value.to_string(),
                id,
            });
        if servers.is_empty() {
            return Err(AcmeError::DnsPropagation {
                name,
                server: "no name server listed for the zone".into(),
                secs: 0,
            });
        }
        let started = Instant::now();
        loop {
            let mut everywhere = true;
            for (host, port) in &servers {
                if !self
                    .visible(host, *port, &name)
                    .await?
                    .iter()
                    .any(|v| v == value)
                {
                    everywhere = false;
                    break;
                }
            }
            if everywhere {
                tracing::info!(record = %name, server = %self.provider.server(), secs = started.elapsed().as_secs_f64(), "challenge record visible");
                return Ok(());
            }
            if started.elapsed() > PROPAGATION_TIMEOUT {
                return Err(AcmeError::DnsPropagation {
                    name,
                    server: self.provider.server().to_string(),
                    secs: PROPAGATION_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Remove every record this publisher wrote; failures are logged (the records expire).
    pub async fn cleanup(&self) {
        let records = std::mem::take(&mut *self.published.lock().expect("publisher lock"));
        for r in records {
            let removed = match (&self.cloudflare, &r.id) {
                (Some(cf), Some(id)) => cf.delete(&r.name, id).await,
                _ => self.update(&r.name, &r.value, false).await,
            };
            if let Err(e) = removed {
                tracing::warn!(record = %r.name, error = %e, "could not remove the challenge record; remove it by hand");
            }
        }
    }

    async fn update(&self, name: &str, value: &str, add: bool) -> Result<(), AcmeError> {
        let DnsProvider::Rfc2136 { key_file, zone, .. } = &self.provider else {
            unreachable!("only RFC 2136 updates with nsupdate");
        };
        let (host, port) = self.target.clone().expect("RFC 2136 has a server");
        let mut script = format!("server {host} {port}\n");
        if let Some(z) = zone {
            script.push_str(&format!("zone {}\n", z.trim_end_matches('.')));
        }
        // The value is base64url (RFC 8555 8.4): no quote or backslash to escape.
        if add {
            script.push_str(&format!("update add {name} {TXT_TTL} IN TXT \"{value}\"\n"));
        } else {
            script.push_str(&format!("update delete {name} TXT \"{value}\"\n"));
        }
        script.push_str("send\n");
        let out = run(
            Command::new("nsupdate")
                .arg("-k")
                .arg(key_file)
                .args(["-t", "10"]),
            Some(&script),
        )
        .await?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(AcmeError::DnsUpdate {
                server: self.provider.server().to_string(),
                name: name.to_string(),
                detail: if said.is_empty() {
                    format!("nsupdate exited with {}", out.status)
                } else {
                    said
                },
            });
        }
        Ok(())
    }

    /// The TXT values a server answers for `name` (authoritatively, no recursion).
    async fn visible(&self, host: &str, port: u16, name: &str) -> Result<Vec<String>, AcmeError> {
        let out = run(
            Command::new("dig")
                .args(["+short", "+norecurse", "+time=2", "+tries=1", "-p"])
                .arg(port.to_string())
                .arg(format!("@{host}"))
                .args(["TXT", name]),
            None,
        )
        .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// A Cloudflare zone as the API lists it.
#[derive(Clone, Debug)]
struct Zone {
    id: String,
    name: String,
    name_servers: Vec<String>,
}

/// Cloudflare's v4 API: zones by name, TXT records created and deleted by id.
struct Cloudflare {
    http: Box<dyn instant_acme::HttpClient>,
    api: String,
    token: crate::model::Secret,
    zone: Option<String>,
    found: Mutex<Option<Zone>>,
}

impl Cloudflare {
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        record: &str,
    ) -> Result<serde_json::Value, AcmeError> {
        let url = format!("{}{path}", self.api);
        let failed = |detail: String| AcmeError::DnsUpdate {
            server: self.api.clone(),
            name: record.to_string(),
            detail,
        };
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token.expose()))
            .header("content-type", "application/json")
            .body(instant_acme::BodyWrapper::from(bytes))
            .map_err(|e| failed(format!("building the request for {url}: {e}")))?;
        let mut res = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| failed(format!("{url} did not answer within 30 s")))?
            .map_err(|e| failed(format!("{url}: {e}")))?;
        let status = res.parts.status;
        let text = res
            .body
            .into_bytes()
            .await
            .map_err(|e| failed(format!("reading the answer of {url}: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        if status.is_success() && v["success"] == true {
            return Ok(v);
        }
        let said: Vec<String> = v["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect();
        let hint = match status.as_u16() {
            401 | 403 => "; the token was refused: it needs Zone.DNS Edit on the zone",
            _ => "",
        };
        Err(failed(format!(
            "HTTP {status}: {}{hint}",
            if said.is_empty() {
                "no error message".to_string()
            } else {
                said.join("; ")
            }
        )))
    }

    /// The zone holding `identifier`: the one named, else the longest parent Cloudflare has.
    async fn zone_for(&self, identifier: &str) -> Result<Zone, AcmeError> {
        if let Some(z) = self.found.lock().expect("zone lock").clone() {
            return Ok(z);
        }
        let identifier = identifier.trim_end_matches('.');
        let candidates: Vec<String> = match &self.zone {
            Some(z) => vec![z.trim_end_matches('.').to_string()],
            None => {
                let labels: Vec<&str> = identifier.split('.').collect();
                (0..labels.len().saturating_sub(1))
                    .map(|i| labels[i..].join("."))
                    .collect()
            }
        };
        let record = record_name(identifier);
        for name in &candidates {
            let v = self
                .call(
                    http::Method::GET,
                    &format!("/zones?name={name}"),
                    None,
                    &record,
                )
                .await?;
            if let Some(z) = v["result"].as_array().and_then(|a| a.first()) {
                let zone = Zone {
                    id: z["id"].as_str().unwrap_or_default().to_string(),
                    name: name.clone(),
                    name_servers: z["name_servers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect(),
                };
                if zone.id.is_empty() {
                    continue;
                }
                *self.found.lock().expect("zone lock") = Some(zone.clone());
                return Ok(zone);
            }
        }
        Err(AcmeError::DnsUpdate {
            server: self.api.clone(),
            name: record,
            detail: format!(
                "the token sees no zone among {}; check the token's zone and --dns-zone",
                candidates.join(", ")
            ),
        })
    }

    async fn create(&self, zone: &Zone, name: &str, value: &str) -> Result<String, AcmeError> {
        let body = serde_json::json!({
            "type": "TXT",
            "name": name.trim_end_matches('.'),
            "content": value,
            "ttl": TXT_TTL,
        });
        let v = self
            .call(
                http::Method::POST,
                &format!("/zones/{}/dns_records", zone.id),
                Some(body),
                name,
            )
            .await?;
        tracing::info!(record = %name, zone = %zone.name, "challenge record created at Cloudflare");
        Ok(v["result"]["id"].as_str().unwrap_or_default().to_string())
    }

    async fn delete(&self, name: &str, id: &str) -> Result<(), AcmeError> {
        let zone = self.found.lock().expect("zone lock").clone();
        let Some(zone) = zone else { return Ok(()) };
        self.call(
            http::Method::DELETE,
            &format!("/zones/{}/dns_records/{id}", zone.id),
            None,
            name,
        )
        .await
        .map(drop)
    }
}

async fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<std::process::Output, AcmeError> {
    let program = PathBuf::from(cmd.as_std().get_program());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let io = |source| AcmeError::Io {
        path: program.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(io)?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).await.map_err(io)?;
        drop(pipe);
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(out) => out.map_err(io),
        Err(_) => Err(AcmeError::Io {
            path: program.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 60 s"),
        }),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A secret file must exist and be readable by its owner alone.
fn check_secret_file(path: &Path, flag: &str, hint: &str) -> Result<(), AcmeError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| AcmeError::Usage(format!("{flag} {}: {e}; {hint}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(AcmeError::Usage(format!(
            "{flag} {} is readable by others; it is a secret: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    std::fs::File::open(path)
        .map_err(|e| AcmeError::Usage(format!("{flag} {}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_and_without_ports() {
        assert_eq!(
            split_server("ns1.example.com").unwrap(),
            ("ns1.example.com".into(), 53)
        );
        assert_eq!(
            split_server("127.0.0.1:5353").unwrap(),
            ("127.0.0.1".into(), 5353)
        );
        assert_eq!(split_server("[::1]:5353").unwrap(), ("::1".into(), 5353));
        assert_eq!(
            split_server("2001:db8::1").unwrap(),
            ("2001:db8::1".into(), 53)
        );
        for bad in ["", "ns1:", "ns1:0", "ns1:x", "bad name:53", "[::1"] {
            assert!(split_server(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(
            &key,
            "key \"k\" { algorithm hmac-sha256; secret \"AA==\"; };\n",
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let hint = "made with tsig-keygen";
        let err = check_secret_file(&key, "--dns-key-file", hint).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_secret_file(&key, "--dns-key-file", hint).unwrap();
        let missing =
            check_secret_file(&dir.path().join("none"), "--dns-key-file", hint).unwrap_err();
        assert!(missing.to_string().contains("tsig-keygen"), "{missing}");
    }

    #[test]
    fn record_names_are_absolute() {
        assert_eq!(
            record_name("db.example.com"),
            "_acme-challenge.db.example.com."
        );
        assert_eq!(
            record_name("db.example.com."),
            "_acme-challenge.db.example.com."
        );
    }
}
