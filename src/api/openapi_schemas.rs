//! The JSON Schemas of the OpenAPI document: request bodies (closed: unknown fields are a 400) and
//! response envelopes in the original's field names. Kept beside the handlers' types; the
//! integration tests check the served bodies against the same field names.

use serde_json::{Value, json};

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn fmt(format: &str) -> Value {
    json!({ "type": "string", "format": format })
}

fn nullable(format: &str) -> Value {
    json!({ "type": ["string", "null"], "format": format })
}

fn int() -> Value {
    json!({ "type": "integer" })
}

/// An object with these properties, the first `required` of them required.
fn object(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": props })
}

/// A request body: unknown fields are refused.
fn closed(required: &[&str], props: Value) -> Value {
    let mut o = object(required, props);
    o["additionalProperties"] = json!(false);
    o
}

fn envelope(data: Value, with_message: bool) -> Value {
    let mut props = json!({ "success": { "const": true }, "data": data });
    let mut req = vec!["success", "data"];
    if with_message {
        props["message"] = string();
        req.push("message");
    }
    object(&req, props)
}

fn list(item: &str, extra: Value) -> Value {
    let mut props = json!({
        "success": { "const": true },
        "count": { "type": "integer", "description": "All items matching the filters, not just this page." },
        "data": { "type": "array", "items": r(item) },
    });
    if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    object(&["success", "count", "data"], props)
}

fn quota_state() -> Value {
    json!({
        "enum": ["ok", "warning", "read_only", "blocked"],
        "description": "warning: past the warning share of the quota; read_only: past the quota, new sessions are read-only; blocked: past the quota and its grace, the database refuses connections until the quota is raised.",
    })
}

pub fn schemas() -> Value {
    let database = object(
        &[
            "id",
            "database_name",
            "username",
            "owner_email",
            "friendly_name",
            "max_connections",
            "max_size_mb",
            "quota_state",
            "status",
            "created_at",
            "updated_at",
        ],
        json!({
            "id": fmt("uuid"),
            "database_name": { "type": "string", "pattern": "^tenant_[0-9a-f]+$" },
            "username": { "type": "string", "pattern": "^(tenant|user)_[0-9a-f]+$",
                "description": "The database's own name; user_<hex> for databases made before roles were named after them." },
            "owner_email": fmt("email"),
            "friendly_name": string(),
            "max_connections": { "type": "integer", "minimum": 1 },
            "max_size_mb": { "type": "integer", "minimum": 0, "description": "Storage quota in MB; 0 = none." },
            "quota_state": quota_state(),
            "status": { "enum": ["provisioning", "active", "suspended", "deleting", "failed"] },
            "created_at": fmt("date-time"),
            "updated_at": fmt("date-time"),
        }),
    );
    let urls = json!({
        "connection_string": { "type": "string", "description": "postgresql://USER:PASS@HOST:PORT/DB?sslmode=require" },
        "DIRECT_URL": { "type": "string", "description": "The same as connection_string." },
        "DATABASE_URL": { "type": "string", "description": "Through PgBouncer; present only when the pooler runs." },
        "PRISMA_DATABASE_URL": { "type": "string", "description": "DATABASE_URL with what Prisma needs behind PgBouncer (pgbouncer=true in transaction or statement mode); not for libpq clients, which refuse unknown URL parameters." },
    });
    let mut with_password = object(
        &["password", "connection_string", "DIRECT_URL"],
        urls.clone(),
    );
    with_password["properties"]["password"] =
        json!({ "type": "string", "description": "Shown only in this response." });
    let api_key = object(
        &["id", "name", "key_prefix", "scopes", "created_at"],
        json!({
            "id": fmt("uuid"),
            "name": string(),
            "key_prefix": { "type": "string", "description": "The public part: keys read pgaas_<prefix>_<secret>." },
            "scopes": { "type": "array", "items": { "enum": ["read", "write", "admin"] } },
            "created_at": fmt("date-time"),
            "expires_at": nullable("date-time"),
            "last_used_at": nullable("date-time"),
            "revoked_at": nullable("date-time"),
        }),
    );
    let mut connection_strings = object(
        &[
            "database_id",
            "database_name",
            "username",
            "host",
            "port",
            "sslmode",
            "connection_string",
            "DIRECT_URL",
        ],
        urls,
    );
    if let Some(p) = connection_strings["properties"].as_object_mut() {
        p.insert("database_id".into(), fmt("uuid"));
        p.insert("database_name".into(), string());
        p.insert("username".into(), string());
        p.insert("host".into(), string());
        p.insert("port".into(), int());
        p.insert("sslmode".into(), json!({ "const": "require" }));
        p.insert("note".into(), string());
    }
    let stats = object(
        &[
            "database_id",
            "database_name",
            "size_bytes",
            "size_pretty",
            "active_connections",
            "max_connections",
            "max_size_mb",
            "quota_state",
        ],
        json!({
            "database_id": fmt("uuid"),
            "database_name": string(),
            "size_bytes": int(),
            "size_pretty": { "type": "string", "examples": ["7.2 MB"] },
            "active_connections": int(),
            "max_connections": int(),
            "max_size_mb": int(),
            "quota_used_percent": { "type": "number", "description": "Absent without a quota." },
            "quota_state": quota_state(),
            "warning": { "type": "string", "description": "What the tenant should know about its quota, when anything." },
        }),
    );
    let audit_entry = object(
        &[
            "id",
            "action",
            "resource_type",
            "outcome",
            "details",
            "created_at",
        ],
        json!({
            "id": int(),
            "api_key_id": nullable("uuid"),
            "action": { "type": "string", "examples": ["database.create"] },
            "resource_type": string(),
            "resource_id": { "type": ["string", "null"] },
            "ip_address": { "type": ["string", "null"] },
            "outcome": { "enum": ["success", "failure"] },
            "details": { "type": "object" },
            "created_at": fmt("date-time"),
        }),
    );
    let mut key_created = api_key.clone();
    key_created["required"] = json!(["id", "name", "key_prefix", "scopes", "created_at", "key"]);
    key_created["properties"]["key"] =
        json!({ "type": "string", "description": "The key; shown only in this response." });

    let mut all = json!({
        "Error": object(&["success", "error", "message", "code"], json!({
            "success": { "const": false },
            "error": { "type": "string", "examples": ["Unauthorized"] },
            "message": { "type": "string", "examples": ["Invalid or missing API key"] },
            "code": { "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed",
                "conflict", "validation_failed", "payload_too_large", "unavailable", "internal"] },
            "field": { "type": "string", "description": "With validation_failed: the field at fault." },
        })),
        "Message": object(&["success", "message"], json!({ "success": { "const": true }, "message": string() })),
        "Health": object(&["status", "timestamp", "environment"], json!({
            "status": { "enum": ["ok", "degraded"] },
            "timestamp": fmt("date-time"),
            "environment": string(),
            "control_db": { "enum": ["reachable", "unreachable"] },
            "version": string(),
            "cluster": object(&["name", "node", "role"], json!({
                "name": string(),
                "node": string(),
                "role": { "enum": ["primary", "standby", "unknown"], "description": "What this node's database is; writes go to the primary." },
            })),
        })),
        "Database": database,
        "DatabaseWithPassword": { "allOf": [r("Database"), with_password] },
        "DatabaseCreated": envelope(r("DatabaseWithPassword"), true),
        "DatabaseEnvelope": envelope(r("Database"), false),
        "DatabaseUpdated": envelope(r("Database"), true),
        "DatabaseList": list("Database", json!({
            "next_cursor": { "type": "string", "description": "Pass as cursor for the next page; absent on the last." },
        })),
        "DatabaseStats": stats,
        "DatabaseStatsEnvelope": envelope(r("DatabaseStats"), false),
        "ConnectionStrings": connection_strings,
        "ConnectionStringsEnvelope": envelope(r("ConnectionStrings"), false),
        "ShadowDatabase": object(&["database_id", "database_name", "SHADOW_DATABASE_URL"], json!({
            "database_id": fmt("uuid"),
            "database_name": { "type": "string", "description": "<database_name>_shadow" },
            "SHADOW_DATABASE_URL": { "type": "string", "description": "Direct (not pooled), the tenant's user, the password masked: the tenant's password works here too." },
        })),
        "ShadowDatabaseEnvelope": envelope(r("ShadowDatabase"), true),
        "AuditEntry": audit_entry,
        "AuditLogList": list("AuditEntry", json!({})),
        "ApiKey": api_key,
        "ApiKeyWithSecret": key_created,
        "ApiKeyCreated": envelope(r("ApiKeyWithSecret"), true),
        "ApiKeyList": list("ApiKey", json!({})),
        "WhitelistEntry": object(&["id", "database_id", "ip_address", "added_at"], json!({
            "id": fmt("uuid"),
            "database_id": fmt("uuid"),
            "ip_address": { "type": "string", "description": "Normalised network: 203.0.113.5/32, 192.168.1.0/24, 2001:db8::/32.",
                "examples": ["203.0.113.5/32"] },
            "description": { "type": ["string", "null"] },
            "added_at": fmt("date-time"),
        })),
        "WhitelistEntryCreated": envelope(r("WhitelistEntry"), true),
        "WhitelistList": list("WhitelistEntry", json!({})),
        "AddWhitelistRequest": closed(&["ipAddress"], json!({
            "ipAddress": { "type": "string", "description": "An IPv4/IPv6 address (one host) or network with zero host bits; not /0.",
                "examples": ["203.0.113.5", "192.168.1.0/24"] },
            "description": { "type": "string", "maxLength": 200 },
        })),
        "CreateDatabaseRequest": closed(&["friendlyName", "ownerEmail"], json!({
            "friendlyName": { "type": "string", "minLength": 1, "maxLength": 100 },
            "ownerEmail": fmt("email"),
            "maxConnections": { "type": "integer", "minimum": 1, "description": "Default 20; at most the configured cap (100 by default), and within the host's connection budget (409 with what is left otherwise)." },
            "maxSizeMb": { "type": "integer", "minimum": 1, "description": "Storage quota in MB; default from the settings (1024)." },
        })),
        "UpdateDatabaseRequest": {
            "type": "object",
            "additionalProperties": false,
            "minProperties": 1,
            "properties": {
                "friendlyName": { "type": "string", "minLength": 1, "maxLength": 100 },
                "ownerEmail": fmt("email"),
                "maxConnections": { "type": "integer", "minimum": 1 },
                "maxSizeMb": { "type": "integer", "minimum": 1 },
            },
        },
        // Backups (api/backups.rs).
        "Backup": backup_schema(),
        "BackupCreated": envelope(r("Backup"), true),
        "BackupList": list("Backup", json!({ "point_in_time": point_in_time_schema() })),
        "CreateApiKeyRequest": closed(&["name"], json!({
            "name": { "type": "string", "minLength": 1, "maxLength": 100 },
            "scopes": { "type": "array", "items": { "enum": ["read", "write", "admin"] }, "minItems": 1,
                "description": "Default [\"read\"]." },
            "expiresAt": fmt("date-time"),
        })),
    });
    if let (Some(a), Value::Object(more)) = (all.as_object_mut(), restore_schemas()) {
        a.extend(more);
    }
    all
}

/// One backup file, as `api/backups.rs` serialises `backup::BackupFile`.
fn backup_schema() -> Value {
    object(
        &[
            "database",
            "file_name",
            "created_at",
            "size_bytes",
            "checksum",
        ],
        json!({
            "database": { "type": "string", "description": "The database the dump is of." },
            "file_name": { "type": "string", "examples": ["20250102T020000.123Z.dump"],
                "description": "pg_dump custom format; the UTC time it was taken." },
            "created_at": fmt("date-time"),
            "size_bytes": int(),
            "sha256": { "type": ["string", "null"], "description": "From the sidecar file (sha256sum format)." },
            "checksum": { "enum": ["verified", "unchecked", "mismatch", "missing"],
                "description": "verified: recomputed and matching; unchecked: sidecar present, not re-read; missing: no sidecar." },
        }),
    )
}

/// One restore job, as `archive::jobs::RestoreJob` serialises.
fn restore_job_schema() -> Value {
    object(
        &[
            "id",
            "database_id",
            "database_name",
            "target_time",
            "status",
            "created_at",
        ],
        json!({
            "id": fmt("uuid"),
            "database_id": nullable("uuid"),
            "database_name": string(),
            "target_time": fmt("date-time"),
            "into_name": { "type": ["string", "null"], "description": "The new database; null when restored in place." },
            "status": { "enum": ["queued", "running", "succeeded", "failed"] },
            "step": { "type": ["string", "null"], "description": "What it is doing, or did last." },
            "error": { "type": ["string", "null"] },
            "kept_as": { "type": ["string", "null"], "description": "In place: the name the replaced data is kept under." },
            "created_at": fmt("date-time"),
            "finished_at": nullable("date-time"),
        }),
    )
}

/// Continuous archiving as `GET .../backups` reports it for one database.
fn point_in_time_schema() -> Value {
    let mut o = object(
        &["enabled", "repositories"],
        json!({
            "enabled": { "type": "boolean" },
            "earliest": nullable("date-time"),
            "latest": nullable("date-time"),
            "archive_lag_seconds": { "type": ["number", "null"], "description": "Seconds since the last WAL segment was archived." },
            "archiving_failing": { "type": "boolean" },
            "last_backup": nullable("date-time"),
            "repositories": { "type": "array", "items": { "type": "object" } },
        }),
    );
    o["description"] =
        json!("Continuous archiving for this database (absent when it is off on the host).");
    o
}

/// Point-in-time restores (api/restores.rs).
fn restore_schemas() -> Value {
    json!({
        "RestoreRequest": closed(&["targetTime"], json!({
            "targetTime": { "type": "string", "format": "date-time", "examples": ["2026-11-29T14:32:00Z"],
                "description": "The instant to restore to, with its offset (RFC 3339, or '2026-11-29 14:32:00+00'); within the recoverable window (GET .../backups, point_in_time)." },
            "into": { "type": "string", "maxLength": 63, "examples": ["before_drop"],
                "description": "Restore into a new database: a suffix (giving <database>_<suffix>) or that full name. Absent: restore in place." },
        })),
        "RestoreJob": restore_job_schema(),
        "RestoreJobAccepted": envelope(r("RestoreJob"), true),
        "RestoreJobEnvelope": envelope(r("RestoreJob"), false),
        "RestoreJobList": list("RestoreJob", json!({})),
    })
}
