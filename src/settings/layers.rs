//! The settings layers (file, `.env`, environment, flags) as YAML values, merged in precedence
//! order and deserialised once; each layer remembers where it came from so a problem can name the
//! file and line, or the variable, that caused it.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use yaml_serde::{Mapping, Value};

use super::{DEFAULT_CONFIG_FILE, LoadOptions, Settings, SettingsProblem};

/// Where a settings value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Defaults,
    File(PathBuf),
    /// An environment variable (or a `.env` line), by name.
    Env(String),
    /// A command-line flag, by its settings key.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Defaults => f.write_str("built-in defaults"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(key) => write!(f, "command-line flag for {key}"),
        }
    }
}

/// One layer: a YAML mapping plus, for files, the text it was parsed from (to find lines).
#[derive(Clone, Debug)]
pub struct Layer {
    pub source: Source,
    pub value: Value,
    pub text: Option<String>,
    /// For single-value layers (env, flags): the dotted key they set.
    pub key: Option<String>,
}

pub(super) struct Collected {
    pub layers: Vec<Layer>,
    pub problems: Vec<SettingsProblem>,
}

/// The original API's `.env` names and the settings key each sets.
const ORIGINAL_NAMES: &[(&str, &str)] = &[
    ("DB_HOST", "control_db.host"),
    ("DB_PORT", "control_db.port"),
    ("DB_USER", "control_db.user"),
    ("DB_PASSWORD", "control_db.password"),
    ("DB_PASSWORD_FILE", "control_db.password_file"),
    ("DB_NAME", "control_db.name"),
    ("DB_SSL", "control_db.ssl"),
    ("PORT", "api.listen"),
    ("API_KEY", "api.api_key"),
    ("API_KEY_FILE", "api.api_key_file"),
    ("PG_ADMIN_USER", "admin.user"),
    ("PG_ADMIN_PASSWORD", "admin.password"),
    ("PG_ADMIN_PASSWORD_FILE", "admin.password_file"),
    ("PUBLIC_HOST", "public_host"),
    ("NODE_ENV", "environment"),
];

/// `PGAAS_*` variables that are not settings (`PGAAS_BIN` names the binary `vm-tests/run` tests).
const NON_SETTING_VARS: &[&str] = &["PGAAS_CONFIG", "PGAAS_LOG", "PGAAS_BIN"];

/// Keys whose values stay strings even when they look like numbers or booleans.
fn is_string_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(
        last,
        "password" | "api_key" | "host" | "user" | "name" | "public_host" | "environment"
    ) || last.ends_with("_file")
        || last.ends_with("_dir")
}

pub(super) fn collect(options: &LoadOptions) -> Collected {
    let mut layers = Vec::new();
    let mut problems = Vec::new();

    let (path, required) = match &options.config_file {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => match yaml_serde::from_str::<Value>(&text) {
            Ok(Value::Null) => {}
            Ok(value @ Value::Mapping(_)) => layers.push(Layer {
                source: Source::File(path.clone()),
                value,
                text: Some(text),
                key: None,
            }),
            Ok(_) => problems.push(SettingsProblem {
                source: Source::File(path.clone()),
                line: Some(1),
                key: String::new(),
                message: "the settings file must be a YAML mapping (key: value lines)".into(),
            }),
            Err(e) => problems.push(SettingsProblem {
                source: Source::File(path.clone()),
                line: e.location().map(|l| l.line()),
                key: String::new(),
                message: format!("YAML syntax: {e}"),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
        Err(e) => problems.push(SettingsProblem {
            source: Source::File(path.clone()),
            line: None,
            key: String::new(),
            message: format!("cannot read the settings file: {e}"),
        }),
    }

    // `.env` first, so the real environment overrides it (as the original's dotenv did).
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(file) = &options.env_file {
        read_dotenv(&file.path, file.required, &mut env, &mut problems);
    }
    env.extend(options.env.iter().cloned());

    for (name, key) in ORIGINAL_NAMES {
        // Last one wins: the process environment comes after `.env`.
        if let Some((_, raw)) = env.iter().rev().find(|(n, _)| n == name) {
            let value = if *key == "api.listen" {
                original_port(raw)
            } else {
                scalar(key, raw)
            };
            push_single(&mut layers, Source::Env((*name).into()), key, value);
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for (name, raw) in &env {
        if let Some(rest) = name.strip_prefix("PGAAS_") {
            if NON_SETTING_VARS.contains(&name.as_str()) || rest.is_empty() {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            seen.insert(name.clone(), (key, raw.clone()));
        }
    }
    for (name, (key, raw)) in seen {
        let value = scalar(&key, &raw);
        push_single(&mut layers, Source::Env(name), &key, value);
    }
    for (key, raw) in &options.flags {
        let value = scalar(key, raw);
        push_single(&mut layers, Source::Flag(key.clone()), key, value);
    }
    Collected { layers, problems }
}

fn read_dotenv(
    path: &Path,
    required: bool,
    env: &mut Vec<(String, String)>,
    problems: &mut Vec<SettingsProblem>,
) {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                problems.push(SettingsProblem {
                    source: Source::File(path.to_path_buf()),
                    line: None,
                    key: String::new(),
                    message: "the env file (--env-file) does not exist; check its path".into(),
                });
            }
            return;
        }
        Err(e) => {
            problems.push(dotenv_problem(path, &e));
            return;
        }
    };
    for item in iter {
        match item {
            Ok(pair) => env.push(pair),
            Err(e) => problems.push(dotenv_problem(path, &e)),
        }
    }
}

fn dotenv_problem(path: &Path, e: &dotenvy::Error) -> SettingsProblem {
    let line = match e {
        dotenvy::Error::LineParse(_, idx) => Some(*idx + 1),
        _ => None,
    };
    SettingsProblem {
        source: Source::File(path.to_path_buf()),
        line,
        key: String::new(),
        message: format!("cannot parse: {e}"),
    }
}

/// The original's `PORT=3000` listened on every interface; keep that meaning.
fn original_port(raw: &str) -> Value {
    Value::String(format!("0.0.0.0:{}", raw.trim()))
}

/// An environment or flag string as a YAML scalar: numbers and booleans become typed unless the
/// key names a string setting (a numeric password stays a string).
fn scalar(key: &str, raw: &str) -> Value {
    if is_string_key(key) {
        return Value::String(raw.to_string());
    }
    if raw.contains(',') && key.ends_with("listen_addresses") {
        return Value::Sequence(
            raw.split(',')
                .map(|s| Value::String(s.trim().to_string()))
                .collect(),
        );
    }
    match yaml_serde::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

fn push_single(layers: &mut Vec<Layer>, source: Source, key: &str, value: Value) {
    let mut root = Value::Mapping(Mapping::new());
    set_path(&mut root, key, value);
    layers.push(Layer {
        source,
        value: root,
        text: None,
        key: Some(key.to_string()),
    });
}

/// Set `a.b.c` in a mapping, creating intermediate mappings.
pub(super) fn set_path(root: &mut Value, key: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = cur else {
            unreachable!("made a mapping above")
        };
        let k = Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return;
        }
        cur = map.entry(k).or_insert(Value::Mapping(Mapping::new()));
    }
}

/// Remove `a.b.c` from a mapping; used to drop a bad key and keep looking for more problems.
fn remove_path(root: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = root;
    for p in parents {
        match cur {
            Value::Mapping(m) => match m.get_mut(p.as_str()) {
                Some(next) => cur = next,
                None => return false,
            },
            _ => return false,
        }
    }
    match cur {
        Value::Mapping(m) => m.remove(last.as_str()).is_some(),
        _ => false,
    }
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) if matches!(v, Value::Mapping(_)) => merge(existing, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, from) => *into = from.clone(),
    }
}

/// Deserialise each layer on its own first (so a bad key is blamed on its own file or variable),
/// then the merged whole. Bad keys are removed and deserialisation retried, so one run reports
/// every problem.
pub(super) fn build(layers: &[Layer], problems: &mut Vec<SettingsProblem>) -> Option<Settings> {
    let mut cleaned = Vec::with_capacity(layers.len());
    for layer in layers {
        let mut value = layer.value.clone();
        for _ in 0..64 {
            let de = value.clone();
            match serde_path_to_error::deserialize::<_, Settings>(de) {
                Ok(_) => break,
                Err(err) => {
                    let path: Vec<String> = err
                        .path()
                        .iter()
                        .filter_map(|seg| match seg {
                            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                            _ => None,
                        })
                        .collect();
                    let inner = err.into_inner().to_string();
                    let (path, message) = blame(path, &inner);
                    let key = layer.key.clone().unwrap_or_else(|| path.join("."));
                    let line = layer.text.as_deref().and_then(|t| line_of(t, &path));
                    problems.push(SettingsProblem {
                        source: layer.source.clone(),
                        line,
                        key,
                        message,
                    });
                    // Drop the offending key; if it can't be found, stop with what we have.
                    let mut drop = path.clone();
                    if !remove_path(&mut value, &drop) {
                        drop.pop();
                        if drop.is_empty() || !remove_path(&mut value, &drop) {
                            break;
                        }
                    }
                }
            }
        }
        cleaned.push(value);
    }
    let mut merged = Value::Mapping(Mapping::new());
    for v in &cleaned {
        merge(&mut merged, v);
    }
    match yaml_serde::from_value::<Settings>(merged) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(SettingsProblem {
                source: Source::Defaults,
                line: None,
                key: String::new(),
                message: e.to_string(),
            });
            None
        }
    }
}

/// serde reports an unknown field at the path of its parent; name the field itself, and turn
/// serde's wording into something an operator can act on.
fn blame(mut path: Vec<String>, message: &str) -> (Vec<String>, String) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            if path.last().map(String::as_str) != Some(field) {
                path.push(field.to_string());
            }
            let expected = expected
                .trim_start_matches(", ")
                .trim_start_matches("expected ");
            return (path, format!("unknown key; valid keys here: {expected}"));
        }
    }
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    (path, message)
}

/// The 1-based line of a dotted path in block-style YAML: each segment is looked for as `key:`
/// deeper than its parent. Good enough for settings files, which are plain nested mappings.
pub(super) fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let mut start = 0usize;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    let lines: Vec<&str> = text.lines().collect();
    for seg in path {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if let Some(p) = parent_indent {
                if indent <= p && i > start {
                    break;
                }
            }
            let key = trimmed.trim_start_matches("- ");
            let matches = key
                .strip_prefix(seg.as_str())
                .is_some_and(|r| r.trim_start().starts_with(':'))
                || key
                    .strip_prefix(&format!("\"{seg}\""))
                    .is_some_and(|r| r.trim_start().starts_with(':'));
            if matches {
                hit = Some((i, indent));
                break;
            }
        }
        match hit {
            Some((i, indent)) => {
                found = Some(i + 1);
                start = i + 1;
                parent_indent = Some(indent);
            }
            None => return found,
        }
    }
    found
}
