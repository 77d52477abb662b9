//! `dir`, `file` and `secret` steps, and [`install_file`], which every step that writes a file
//! shares: compare content, owner and mode; write atomically; back up a file that was there
//! before the installer (so uninstall can put it back) and record what was made.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

use super::{Effects, Plan};
use crate::install::{
    context::{Attrs, Cx, diff, read_opt, write_atomic},
    manifest::{Manifest, Record},
    playbook::{DirStep, FileStep, SecretStep, parse_mode},
};

fn attrs(owner: &str, group: &str, mode: &str) -> Result<Attrs> {
    Ok(Attrs::new(
        owner,
        group,
        parse_mode(mode).map_err(anyhow::Error::msg)?,
    ))
}

pub fn dir_check(s: &DirStep, cx: &mut Cx) -> Result<Plan> {
    let want = attrs(&s.owner, &s.group, &s.mode)?;
    let path = cx.path(&s.path);
    let mut plan = Plan::default();
    match fs::metadata(&path) {
        Ok(m) if !m.is_dir() => bail!(
            "{} exists and is not a directory; move it away",
            s.path.display()
        ),
        Ok(_) => {
            for d in cx.attr_drift(&path, &want) {
                plan.change(format!("{}: {d}", s.path.display()));
            }
        }
        Err(_) => plan.change(format!(
            "create {} ({}:{} {:04o})",
            s.path.display(),
            want.owner,
            want.group,
            want.mode
        )),
    }
    Ok(plan)
}

pub fn dir_apply(s: &DirStep, cx: &mut Cx) -> Result<Effects> {
    let want = attrs(&s.owner, &s.group, &s.mode)?;
    let path = cx.path(&s.path);
    let mut effects = Effects::default();
    if !path.exists() {
        // Record each missing ancestor too, so uninstall can remove what it made (when empty).
        let mut missing = Vec::new();
        let mut p = Some(s.path.as_path());
        while let Some(d) = p {
            if cx.path(d).exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        effects
            .records
            .extend(missing.into_iter().rev().map(|path| Record::Dir { path }));
    }
    cx.set_attrs(&path, &want)?;
    Ok(effects)
}

/// Compare `bytes` with `host_path` (under the root): the changes and, for text, a diff.
pub fn file_plan(
    cx: &Cx,
    host_path: &Path,
    bytes: &[u8],
    want: &Attrs,
    text: bool,
) -> Result<Plan> {
    let path = cx.path(host_path);
    let mut plan = Plan::default();
    let old = read_opt(&path)?;
    match &old {
        None => plan.change(format!("create {}", host_path.display())),
        Some(o) if o != bytes => plan.change(format!("update {}", host_path.display())),
        Some(_) => {}
    }
    if old.as_deref() != Some(bytes) && text {
        let old_text = old
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        plan.diffs
            .push(diff(&old_text, &String::from_utf8_lossy(bytes), host_path));
    }
    if old.is_some() {
        for d in cx.attr_drift(&path, want) {
            plan.change(format!("{}: {d}", host_path.display()));
        }
    }
    Ok(plan)
}

/// Write one file if it differs (content, owner or mode). A file that existed before and is not
/// the installer's is copied to `<state_dir>/install-backup/<path>` first.
pub(crate) fn install_file(
    cx: &Cx,
    manifest: &Manifest,
    host_path: &Path,
    bytes: &[u8],
    want: &Attrs,
) -> Result<(bool, Vec<Record>)> {
    let path = cx.path(host_path);
    let old = read_opt(&path)?;
    let mut records = Vec::new();
    let content_changed = old.as_deref() != Some(bytes);
    if content_changed {
        match &old {
            Some(original) if !manifest.owns_path(host_path) => {
                let backup = cx
                    .settings
                    .paths
                    .state_dir
                    .join("install-backup")
                    .join(host_path.strip_prefix("/").unwrap_or(host_path));
                write_atomic(&cx.path(&backup), original, 0o600)?;
                let meta = std::fs::metadata(&path).ok();
                records.push(Record::Replaced {
                    path: host_path.to_path_buf(),
                    backup,
                    mode: meta.as_ref().map(|m| {
                        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
                    }),
                    owner: meta.as_ref().map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.uid(), m.gid())
                    }),
                });
            }
            Some(_) => {}
            None => records.push(Record::File {
                path: host_path.to_path_buf(),
            }),
        }
        write_atomic(&path, bytes, want.mode)?;
    }
    let drift = !cx.attr_drift(&path, want).is_empty();
    if drift {
        cx.set_attrs(&path, want)?;
    }
    Ok((content_changed || drift, records))
}

fn file_bytes(s: &FileStep, cx: &Cx) -> Result<(Vec<u8>, bool)> {
    match (&s.content, s.copy_of_running_binary) {
        (Some(c), false) => Ok((c.clone().into_bytes(), true)),
        (None, true) => {
            let exe = cx.system.current_exe()?;
            Ok((
                fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?,
                false,
            ))
        }
        _ => bail!(
            "file {}: give exactly one of content or copy_of_running_binary",
            s.path.display()
        ),
    }
}

pub fn file_check(s: &FileStep, cx: &mut Cx) -> Result<Plan> {
    let (bytes, text) = file_bytes(s, cx)?;
    let mut plan = file_plan(
        cx,
        &s.path,
        &bytes,
        &attrs(&s.owner, &s.group, &s.mode)?,
        text,
    )?;
    if !text && !plan.is_ok() {
        plan.change("install a copy of the running pgaas binary".to_string());
    }
    Ok(plan)
}

pub fn file_apply(s: &FileStep, cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let (bytes, _) = file_bytes(s, cx)?;
    let (_, records) = install_file(
        cx,
        manifest,
        &s.path,
        &bytes,
        &attrs(&s.owner, &s.group, &s.mode)?,
    )?;
    Ok(Effects {
        records,
        ..Effects::default()
    })
}

const SECRET: fn() -> Attrs = || Attrs::new("root", "root", 0o600);

pub fn secret_check(s: &SecretStep, cx: &mut Cx) -> Result<Plan> {
    let path = cx.path(&s.path);
    let mut plan = Plan::default();
    match read_opt(&path)? {
        Some(b) if !b.is_empty() => {
            for d in cx.attr_drift(&path, &SECRET()) {
                plan.change(format!("{}: {d}", s.path.display()));
            }
        }
        _ => plan.change(format!(
            "generate a random password into {} (root-only, never shown)",
            s.path.display()
        )),
    }
    Ok(plan)
}

pub fn secret_apply(s: &SecretStep, cx: &mut Cx) -> Result<Effects> {
    let path = cx.path(&s.path);
    let mut effects = Effects::default();
    // Never regenerated once present: the role's verifier was made from it.
    if read_opt(&path)?.is_none_or(|b| b.is_empty()) {
        let password = crate::model::TenantPassword::generate();
        write_atomic(&path, password.expose().as_bytes(), 0o600)?;
        effects.records.push(Record::File {
            path: s.path.clone(),
        });
    }
    cx.set_attrs(&path, &SECRET())?;
    Ok(effects)
}

/// Man pages and completions: one line for the set (37 pages would drown the plan), naming what
/// is new or different. Nothing to do when the pgaas package put them in place, or when no
/// directory for them exists on this host.
pub fn docs_check(cx: &mut Cx) -> Result<Plan> {
    let want = Attrs::new("root", "root", 0o644);
    let mut plan = Plan::default();
    let Some(docs) = &cx.docs else {
        return Ok(plan);
    };
    let mut stale = 0;
    for (path, bytes) in docs {
        if !file_plan(cx, path, bytes, &want, false)?.is_ok() {
            stale += 1;
        }
    }
    if stale > 0 {
        plan.change(format!(
            "install {stale} of {} man pages and shell completions",
            docs.len()
        ));
    }
    Ok(plan)
}

pub fn docs_apply(cx: &mut Cx, manifest: &Manifest) -> Result<Effects> {
    let want = Attrs::new("root", "root", 0o644);
    let mut effects = Effects::default();
    for (path, bytes) in cx.docs.iter().flatten() {
        let (_, records) = install_file(cx, manifest, path, bytes, &want)?;
        effects.records.extend(records);
    }
    Ok(effects)
}
