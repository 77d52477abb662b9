//! `apt`, `user`, `systemd` and `command` steps: everything done by running a program. apt
//! refreshes its lists only when something must be installed and never upgrades; optional
//! packages (pgvector, PostGIS) are installed when the distribution has a candidate and are
//! otherwise reported once and not counted as a change.

use anyhow::{Result, bail};

use super::{Effects, Plan};
use crate::install::{
    context::Cx,
    manifest::Record,
    playbook::{AptStep, CommandStep, SystemdStep, UnitState, UserStep},
};
use crate::system::CmdOutput;

const APT_ENV: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive")];

fn run(cx: &Cx, argv: &[&str]) -> Result<CmdOutput> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    Ok(cx.system.run(&argv, APT_ENV)?)
}

fn run_ok(cx: &Cx, argv: &[&str], what: &str) -> Result<CmdOutput> {
    let out = run(cx, argv)?;
    if !out.success {
        bail!("{what} failed (`{}`): {}", argv.join(" "), out.detail());
    }
    Ok(out)
}

fn installed(cx: &Cx, pkg: &str) -> Result<bool> {
    let out = run(cx, &["dpkg-query", "-W", "-f=${Status}", pkg])?;
    Ok(out.success && out.stdout.contains("install ok installed"))
}

fn candidate(cx: &Cx, pkg: &str) -> Result<bool> {
    let out = run(cx, &["apt-cache", "policy", pkg])?;
    Ok(out.success
        && out
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("Candidate:") && !l.contains("(none)")))
}

fn missing(cx: &Cx, pkgs: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in pkgs {
        if !installed(cx, p)? {
            out.push(p.clone());
        }
    }
    Ok(out)
}

pub fn apt_check(s: &AptStep, cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    let required = missing(cx, &s.packages)?;
    if !required.is_empty() {
        plan.change(format!("apt-get install {}", required.join(" ")));
    }
    let mut optional = Vec::new();
    for p in missing(cx, &s.if_available)? {
        if candidate(cx, &p)? {
            optional.push(p);
        } else if !required.is_empty() {
            // The lists may be stale before the first install; the apply looks again.
            plan.change(format!("{p} if the distribution has it"));
        }
    }
    if !optional.is_empty() {
        plan.change(format!("apt-get install {}", optional.join(" ")));
    }
    Ok(plan)
}

pub fn apt_apply(s: &AptStep, cx: &mut Cx) -> Result<Effects> {
    let required = missing(cx, &s.packages)?;
    if !required.is_empty() {
        run_ok(
            cx,
            &["apt-get", "update", "-q"],
            "refreshing the package lists",
        )?;
    }
    let mut wanted = required;
    for p in missing(cx, &s.if_available)? {
        if candidate(cx, &p)? {
            wanted.push(p);
        } else {
            eprintln!("        note: {p} is not available on this distribution; skipped");
        }
    }
    let mut effects = Effects::default();
    if wanted.is_empty() {
        return Ok(effects);
    }
    let mut argv = vec![
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ];
    argv.extend(wanted.iter().map(String::as_str));
    run_ok(cx, &argv, "installing packages").map_err(|e| {
        e.context("check the network and `apt-get update`, then run pgaas install again")
    })?;
    effects
        .records
        .extend(wanted.into_iter().map(|name| Record::Package { name }));
    Ok(effects)
}

pub fn user_check(s: &UserStep, cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    if cx.system.user(&s.name).is_none() {
        plan.change(format!(
            "create system user {} (home {}, shell {})",
            s.name,
            s.home.display(),
            s.shell.display()
        ));
    }
    Ok(plan)
}

pub fn user_apply(s: &UserStep, cx: &mut Cx) -> Result<Effects> {
    let home = s.home.to_string_lossy();
    let shell = s.shell.to_string_lossy();
    run_ok(
        cx,
        &[
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            &home,
            "--shell",
            &shell,
            "--comment",
            "pgaas API",
            &s.name,
        ],
        "creating the system user",
    )?;
    Ok(Effects {
        records: vec![Record::User {
            name: s.name.clone(),
        }],
        ..Effects::default()
    })
}

fn require_systemd(cx: &Cx) -> Result<()> {
    if !cx.system.systemd_running() {
        bail!(
            "this host does not run systemd (no /run/systemd/system); pgaas install manages its \
             services with systemctl, so run it on a systemd host (Debian 12/13, Ubuntu 24.04)"
        );
    }
    Ok(())
}

fn is(cx: &Cx, verb: &str, unit: &str, word: &str) -> Result<bool> {
    let out = run(cx, &["systemctl", verb, unit])?;
    Ok(out.success && out.stdout.trim() == word)
}

/// Whether a unit runs. A unit that a handler just reloaded may still say `reloading` for a
/// moment (PgBouncer is Type=notify): that is running, not a change to make.
fn is_running(cx: &Cx, unit: &str) -> Result<bool> {
    for _ in 0..50 {
        let out = run(cx, &["systemctl", "is-active", unit])?;
        match out.stdout.trim() {
            "reloading" | "activating" => std::thread::sleep(std::time::Duration::from_millis(100)),
            state => return Ok(state == "active"),
        }
    }
    Ok(false)
}

pub fn systemd_check(s: &SystemdStep, cx: &mut Cx) -> Result<Plan> {
    require_systemd(cx)?;
    let mut plan = Plan::default();
    if s.enabled && !is(cx, "is-enabled", &s.unit, "enabled")? {
        plan.change(format!("enable {}", s.unit));
    }
    let active = is_running(cx, &s.unit)?;
    match s.state {
        UnitState::Started if !active => plan.change(format!("start {}", s.unit)),
        UnitState::Stopped if active => plan.change(format!("stop {}", s.unit)),
        _ => {}
    }
    Ok(plan)
}

pub fn systemd_apply(s: &SystemdStep, cx: &mut Cx) -> Result<Effects> {
    let mut effects = Effects::default();
    if s.enabled && !is(cx, "is-enabled", &s.unit, "enabled")? {
        run_ok(cx, &["systemctl", "enable", &s.unit], "enabling the unit")?;
        // Only units this run enabled are disabled again by uninstall.
        effects.records.push(Record::Unit {
            name: s.unit.clone(),
        });
    }
    let active = is(cx, "is-active", &s.unit, "active")?;
    match s.state {
        UnitState::Started if !active && s.no_block => {
            run_ok(
                cx,
                &["systemctl", "start", "--no-block", &s.unit],
                "starting the unit",
            )?;
        }
        UnitState::Started if !active => {
            run_ok(cx, &["systemctl", "start", &s.unit], "starting the unit")
                .map_err(|e| e.context(format!("see `journalctl -u {} -n 50` for why", s.unit)))?;
        }
        UnitState::Stopped if active => {
            run_ok(cx, &["systemctl", "stop", &s.unit], "stopping the unit")?;
        }
        _ => {}
    }
    Ok(effects)
}

fn command_done(s: &CommandStep, cx: &Cx) -> Result<bool> {
    if let Some(p) = &s.creates {
        if cx.path(p).exists() {
            return Ok(true);
        }
    }
    if let Some(unless) = &s.unless {
        if cx.system.run(unless, &[])?.success {
            return Ok(true);
        }
    }
    if s.creates.is_none() && s.unless.is_none() {
        bail!(
            "command {:?} has neither `creates` nor `unless`, so it would run on every install",
            s.argv.join(" ")
        );
    }
    Ok(false)
}

pub fn command_check(s: &CommandStep, cx: &mut Cx) -> Result<Plan> {
    let mut plan = Plan::default();
    if !command_done(s, cx)? {
        plan.change(format!("run {}", s.argv.join(" ")));
    }
    Ok(plan)
}

pub fn command_apply(s: &CommandStep, cx: &mut Cx) -> Result<Effects> {
    let out = cx.system.run(&s.argv, &[])?;
    if !out.success {
        bail!("`{}` failed: {}", s.argv.join(" "), out.detail());
    }
    Ok(Effects::default())
}
