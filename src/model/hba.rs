//! The access rules as data: the policy they are compiled from (`hba::compile`), one typed
//! pg_hba line, and the errors a rule can carry. Rendering them into files is `render::hba`'s;
//! deciding which line matches a client is `hba::eval`'s.

use std::fmt;

use ipnetwork::IpNetwork;
use serde::Serialize;

/// What pgaas's access policy depends on. Built from settings and control-DB rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbaPolicy {
    /// The cluster superuser; it logs in only over the local socket, by peer.
    pub superuser: String,
    /// The API's database role; it reaches only the control DB, from this host.
    pub api_role: String,
    pub control_db: String,
    /// Every tenant role is a member of this group (e.g. `pgaas_tenants`).
    pub tenant_group: String,
    /// OS users mapped to the superuser by peer authentication (pg_ident map [`PEER_MAP`]).
    pub admin_os_users: Vec<String>,
    /// OS users let into PgBouncer's admin console by peer, under their own name: the
    /// superuser's, and the API's system user (which reloads PgBouncer through the console).
    pub pooler_admins: Vec<String>,
    /// The tenants that need lines of their own: those with an allow-list, and those whose role
    /// is not named after their database (made before that rule; `sameuser` cannot cover them).
    /// Every other tenant is admitted by the one `sameuser` rule.
    pub tenants: Vec<TenantAccess>,
    /// A cluster's nodes replicating from each other (`cluster.*`); `None` on a single host.
    pub replication: Option<ReplicationAccess>,
}

/// What the nodes of a cluster need from each other's PostgreSQL: the standby streams WAL with
/// one role, an old primary rejoining reads the new one with another (`pg_rewind`), both over TLS
/// with SCRAM and only from the nodes' own addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationAccess {
    pub role: String,
    pub rewind_role: String,
    /// Every PostgreSQL node's address (its own too, so every node renders the same file).
    pub peers: Vec<std::net::IpAddr>,
}

/// The rule lists of both servers, compiled from one policy (`hba::compile_all`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRules {
    pub postgres: Vec<HbaRule>,
    pub pgbouncer: Vec<HbaRule>,
}

/// One tenant's network access. An empty `allow` means any address (still TLS + SCRAM only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantAccess {
    pub database: String,
    pub role: String,
    /// Networks allowed to reach the tenant; host bits must be zero (`10.0.0.0/8`, not `10.1.2.3/8`).
    pub allow: Vec<IpNetwork>,
}

/// The connection type column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConnKind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

impl ConnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnKind::Local => "local",
            ConnKind::Host => "host",
            ConnKind::HostSsl => "hostssl",
            ConnKind::HostNoSsl => "hostnossl",
        }
    }
}

/// A database or user column entry. Typed rather than a string with a `+` convention so a role
/// literally named `all` or `+x` can never be mistaken for the keyword or a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HbaName {
    /// The `all` keyword.
    All,
    /// The `sameuser` keyword: the database whose name is the connecting role's (database
    /// column only; PostgreSQL and PgBouncer both have it).
    SameUser,
    /// Exactly this database or role.
    Name(String),
    /// Members of this role (`+group`); users column only.
    Group(String),
    /// The `replication` keyword: physical replication connections (database column only;
    /// `all` does not match them).
    Replication,
}

impl HbaName {
    pub fn name(n: impl Into<String>) -> Self {
        HbaName::Name(n.into())
    }

    pub fn group(n: impl Into<String>) -> Self {
        HbaName::Group(n.into())
    }
}

/// The address column (TCP rules only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaAddress {
    /// The `all` keyword: any IPv4 or IPv6 address.
    All,
    Net(IpNetwork),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HbaMethod {
    /// OS user from the socket peer, optionally through a pg_ident map.
    Peer {
        map: Option<String>,
    },
    ScramSha256,
    Reject,
}

impl fmt::Display for HbaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HbaMethod::Peer { map: None } => f.write_str("peer"),
            HbaMethod::Peer { map: Some(m) } => write!(f, "peer map={m}"),
            HbaMethod::ScramSha256 => f.write_str("scram-sha-256"),
            HbaMethod::Reject => f.write_str("reject"),
        }
    }
}

/// One pg_hba line. `address` is `None` exactly for [`ConnKind::Local`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbaRule {
    pub kind: ConnKind,
    pub databases: Vec<HbaName>,
    pub users: Vec<HbaName>,
    pub address: Option<HbaAddress>,
    pub method: HbaMethod,
    /// Why the rule is there; rendered as a comment above it.
    pub comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HbaError {
    #[error("{what} {value:?} cannot be written to {dialect}: {reason}")]
    Name {
        what: &'static str,
        value: String,
        dialect: &'static str,
        reason: &'static str,
    },
    #[error(
        "{network} has host bits set; write the network address ({normalised}) or a /32 or /128 for one host"
    )]
    HostBits {
        network: IpNetwork,
        normalised: IpNetwork,
    },
    #[error("{construct} cannot be expressed in {dialect}")]
    Unsupported {
        construct: String,
        dialect: &'static str,
    },
    #[error("rule {index}: {reason}")]
    Malformed { index: usize, reason: &'static str },
}

/// Refuse a CIDR with host bits set: PostgreSQL would accept `10.1.2.3/8` and silently mean
/// `10.0.0.0/8`, a much wider grant than the operator probably intended.
pub fn check_network(network: IpNetwork) -> Result<IpNetwork, HbaError> {
    let normalised = IpNetwork::new(network.network(), network.prefix())
        .expect("a prefix taken from a valid network stays valid");
    if normalised.ip() != network.ip() {
        return Err(HbaError::HostBits {
            network,
            normalised,
        });
    }
    Ok(network)
}
