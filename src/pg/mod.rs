//! Talking to PostgreSQL itself: finding its binaries, driving a cluster (local or
//! systemd-managed), the local CA for TLS, quoting, and SCRAM verifiers.

pub mod binaries;
pub mod cluster;
pub mod console;
pub mod pgbouncer;
pub mod quote;
pub mod release;
pub mod scram;
pub mod systemd_cluster;
pub mod tls;
pub mod userlist;
