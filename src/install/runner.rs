//! Running a playbook: for each step, check; when something differs, apply (or, in a dry run,
//! print what would change with diffs); print progress as it goes (`[ 7/23] name ... changed`);
//! stop at the first failure with the step's name and the reason; end with a summary. Handlers
//! (daemon-reload, reload, restart) queued by changed steps run once: before the first step that
//! needs their unit, or at the end of the play. A restart subsumes a reload of the same unit.
//! Everything created is recorded in the manifest after each step.

use std::io::Write;

use anyhow::Result;

use super::{
    context::Cx,
    manifest::Manifest,
    playbook::{Handler, HandlerAction, Step},
    steps,
};

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub ok: usize,
    pub changed: usize,
    /// Names of the steps that changed (or would change, in a dry run).
    pub changed_steps: Vec<String>,
    /// The failed step and why.
    pub failed: Option<(String, String)>,
    pub handlers_run: Vec<String>,
}

impl Report {
    pub fn success(&self) -> bool {
        self.failed.is_none()
    }
}

struct Handlers {
    pending: Vec<Handler>,
}

impl Handlers {
    fn add(&mut self, h: Handler) {
        if !self.pending.contains(&h) {
            self.pending.push(h);
        }
    }

    /// Take the handlers to run now, in order: daemon-reload first, a restart instead of a reload.
    fn take(&mut self, units: Option<&[String]>) -> Vec<Handler> {
        let wanted = |h: &Handler| match units {
            None => true,
            Some(u) => h.action == HandlerAction::DaemonReload || u.contains(&h.unit),
        };
        let (mut now, later): (Vec<Handler>, Vec<Handler>) =
            self.pending.drain(..).partition(|h| wanted(h));
        self.pending = later;
        if now.iter().all(|h| h.action == HandlerAction::DaemonReload) && units.is_some() {
            // Nothing for these units: leave a lone daemon-reload for later.
            self.pending.append(&mut now);
            return Vec::new();
        }
        let restarts: Vec<String> = now
            .iter()
            .filter(|h| h.action == HandlerAction::Restart)
            .map(|h| h.unit.clone())
            .collect();
        now.retain(|h| !(h.action == HandlerAction::Reload && restarts.contains(&h.unit)));
        now.sort_by_key(|h| h.action != HandlerAction::DaemonReload);
        now
    }
}

fn run_handler(cx: &Cx, h: &Handler) -> Result<()> {
    let argv: Vec<String> = match h.action {
        HandlerAction::DaemonReload => vec!["systemctl".into(), "daemon-reload".into()],
        // A reload of a stopped unit is nothing to do: it reads its files when it starts.
        HandlerAction::Reload => vec![
            "systemctl".into(),
            "try-reload-or-restart".into(),
            h.unit.clone(),
        ],
        // etcd reports ready only once a majority of its members run, which the other
        // nodes' installs bring: the etcd_quorum step waits for that, with progress.
        HandlerAction::Restart if h.unit == super::steps::ETCD_UNIT => vec![
            "systemctl".into(),
            "restart".into(),
            "--no-block".into(),
            h.unit.clone(),
        ],
        HandlerAction::Restart => vec!["systemctl".into(), "restart".into(), h.unit.clone()],
    };
    let out = cx.system.run(&argv, &[])?;
    if !out.success {
        anyhow::bail!(
            "`{}` failed: {}; see `journalctl -u {} -n 50`",
            argv.join(" "),
            out.detail(),
            h.unit
        );
    }
    Ok(())
}

fn flush(
    cx: &Cx,
    handlers: &mut Handlers,
    units: Option<&[String]>,
    report: &mut Report,
    out: &mut dyn Write,
) -> Result<()> {
    for h in handlers.take(units) {
        let _ = write!(out, "[handler] {h} ... ");
        let _ = out.flush();
        run_handler(cx, &h).inspect_err(|_| {
            let _ = writeln!(out, "FAILED");
        })?;
        let _ = writeln!(out, "done");
        report.handlers_run.push(h.to_string());
    }
    Ok(())
}

/// Run `steps` against the host in `cx`. In a dry run nothing is applied and no handler runs.
pub fn run(steps: &[Step], cx: &mut Cx, dry_run: bool, out: &mut dyn Write) -> Report {
    let manifest_path = Manifest::path(&cx.settings.paths.state_dir, cx.root.as_deref());
    let mut report = Report::default();
    let mut manifest = match Manifest::load(&manifest_path) {
        Ok(m) => m,
        Err(e) => {
            report.failed = Some(("reading the install manifest".into(), format!("{e:#}")));
            return report;
        }
    };
    manifest.pg_version = Some(cx.vars.pg_version);
    let mut handlers = Handlers {
        pending: Vec::new(),
    };
    // A single host, a cluster's PostgreSQL node, or its witness: each runs its own steps.
    let role = super::playbook::Role::of(&cx.settings);
    let steps: Vec<&Step> = steps.iter().filter(|s| s.roles.contains(&role)).collect();
    let total = steps.len();
    let width = total.to_string().len();
    for (i, step) in steps.into_iter().enumerate() {
        let _ = write!(out, "[{:>width$}/{total}] {} ... ", i + 1, step.name);
        let _ = out.flush();
        let result = (|| -> Result<bool> {
            if !dry_run {
                let mut needs = step.needs.clone();
                needs.extend(steps::implicit_needs(step));
                if !needs.is_empty() {
                    let _ = writeln!(out);
                    flush(cx, &mut handlers, Some(&needs), &mut report, out)?;
                    let _ = write!(out, "[{:>width$}/{total}] {} ... ", i + 1, step.name);
                }
            }
            let plan = steps::check(step, cx, &manifest)?;
            if plan.is_ok() {
                return Ok(false);
            }
            if dry_run {
                let _ = writeln!(out, "would change");
                for c in &plan.changes {
                    let _ = writeln!(out, "        - {c}");
                }
                for d in &plan.diffs {
                    for line in d.lines() {
                        let _ = writeln!(out, "        {line}");
                    }
                }
                return Ok(true);
            }
            let effects = steps::apply(step, cx, &manifest, &plan)?;
            for r in effects.records {
                manifest.add(r);
            }
            for h in effects.notify {
                handlers.add(h);
            }
            manifest.save(
                &cx.path(
                    &cx.settings
                        .paths
                        .state_dir
                        .join(super::manifest::MANIFEST_NAME),
                ),
            )?;
            let _ = writeln!(out, "changed");
            Ok(true)
        })();
        match result {
            Ok(false) => {
                report.ok += 1;
                let _ = writeln!(out, "ok");
            }
            Ok(true) => {
                report.changed += 1;
                report.changed_steps.push(step.name.clone());
            }
            Err(e) => {
                let _ = writeln!(out, "FAILED\n        {e:#}");
                report.failed = Some((step.name.clone(), format!("{e:#}")));
                break;
            }
        }
    }
    if report.failed.is_none() && !dry_run {
        if let Err(e) = flush(cx, &mut handlers, None, &mut report, out) {
            report.failed = Some(("handlers".into(), format!("{e:#}")));
        }
    }
    let failed = usize::from(report.failed.is_some());
    let verb = if dry_run { "would change" } else { "changed" };
    let _ = writeln!(
        out,
        "\nsummary: ok={} {verb}={} failed={failed}",
        report.ok, report.changed
    );
    if let Some((name, reason)) = &report.failed {
        let _ = writeln!(out, "stopped at {name:?}: {reason}");
        if !handlers.pending.is_empty() {
            let names: Vec<String> = handlers.pending.iter().map(|h| h.to_string()).collect();
            let _ = writeln!(out, "not run yet: {}", names.join(", "));
        }
        let _ = writeln!(
            out,
            "Fix the cause, then run `pgaas install` again: it continues from where the host is."
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_run_once_daemon_reload_first_restart_over_reload() {
        let mut h = Handlers {
            pending: Vec::new(),
        };
        h.add(Handler::new(HandlerAction::Reload, "postgresql@15-main"));
        h.add(Handler::daemon_reload());
        h.add(Handler::new(HandlerAction::Restart, "pgaas-api.service"));
        h.add(Handler::new(HandlerAction::Restart, "postgresql@15-main"));
        h.add(Handler::new(HandlerAction::Reload, "postgresql@15-main"));
        let now = h.take(Some(&["postgresql@15-main".to_string()]));
        assert_eq!(
            now,
            vec![
                Handler::daemon_reload(),
                Handler::new(HandlerAction::Restart, "postgresql@15-main")
            ]
        );
        assert_eq!(
            h.pending,
            vec![Handler::new(HandlerAction::Restart, "pgaas-api.service")]
        );
        assert!(h.take(Some(&["pgbouncer".to_string()])).is_empty());
        assert_eq!(h.take(None).len(), 1);
    }
}
