//! The PostgreSQL release check the `render` step makes before any service starts: a cluster
//! node refuses a release that can acknowledge commits without its synchronous standby right
//! after a start (see [`crate::pg::release`]); a single host has no standby to wait for, so it
//! is only told to upgrade.

use anyhow::{Result, bail};

use crate::{
    install::{context::Cx, playbook::Role},
    pg::{binaries::PgBinaries, release::Release},
};

/// What to say about `release` on a host of `role`: `Err` refuses the install, `Ok(Some)` is a
/// warning, `Ok(None)` nothing.
pub fn verdict(release: Release, role: Role) -> Result<Option<String>> {
    let Some(fixed) = release.sync_wait_fixed_in() else {
        return Ok(None);
    };
    let upgrade = format!(
        "upgrade to PostgreSQL {fixed} or later (apt-get update && apt-get install --only-upgrade postgresql-{})",
        release.major
    );
    match role {
        Role::Node => bail!(
            "PostgreSQL {release} can acknowledge commits without waiting for the synchronous standby \
             right after it starts (fixed in {fixed}): a failover then loses commits clients were told \
             were safe. On a cluster pgaas refuses it: {upgrade}, then run `pgaas install` again"
        ),
        Role::Single => Ok(Some(format!(
            "PostgreSQL {release} has a fault fixed in {fixed} (commits acknowledged without waiting \
             for a synchronous standby right after a start); a single host has no standby, but {upgrade} \
             before making it part of a cluster"
        ))),
        Role::Witness => Ok(None),
    }
}

/// The release the installed binaries report; `None` when they are not installed yet (a dry
/// run on a fresh host) or do not say.
fn installed(cx: &Cx) -> Option<Release> {
    let bin = PgBinaries::find(Some(cx.vars.pg_version)).ok()?;
    let argv = [
        bin.tool("postgres").display().to_string(),
        "--version".into(),
    ];
    let out = cx.system.run(&argv, &[]).ok()?;
    Release::parse(&out.stdout)
}

pub fn check(cx: &Cx) -> Result<()> {
    let role = Role::of(&cx.settings);
    if role == Role::Witness {
        return Ok(());
    }
    if let Some(warning) = installed(cx)
        .map(|r| verdict(r, role))
        .transpose()?
        .flatten()
    {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_node_refuses_a_release_without_the_sync_wait_fix_and_a_single_host_warns() {
        let old = Release::parse("postgres (PostgreSQL) 16.8").unwrap();
        let e = verdict(old, Role::Node).unwrap_err().to_string();
        assert!(
            e.contains("PostgreSQL 16.8") && e.contains("upgrade to PostgreSQL 16.9 or later"),
            "{e}"
        );
        assert!(e.contains("postgresql-16"), "{e}");
        let w = verdict(old, Role::Single).unwrap().unwrap();
        assert!(w.contains("16.9"), "{w}");
        for fine in ["15.18", "17.5"] {
            let r = Release::parse(&format!("postgres (PostgreSQL) {fine}")).unwrap();
            assert!(verdict(r, Role::Node).unwrap().is_none(), "{fine}");
            assert!(verdict(r, Role::Single).unwrap().is_none(), "{fine}");
        }
    }
}
