//! A pure model of first-match pg_hba evaluation, as PostgreSQL and PgBouncer do it. Tests use it
//! to state the policy as behaviour ("the superuser over TCP is refused") rather than as text, and
//! the API can use it to explain why an address is or is not let in.

use std::net::IpAddr;

use super::{ConnKind, HbaAddress, HbaMethod, HbaName, HbaRule};

/// A connection attempt, as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub database: String,
    pub user: String,
    /// Roles the user is a member of (for `+group` entries).
    pub user_groups: Vec<String>,
    /// `None` for the local socket.
    pub addr: Option<IpAddr>,
    pub tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The first matching rule asks for this method.
    Accept(HbaMethod),
    /// The first matching rule is `reject`.
    Reject,
    /// No rule matched; servers refuse the connection too, but the policy should never rely on it.
    NoMatch,
}

/// The decision of the first rule that matches `client`.
pub fn decide(rules: &[HbaRule], client: &Client) -> Decision {
    match rules.iter().find(|r| matches(r, client)) {
        None => Decision::NoMatch,
        Some(r) if r.method == HbaMethod::Reject => Decision::Reject,
        Some(r) => Decision::Accept(r.method.clone()),
    }
}

fn matches(rule: &HbaRule, c: &Client) -> bool {
    let transport = match (rule.kind, c.addr) {
        (ConnKind::Local, addr) => addr.is_none(),
        (_, None) => false,
        (ConnKind::Host, Some(_)) => true,
        (ConnKind::HostSsl, Some(_)) => c.tls,
        (ConnKind::HostNoSsl, Some(_)) => !c.tls,
    };
    let address = match (rule.address, c.addr) {
        (None, _) | (_, None) => true,
        (Some(HbaAddress::All), Some(_)) => true,
        (Some(HbaAddress::Net(net)), Some(ip)) => net.contains(ip),
    };
    transport
        && address
        && rule.databases.iter().any(|d| match d {
            HbaName::All => true,
            HbaName::SameUser => c.database == c.user,
            HbaName::Name(n) => *n == c.database,
            HbaName::Group(_) => false,
            // The evaluator decides ordinary sessions; no replication connection is one.
            HbaName::Replication => false,
        })
        && rule.users.iter().any(|u| match u {
            HbaName::All => true,
            HbaName::SameUser | HbaName::Replication => false,
            HbaName::Name(n) => *n == c.user,
            HbaName::Group(g) => c.user_groups.iter().any(|m| m == g),
        })
}
