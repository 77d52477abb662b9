//! Per-tenant work locks, in two layers.
//!
//! A gate in this process: changes to one tenant queue here, holding no database connection,
//! and give up with a retryable error after [`GATE_WAIT`]. However many requests arrive for one
//! tenant, it holds at most one of the API's connections, so it cannot starve the others.
//!
//! A session-level advisory lock, held on a connection of its own while a create, delete or
//! allow-list change is under way, so the reconciler (possibly in another process) never
//! mistakes a live request for a crash and changes to one tenant never interleave.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgConnection;

use super::{TenantError, TenantService};
use crate::model::TenantId;

/// How long a change waits for the tenant's previous change before answering "busy".
pub(super) const GATE_WAIT: Duration = Duration::from_secs(5);

/// One async mutex per tenant with a change queued or running.
#[derive(Default)]
pub(crate) struct Gates {
    map: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one change to a tenant runs in this process.
pub(super) struct Gate {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Gates {
    fn entry(&self, id: TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Forget tenants nobody waits for, so the map stays as small as the work in flight.
        if map.len() > 256 {
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(id).or_default().clone()
    }
}

impl TenantService {
    /// Wait (without a connection) until no other change to `id` runs in this process.
    pub(super) async fn gate(&self, id: TenantId) -> Result<Gate, TenantError> {
        let mutex = self.gates.entry(id);
        match tokio::time::timeout(GATE_WAIT, mutex.lock_owned()).await {
            Ok(guard) => Ok(Gate { _guard: guard }),
            Err(_) => Err(TenantError::Busy(format!(
                "another change to database {id} is still running; try again in a moment"
            ))),
        }
    }
}

/// A session-level advisory lock on one tenant, held on a connection of its own while a create
/// or delete is under way. Dropped without `release` (a panic, a cancelled request), the
/// connection is closed instead of returned to the pool, which releases the lock too.
pub(super) struct WorkLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
    _gate: Option<Gate>,
}

pub(super) fn lock_key(id: TenantId) -> i64 {
    let b = id.as_uuid().as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl TenantService {
    /// The gate, then a connection, then the advisory lock (which waits only for another
    /// process, up to the session's `lock_timeout`).
    pub(super) async fn work_lock(&self, id: TenantId) -> Result<WorkLock, TenantError> {
        let gate = self.gate(id).await?;
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(id);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(WorkLock {
            conn: Some(conn),
            key,
            _gate: Some(gate),
        })
    }

    /// `None` when another session is working on the tenant right now.
    pub(super) async fn try_work_lock(
        &self,
        id: TenantId,
    ) -> Result<Option<WorkLock>, TenantError> {
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(id);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then_some(WorkLock {
            conn: Some(conn),
            key,
            _gate: None,
        }))
    }
}

impl WorkLock {
    /// The locked connection, for the statements of the work it guards.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a held lock has its connection")
    }

    pub(super) async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for WorkLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
