//! `GET /metrics` in the Prometheus text format (0.0.4), from a small hand-rolled registry: request
//! counts and latency histograms by method, matched route template and status; refused
//! authentications by reason; and per-tenant size and connections from the stats collector's last
//! snapshot, when one is attached. Route labels are templates (`/api/databases/{id}`), never raw
//! paths, so a client cannot grow the label set by inventing URLs.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{AppState, auth::Refusal};

/// Upper bounds in seconds. Most requests are single indexed queries (milliseconds); creating or
/// deleting a tenant runs DDL and can take a second or more.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// (method, route template, status)
type RequestKey = (String, String, u16);

pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, Histogram>>,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    pub fn auth_refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        if let Ok(mut map) = self.requests.lock() {
            map.entry((method.to_owned(), route.to_owned(), status))
                .or_default()
                .observe(secs);
        }
    }

    /// The exposition text; `tenants` maps database names to (size bytes, active connections).
    pub fn render(&self, tenants: &BTreeMap<String, (i64, i64)>) -> String {
        let mut out = String::new();
        // Copied out so rendering does not hold the lock that every request takes.
        let requests: Vec<(RequestKey, Histogram)> = self
            .requests
            .lock()
            .map(|m| m.iter().map(|(k, h)| (k.clone(), h.clone())).collect())
            .unwrap_or_default();

        out.push_str("# HELP pgaas_http_requests_total HTTP requests answered, by method, route template and status.\n");
        out.push_str("# TYPE pgaas_http_requests_total counter\n");
        for ((method, route, status), h) in &requests {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            let _ = writeln!(out, "pgaas_http_requests_total{{{labels}}} {}", h.count);
        }

        out.push_str("# HELP pgaas_http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE pgaas_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in &requests {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "pgaas_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "pgaas_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "pgaas_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "pgaas_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }

        out.push_str("# HELP pgaas_auth_refused_total Requests refused by authentication (401) or scope (403), by reason.\n");
        out.push_str("# TYPE pgaas_auth_refused_total counter\n");
        for (why, n) in Refusal::ALL.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "pgaas_auth_refused_total{{reason=\"{}\"}} {}",
                why.as_str(),
                n.load(Ordering::Relaxed)
            );
        }

        out.push_str("# HELP pgaas_tenant_size_bytes Size of each active tenant database at the last collection.\n");
        out.push_str("# TYPE pgaas_tenant_size_bytes gauge\n");
        for (db, (size, _)) in tenants {
            let _ = writeln!(
                out,
                "pgaas_tenant_size_bytes{{database=\"{}\"}} {size}",
                escape(db)
            );
        }
        out.push_str("# HELP pgaas_tenant_active_connections Backends connected to each active tenant database at the last collection.\n");
        out.push_str("# TYPE pgaas_tenant_active_connections gauge\n");
        for (db, (_, conns)) in tenants {
            let _ = writeln!(
                out,
                "pgaas_tenant_active_connections{{database=\"{}\"}} {conns}",
                escape(db)
            );
        }
        out
    }
}

/// Label values escape backslash, double quote and newline (the exposition format's rule).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The layer recording every answered request, refused ones included.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    state.metrics.observe(
        &method,
        &route,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}

pub async fn handler(State(state): State<AppState>) -> impl IntoResponse {
    let tenants: BTreeMap<String, (i64, i64)> = state
        .stats
        .as_ref()
        .map(|c| c.snapshot().per_tenant.into_iter().collect())
        .unwrap_or_default();
    let mut out = state.metrics.render(&tenants);
    // What the host has promised, and where each tenant stands against its storage quota.
    if let Ok(b) = state.tenants.budget().await {
        for (name, help, v) in [
            (
                "pgaas_connection_budget_capacity",
                "Sessions the server can give tenants at once.",
                b.capacity,
            ),
            (
                "pgaas_connection_budget_total",
                "What the tenants' maxConnections may add up to (capacity times the overcommit).",
                b.total,
            ),
            (
                "pgaas_connection_budget_committed",
                "What the tenants' maxConnections add up to.",
                b.committed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
    if let Ok(quotas) = state.tenants.quotas().await {
        out.push_str(
            "# HELP pgaas_tenant_quota_bytes Storage quota of each tenant database (0: none).\n",
        );
        out.push_str("# TYPE pgaas_tenant_quota_bytes gauge\n");
        for (db, max_mb, _) in &quotas {
            let _ = writeln!(
                out,
                "pgaas_tenant_quota_bytes{{database=\"{}\"}} {}",
                escape(db),
                max_mb.saturating_mul(1024 * 1024)
            );
        }
        out.push_str("# HELP pgaas_tenant_quota_state 1 for the state each tenant database is in against its quota.\n");
        out.push_str("# TYPE pgaas_tenant_quota_state gauge\n");
        for (db, _, state) in &quotas {
            let _ = writeln!(
                out,
                "pgaas_tenant_quota_state{{database=\"{}\",state=\"{state}\"}} 1",
                escape(db)
            );
        }
    }
    if state.settings.archive.enabled {
        if let Ok(mut conn) = state.pool.acquire().await {
            if let Ok(st) = crate::archive::status::read(&mut conn, &state.settings).await {
                archive_metrics(&mut out, &st);
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// Continuous archiving: the archiver's lag and health, each repository's newest backup, the
/// last drill.
fn archive_metrics(out: &mut String, st: &crate::archive::status::BackupStatus) {
    let now = chrono::Utc::now();
    let gauge = |out: &mut String, name: &str, help: &str, v: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    if let Some(a) = &st.archiver {
        gauge(
            out,
            "pgaas_archive_lag_seconds",
            "Seconds since the last WAL segment was archived (what a dead host would lose).",
            a.lag_seconds.map_or("NaN".into(), |l| format!("{l:.0}")),
        );
        gauge(
            out,
            "pgaas_archive_failing",
            "1 when the last attempt to archive a WAL segment failed.",
            u8::from(a.failing).to_string(),
        );
        gauge(
            out,
            "pgaas_archive_failed_count",
            "WAL archiving failures since the statistics were reset.",
            a.failed_count.to_string(),
        );
    }
    out.push_str("# HELP pgaas_backup_last_age_seconds Age of the newest physical backup in each repository.\n");
    out.push_str("# TYPE pgaas_backup_last_age_seconds gauge\n");
    for r in &st.repositories {
        let age = r
            .last_backup
            .map_or("NaN".into(), |t| (now - t).num_seconds().to_string());
        let _ = writeln!(
            out,
            "pgaas_backup_last_age_seconds{{repository=\"{}\"}} {age}",
            r.repo
        );
    }
    if let Some(d) = &st.last_drill {
        gauge(
            out,
            "pgaas_backup_drill_success",
            "1 when the last restore drill passed, 0 when it failed.",
            u8::from(d.succeeded == Some(true)).to_string(),
        );
        gauge(
            out,
            "pgaas_backup_drill_timestamp_seconds",
            "When the last restore drill started (Unix time).",
            d.started_at.timestamp().to_string(),
        );
    }
    gauge(
        out,
        "pgaas_backup_problems",
        "Problems `pgaas backup status` reports (0 when all is well).",
        st.problems.len().to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_cumulative_buckets_and_refusals() {
        let m = Metrics::default();
        m.observe("GET", "/api/databases/{id}", 200, 0.003);
        m.observe("GET", "/api/databases/{id}", 200, 0.2);
        m.observe("POST", "/api/databases", 401, 0.0005);
        m.auth_refused(Refusal::WrongSecret);
        let tenants = BTreeMap::from([("tenant_ab".to_owned(), (8192, 2))]);
        let text = m.render(&tenants);
        let route = r#"method="GET",route="/api/databases/{id}",status="200""#;
        assert!(
            text.contains(&format!("pgaas_http_requests_total{{{route}}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "pgaas_http_request_duration_seconds_bucket{{{route},le=\"0.001\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "pgaas_http_request_duration_seconds_bucket{{{route},le=\"0.005\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "pgaas_http_request_duration_seconds_bucket{{{route},le=\"0.25\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "pgaas_http_request_duration_seconds_bucket{{{route},le=\"+Inf\"}} 2\n"
        )));
        assert!(text.contains("pgaas_auth_refused_total{reason=\"wrong_secret\"} 1\n"));
        assert!(text.contains("pgaas_auth_refused_total{reason=\"missing\"} 0\n"));
        assert!(text.contains("pgaas_tenant_size_bytes{database=\"tenant_ab\"} 8192\n"));
        assert!(text.contains("pgaas_tenant_active_connections{database=\"tenant_ab\"} 2\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
