//! API key authentication, as a layer on every keyed route. The key comes in `X-API-Key` or
//! `Authorization: Bearer`; a key of the issued shape is found by its public prefix and its
//! SHA-256 compared in constant time, then refused if revoked or expired, then checked against the
//! route's scope. The original's single `API_KEY` (settings `api.api_key`) is still accepted, as an
//! admin key with no row. Refusals are counted in metrics by reason and never written to the audit
//! log (a flood of bad keys must not become a flood of writes); the key itself is never logged.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{ApiError, AppState, extract::Caller};
use crate::{
    control_db::api_keys,
    model::{ApiKey, Scope},
};

/// How often `last_used_at` may be written per key: a timestamp accurate to the minute is all an
/// operator needs to spot stale keys, and a write per request would double the load of reads.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Why a request was refused; the label of `pgaas_auth_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    UnknownKey,
    WrongSecret,
    Revoked,
    Expired,
    Scope,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Self::Missing,
        Self::Malformed,
        Self::UnknownKey,
        Self::WrongSecret,
        Self::Revoked,
        Self::Expired,
        Self::Scope,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::WrongSecret => "wrong_secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Scope => "scope",
        }
    }
}

/// When each key's `last_used_at` was last written by this process.
#[derive(Default)]
pub struct Touches(Mutex<HashMap<Uuid, Instant>>);

impl Touches {
    /// Whether a write is due now; if so, records it as done.
    fn due(&self, id: Uuid) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        match map.get(&id) {
            Some(t) if now.duration_since(*t) < TOUCH_EVERY => false,
            _ => {
                map.insert(id, now);
                true
            }
        }
    }
}

/// How long a verified key is trusted without looking at its row again: a revocation (or an
/// expiry) reaches every API process within this time.
const TRUST_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Verified keys kept at most; past it the cache starts over (an attacker presenting many valid
/// keys only costs the lookups it would cost without the cache).
const CACHE_MAX: usize = 10_000;

/// Keys this process verified recently, by the SHA-256 of the key as presented: the hot path
/// costs neither a control-DB round trip nor a bcrypt verification. After [`TRUST_FOR`] the row
/// is read again (revoked? expired? a new secret?); bcrypt runs again only when its hash changed.
#[derive(Default)]
pub struct KeyCache(Mutex<HashMap<[u8; 32], Verified>>);

#[derive(Clone)]
struct Verified {
    key_id: Uuid,
    scopes: Vec<Scope>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    key_hash: Vec<u8>,
    checked: Instant,
}

impl KeyCache {
    fn get(&self, digest: &[u8; 32]) -> Option<Verified> {
        self.0.lock().ok()?.get(digest).cloned()
    }

    fn put(&self, digest: [u8; 32], v: Verified) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(digest, v);
        }
    }

    /// Forget every key (a revocation in this process takes effect at once).
    pub fn clear(&self) {
        if let Ok(mut map) = self.0.lock() {
            map.clear();
        }
    }
}

/// The key as presented, or why there is none usable.
fn presented(headers: &HeaderMap) -> Result<&str, Refusal> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().map(str::trim).map_err(|_| Refusal::Malformed);
    }
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(Refusal::Missing);
    };
    let v = v.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = v.split_once(' ').ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Malformed);
    }
    Ok(token.trim())
}

/// Equal in constant time whatever the lengths: both sides are hashed first.
fn bootstrap_matches(presented: &str, configured: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(configured.as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// Who holds this key, or why it is refused (`Err(None)`: the lookup itself failed).
async fn identify(
    state: &AppState,
    key: &str,
) -> Result<(Option<Uuid>, Vec<Scope>), Result<Refusal, ApiError>> {
    if key.is_empty() {
        return Err(Ok(Refusal::Missing));
    }
    let configured = state.settings.api.api_key.as_ref();
    if configured.is_some_and(|c| bootstrap_matches(key, c.expose())) {
        return Ok((None, vec![Scope::Admin]));
    }
    let (prefix, full) = ApiKey::parse_presented(key).ok_or(Ok(Refusal::Malformed))?;
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let cached = state.keys.get(&digest);
    if let Some(v) = &cached {
        if v.checked.elapsed() < TRUST_FOR && v.expires_at.is_none_or(|t| t > chrono::Utc::now()) {
            return Ok((Some(v.key_id), v.scopes.clone()));
        }
    }
    let stored = api_keys::find_by_prefix(&state.pool, prefix)
        .await
        .map_err(|e| Err(ApiError::Internal(e.into())))?
        .ok_or(Ok(Refusal::UnknownKey))?;
    // This very key matched this very hash before: no need to pay bcrypt again.
    let known = cached.is_some_and(|v| v.key_id == stored.id && v.key_hash == stored.key_hash);
    if !known && !ApiKey::verify(full, &stored.key_hash) {
        return Err(Ok(Refusal::WrongSecret));
    }
    if stored.revoked_at.is_some() {
        return Err(Ok(Refusal::Revoked));
    }
    if stored.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
        return Err(Ok(Refusal::Expired));
    }
    if state.touches.due(stored.id) {
        let pool = state.pool.clone();
        let id = stored.id;
        tokio::spawn(async move {
            if let Err(e) = api_keys::touch(&pool, id).await {
                tracing::warn!(key_id = %id, error = %e, "could not record the API key's last use");
            }
        });
    }
    state.keys.put(
        digest,
        Verified {
            key_id: stored.id,
            scopes: stored.permissions.0.clone(),
            expires_at: stored.expires_at,
            key_hash: stored.key_hash.clone(),
            checked: Instant::now(),
        },
    );
    Ok((Some(stored.id), stored.permissions.0))
}

/// The layer: `State` carries the route's required scope next to the app state.
pub async fn require(
    State((state, scope)): State<(AppState, Scope)>,
    mut req: Request,
    next: Next,
) -> Response {
    let refuse = |state: &AppState, why: Refusal| {
        state.metrics.auth_refused(why);
        ApiError::Unauthorized.into_response()
    };
    let key = match presented(req.headers()) {
        Ok(k) => k.to_owned(),
        Err(why) => return refuse(&state, why),
    };
    let (key_id, scopes) = match identify(&state, &key).await {
        Ok(found) => found,
        Err(Ok(why)) => return refuse(&state, why),
        Err(Err(e)) => return e.into_response(),
    };
    drop(key);
    if !Scope::any_allows(&scopes, scope) {
        state.metrics.auth_refused(Refusal::Scope);
        return ApiError::Forbidden(format!(
            "This API key lacks the '{scope}' scope this request needs"
        ))
        .into_response();
    }
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    req.extensions_mut().insert(Caller {
        key_id,
        scopes,
        client_ip,
    });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn key_is_read_from_either_header() {
        assert_eq!(presented(&headers(&[("x-api-key", "k1")])), Ok("k1"));
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer k2")])),
            Ok("k2")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "bearer  k3 ")])),
            Ok("k3")
        );
        assert_eq!(presented(&headers(&[])), Err(Refusal::Missing));
        assert_eq!(
            presented(&headers(&[("authorization", "Basic dXNlcjpwYXNz")])),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer")])),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn bootstrap_key_compares_whole_values() {
        assert!(bootstrap_matches("secret-one", "secret-one"));
        assert!(!bootstrap_matches("secret-on", "secret-one"));
        assert!(!bootstrap_matches("secret-one ", "secret-one"));
        assert!(!bootstrap_matches("", "secret-one"));
    }

    #[test]
    fn last_use_is_written_at_most_once_a_minute() {
        let t = Touches::default();
        let id = Uuid::new_v4();
        assert!(t.due(id));
        assert!(!t.due(id));
        assert!(t.due(Uuid::new_v4()));
    }
}
