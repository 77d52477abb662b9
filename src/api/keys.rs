//! `/api/keys`: API key management, `admin` scope only. A new key is shown once in the create
//! response; listings show the public prefix, never the key or its hash. Revocation keeps the row
//! (audit rows name it) and takes effect on the next request, since every request looks its key
//! up. Refuses to revoke the last live admin key, which would leave only the host's CLI able to
//! manage keys. Creation and revocation write audit rows in the same transaction, without the key.

use axum::{
    Json,
    extract::State,
    http::{Method, StatusCode},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ApiError, AppState,
    endpoint::{Doc, Endpoint, keyed},
    extract::{ApiJson, Caller, KeyPath},
};
use crate::{
    control_db::api_keys::{self, ApiKeyRow},
    model::Scope,
    tenant::audit,
};

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

const NAME_MAX_CHARS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateKey {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    expires_at: Option<String>,
}

/// A key as listed.
#[derive(Serialize)]
struct KeyView {
    id: uuid::Uuid,
    name: String,
    key_prefix: String,
    scopes: Vec<Scope>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for KeyView {
    fn from(r: ApiKeyRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            key_prefix: r.key_prefix,
            scopes: r.permissions.0,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

struct NewKey {
    name: String,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
}

fn validate(body: CreateKey) -> Result<NewKey, ApiError> {
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let chars = name.chars().count();
    if chars == 0 || chars > NAME_MAX_CHARS {
        return Err(ApiError::invalid(
            "name",
            format!("must be 1 to {NAME_MAX_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    let mut scopes = match body.scopes {
        None => vec![Scope::Read],
        Some(list) => list
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()?,
    };
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "give at least one of read, write, admin",
        ));
    }
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(s) => {
            let t = DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    ApiError::invalid(
                        "expiresAt",
                        "must be an RFC 3339 time such as 2030-01-31T12:00:00Z",
                    )
                })?
                .with_timezone(&Utc);
            if t <= Utc::now() {
                return Err(ApiError::invalid("expiresAt", "must be in the future"));
            }
            Some(t)
        }
    };
    Ok(NewKey {
        name,
        scopes,
        expires_at,
    })
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateKey>,
) -> Answer {
    let new = validate(body)?;
    let mut tx = state.pool.begin().await?;
    let (id, key) = api_keys::create_in(&mut tx, &new.name, &new.scopes, new.expires_at).await?;
    let details = json!({ "name": new.name, "scopes": new.scopes, "expires_at": new.expires_at });
    audit::record(
        &mut tx,
        &caller.audit(),
        "api_key.create",
        "api_key",
        Some(&id.to_string()),
        true,
        details,
    )
    .await?;
    let row = api_keys::get(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("new key vanished")))?;
    tx.commit().await?;
    let mut data = json!(KeyView::from(row));
    data["key"] = json!(key.expose());
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "success": true,
            "message": "API key created; it is shown only this once, so store it now",
            "data": data,
        })),
    ))
}

async fn list(State(state): State<AppState>) -> Answer {
    let rows: Vec<KeyView> = api_keys::list(&state.pool)
        .await?
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "count": rows.len(), "data": rows })),
    ))
}

async fn revoke(State(state): State<AppState>, caller: Caller, KeyPath(id): KeyPath) -> Answer {
    let not_found = || ApiError::NotFound(format!("API key {id} not found"));
    let mut tx = state.pool.begin().await?;
    let admins = api_keys::lock_live_admin_ids(&mut tx).await?;
    let row = api_keys::get(&mut tx, id).await?.ok_or_else(not_found)?;
    if row.revoked_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "API key {id} is already revoked"
        )));
    }
    // The bootstrap key from settings is not counted: it may be removed from the file any day.
    if admins == [id] {
        return Err(ApiError::Conflict(
            "This is the last live admin key; create another admin key before revoking it".into(),
        ));
    }
    if !api_keys::revoke(&mut tx, id).await? {
        return Err(not_found());
    }
    let details = json!({ "name": row.name });
    audit::record(
        &mut tx,
        &caller.audit(),
        "api_key.revoke",
        "api_key",
        Some(&id.to_string()),
        true,
        details,
    )
    .await?;
    tx.commit().await?;
    // In force at once in this process; other API processes trust a key for a second at most.
    state.keys.clear();
    Ok((
        StatusCode::OK,
        Json(json!({ "success": true, "message": "API key revoked" })),
    ))
}

pub fn endpoints() -> Vec<Endpoint> {
    let tag = "keys";
    vec![
        keyed(
            Method::POST,
            "/api/keys",
            create,
            Doc {
                operation_id: "createApiKey",
                tag,
                summary: "Issue an API key; it is shown once, in this response.",
                body: Some("CreateApiKeyRequest"),
                ok: (201, "ApiKeyCreated"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::GET,
            "/api/keys",
            list,
            Doc {
                operation_id: "listApiKeys",
                tag,
                summary: "Every key, revoked and expired ones included; never the key itself.",
                ok: (200, "ApiKeyList"),
                ..Doc::DEFAULT
            },
        ),
        keyed(
            Method::DELETE,
            "/api/keys/{id}",
            revoke,
            Doc {
                operation_id: "revokeApiKey",
                tag,
                summary: "Revoke a key; requests with it are refused from now on.",
                path_id: Some("The key's id (a UUID)."),
                ok: (200, "Message"),
                errors: &[409],
                ..Doc::DEFAULT
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: Option<&str>, scopes: Option<&[&str]>, expires: Option<&str>) -> CreateKey {
        CreateKey {
            name: name.map(String::from),
            scopes: scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            expires_at: expires.map(String::from),
        }
    }

    #[test]
    fn defaults_to_read_and_dedups_scopes() {
        assert_eq!(
            validate(body(Some("ci"), None, None)).unwrap().scopes,
            vec![Scope::Read]
        );
        let k = validate(body(
            Some(" ci "),
            Some(&["write", "read", "write"]),
            Some("2999-01-01T00:00:00Z"),
        ))
        .unwrap();
        assert_eq!(k.scopes, vec![Scope::Read, Scope::Write]);
        assert_eq!(k.name, "ci");
    }

    #[test]
    fn refuses_bad_names_scopes_and_expiries() {
        for (b, field) in [
            (body(None, None, None), "name"),
            (body(Some("  "), None, None), "name"),
            (body(Some(&"x".repeat(101)), None, None), "name"),
            (body(Some("a\nb"), None, None), "name"),
            (body(Some("ci"), Some(&[]), None), "scopes"),
            (body(Some("ci"), Some(&["root"]), None), "scope"),
            (body(Some("ci"), None, Some("tomorrow")), "expiresAt"),
            (
                body(Some("ci"), None, Some("2001-01-01T00:00:00Z")),
                "expiresAt",
            ),
        ] {
            match validate(b) {
                Err(ApiError::Invalid(v)) => assert_eq!(v.field, field),
                Err(e) => panic!("{field}: {e:?}"),
                Ok(_) => panic!("{field}: accepted"),
            }
        }
    }
}
