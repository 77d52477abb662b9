//! Every place pgaas opens a connection, reviewed for the trust rule: pgaas never runs anything
//! inside a tenant's database as a role with more rights than the tenant, unless the statement
//! provably runs no tenant code (README, "Who runs what where"). The places are found in the
//! source by the calls that choose a database or a login; a new one, or one more in a file,
//! fails here until it is reviewed and added below (and to the README's table when it reaches a
//! tenant database).

use std::{collections::BTreeMap, path::Path};

/// The calls that open a connection to a chosen database or choose who logs in.
const PATTERNS: &[&str] = &[
    ".database(",
    "superuser_connect(",
    "Login::",
    ".superuser(",
    "connect_options(",
];

/// Per file: how many such calls, and what they reach as whom.
const REVIEWED: &[(&str, usize, &str)] = &[
    (
        "src/acme/install.rs",
        1,
        "superuser: postgres, the certificate reload",
    ),
    (
        "src/api/backups.rs",
        1,
        "API role: pg_dump of a tenant database (catalog reads and COPY TO with row_security off: no tenant code)",
    ),
    ("src/api/mod.rs", 1, "API role: control DB health probe"),
    (
        "src/archive/cluster.rs",
        3,
        "superuser: postgres, whole-cluster restore checks",
    ),
    (
        "src/archive/jobs.rs",
        1,
        "superuser: postgres, the restore worker's checks",
    ),
    (
        "src/archive/restore.rs",
        3,
        "superuser: postgres and the control DB, and tenant databases by name for DDL on the database object only (ALTER/DROP/RENAME DATABASE: no tenant code)",
    ),
    (
        "src/archive/scratch.rs",
        3,
        "superuser of the throwaway scratch cluster: pg_dump of the recovered tenant database (no tenant code, as above)",
    ),
    (
        "src/backup/load.rs",
        1,
        "superuser: REASSIGN/DROP OWNED of an expired load role in its tenant's databases (catalog changes only; event triggers are superuser-only)",
    ),
    (
        "src/backup/mod.rs",
        4,
        "the login each client tool uses: superuser (CLI dumps, control DB restores), API role (API dumps), a load role (tenant restores)",
    ),
    (
        "src/backup/restore.rs",
        3,
        "load role (a member of the tenant's role only) for every tenant restore; superuser for the control DB's; superuser REASSIGN/DROP OWNED of the load role",
    ),
    (
        "src/backup/targets.rs",
        2,
        "superuser: the control DB and postgres",
    ),
    (
        "src/cli/backup.rs",
        2,
        "superuser: the control DB, and pg_dump of tenant databases (no tenant code)",
    ),
    ("src/cli/mod.rs", 1, "API role: control DB"),
    ("src/cli/render.rs", 1, "API role: control DB"),
    ("src/cli/restore.rs", 1, "superuser: control DB"),
    ("src/cli/serve.rs", 1, "API role: control DB"),
    (
        "src/control_db/mod.rs",
        4,
        "superuser: postgres and the control DB at bootstrap; API role: control DB",
    ),
    ("src/dev/mod.rs", 1, "API role: control DB"),
    (
        "src/install/status.rs",
        2,
        "superuser: postgres and the control DB",
    ),
    ("src/install/steps/cluster.rs", 1, "superuser: postgres"),
    (
        "src/install/steps/database.rs",
        7,
        "superuser and API role: postgres and the control DB",
    ),
    ("src/install/steps/render.rs", 1, "superuser: control DB"),
    (
        "src/pg/cluster.rs",
        1,
        "superuser of a cluster pgaas made (tests, dev): any database by name",
    ),
    (
        "src/tenant/delete.rs",
        1,
        "API role: DROP OWNED BY a deleted tenant's role in another tenant's database (catalog changes only, no tenant code)",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_place_pgaas_connects_is_reviewed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    for path in files {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || name.ends_with("_tests.rs") || name == "proptests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests at the end of a file connect as they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let n = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| PATTERNS.iter().any(|p| l.contains(p)))
            .count();
        if n > 0 {
            found.insert(rel, n);
        }
    }
    let reviewed: BTreeMap<String, usize> = REVIEWED
        .iter()
        .map(|(f, n, _)| (f.to_string(), *n))
        .collect();
    let mut problems = Vec::new();
    for (file, n) in &found {
        match reviewed.get(file) {
            Some(m) if m == n => {}
            Some(m) => problems.push(format!(
                "{file}: {n} connection calls, {m} reviewed: check what each new one runs in which database as whom"
            )),
            None => problems.push(format!(
                "{file}: {n} connection calls, none reviewed: check what each runs in which database as whom"
            )),
        }
    }
    for file in reviewed.keys().filter(|f| !found.contains_key(*f)) {
        problems.push(format!(
            "{file}: reviewed but connects nowhere now; remove it"
        ));
    }
    assert!(
        problems.is_empty(),
        "connection places changed; review them against the rule (tests/it/boundaries.rs, the README's \"Who runs what where\") and update the list:\n{}",
        problems.join("\n")
    );
}
