//! The step kinds. Each has a `check` that says what would change (with a unified diff for
//! files) without changing anything, and an `apply` that makes it so and returns the handlers to
//! notify and the things it created for the manifest. The runner applies a step only when its
//! check found something, so a converged host runs no apply at all.

mod archive;
pub(crate) mod cluster;
mod database;
mod files;
mod release;
mod render;
mod services;

use anyhow::Result;

use super::{
    context::Cx,
    manifest::{Manifest, Record},
    playbook::{Handler, Step},
};

/// What a check found: nothing (ok), or the changes an apply would make.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub changes: Vec<String>,
    pub diffs: Vec<String>,
}

impl Plan {
    pub fn is_ok(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn change(&mut self, what: impl Into<String>) {
        self.changes.push(what.into());
    }
}

/// What an apply did besides its own change.
#[derive(Clone, Debug, Default)]
pub struct Effects {
    pub notify: Vec<Handler>,
    pub records: Vec<Record>,
}

/// The units a step touches itself, whose pending handlers must run before it.
pub fn implicit_needs(step: &Step) -> Vec<String> {
    match &step.systemd {
        Some(s) => vec![s.unit.clone()],
        None => Vec::new(),
    }
}

pub fn check(step: &Step, cx: &mut Cx, manifest: &Manifest) -> Result<Plan> {
    let _ = manifest;
    if let Some(s) = &step.apt {
        services::apt_check(s, cx)
    } else if let Some(s) = &step.user {
        services::user_check(s, cx)
    } else if let Some(s) = &step.dir {
        files::dir_check(s, cx)
    } else if let Some(s) = &step.file {
        files::file_check(s, cx)
    } else if step.render.is_some() {
        render::check(cx)
    } else if let Some(s) = &step.systemd {
        services::systemd_check(s, cx)
    } else if let Some(s) = &step.command {
        services::command_check(s, cx)
    } else if let Some(s) = &step.sql {
        cluster::on_standby_wait_for_primary(cx, &format!("{:?}", step.name), |cx| {
            database::sql_check(s, cx)
        })
    } else if let Some(s) = &step.secret {
        files::secret_check(s, cx)
    } else if step.tls.is_some() {
        database::tls_check(cx)
    } else if step.control_db.is_some() {
        cluster::on_standby_wait(
            cx,
            "the control database",
            &mut database::control_db_check,
            database::control_db_primary_work,
        )
    } else if step.api_key.is_some() {
        cluster::on_standby_wait_for_primary(cx, "the first admin API key", database::api_key_check)
    } else if step.cluster_secrets.is_some() {
        cluster::secrets_check(cx)
    } else if step.etcd_tls.is_some() {
        cluster::etcd_tls_check(cx)
    } else if step.etcd_quorum.is_some() {
        cluster::etcd_quorum_check(cx)
    } else if step.patroni_ready.is_some() {
        cluster::patroni_ready_check(cx)
    } else if step.patroni_config.is_some() {
        cluster::patroni_config_check(cx)
    } else if step.archive.is_some() {
        archive::check(cx)
    } else if step.docs.is_some() {
        files::docs_check(cx)
    } else {
        anyhow::bail!("step {:?} has no action", step.name)
    }
}

pub fn apply(step: &Step, cx: &mut Cx, manifest: &Manifest, plan: &Plan) -> Result<Effects> {
    let mut effects = if let Some(s) = &step.apt {
        services::apt_apply(s, cx)?
    } else if let Some(s) = &step.user {
        services::user_apply(s, cx)?
    } else if let Some(s) = &step.dir {
        files::dir_apply(s, cx)?
    } else if let Some(s) = &step.file {
        files::file_apply(s, cx, manifest)?
    } else if step.render.is_some() {
        render::apply(cx, manifest)?
    } else if let Some(s) = &step.systemd {
        services::systemd_apply(s, cx)?
    } else if let Some(s) = &step.command {
        services::command_apply(s, cx)?
    } else if let Some(s) = &step.sql {
        database::sql_apply(s, cx)?
    } else if let Some(s) = &step.secret {
        files::secret_apply(s, cx)?
    } else if step.tls.is_some() {
        database::tls_apply(cx, manifest)?
    } else if step.control_db.is_some() {
        database::control_db_apply(cx, plan)?
    } else if let Some(s) = &step.api_key {
        database::api_key_apply(s, cx)?
    } else if step.cluster_secrets.is_some() {
        cluster::secrets_apply(cx, manifest)?
    } else if step.etcd_tls.is_some() {
        cluster::etcd_tls_apply(cx, manifest)?
    } else if step.etcd_quorum.is_some() {
        cluster::etcd_quorum_apply(cx)?
    } else if step.patroni_ready.is_some() {
        cluster::patroni_ready_apply(cx)?
    } else if step.patroni_config.is_some() {
        cluster::patroni_config_apply(cx)?
    } else if step.archive.is_some() {
        archive::apply(cx, manifest)?
    } else if step.docs.is_some() {
        files::docs_apply(cx, manifest)?
    } else {
        anyhow::bail!("step {:?} has no action", step.name)
    };
    effects.notify.extend(step.notify.iter().cloned());
    Ok(effects)
}

pub(crate) use files::install_file;
pub use render::ETCD_UNIT;
