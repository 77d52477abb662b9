//! Facts and wiring for an installed host: which PostgreSQL the distribution ships, and the hba
//! applier the installer uses there (the API uses `HbaApplier::for_host`).

use std::{path::Path, sync::Arc};

use crate::{
    hba::apply::{HbaApplier, PoolerReload},
    settings::Settings,
};

/// The distribution's PostgreSQL major version, from os-release: Debian 12 ships 15, Ubuntu
/// 24.04 16, Debian 13 17.
pub fn distribution_pg_version(os_release: &str) -> Option<u32> {
    let field = |key: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    match (field("ID")?.as_str(), field("VERSION_ID")?.as_str()) {
        ("debian", "12") => Some(15),
        ("debian", "13") => Some(17),
        ("ubuntu", "24.04") => Some(16),
        _ => None,
    }
}

/// The applier for this host's files (under `root` when given). `pooler` reloads PgBouncer
/// after its files change; the installer passes `None` and reloads it with systemctl instead.
pub fn hba_applier(
    settings: &Settings,
    pg_version: u32,
    root: Option<&Path>,
    pooler: Option<Arc<dyn PoolerReload>>,
) -> HbaApplier {
    HbaApplier::new(settings, pg_version, root, pooler, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_versions() {
        let d12 = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(distribution_pg_version(d12), Some(15));
        assert_eq!(
            distribution_pg_version("ID=debian\nVERSION_ID=\"13\"\n"),
            Some(17)
        );
        assert_eq!(
            distribution_pg_version("ID=ubuntu\nVERSION_ID=\"24.04\"\n"),
            Some(16)
        );
        assert_eq!(distribution_pg_version("ID=fedora\nVERSION_ID=40\n"), None);
    }

    #[test]
    fn the_api_writes_the_hba_family_in_its_own_directories() {
        let mut s = Settings::default();
        s.postgres.version = Some(17);
        s.postgres.hba_dir = Some("/etc/pgaas/postgresql".into());
        s.pgbouncer.auth_dir = Some("/etc/pgaas/pgbouncer".into());
        let a = crate::hba::apply::HbaApplier::for_host(&s, 17);
        assert_eq!(
            a.pg_hba_file,
            Path::new("/etc/pgaas/postgresql/pg_hba.conf")
        );
        let files = a.pgbouncer.unwrap();
        assert_eq!(
            files.userlist_file,
            Path::new("/etc/pgaas/pgbouncer/userlist.txt")
        );
        assert_eq!(a.base.pooler_admins, ["postgres", "pgaas"]);
    }
}
