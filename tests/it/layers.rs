//! The module graph of `src/` has no cycle and points down: a top-level module may use only
//! modules of a lower layer (DESIGN.md's layout). A new back-edge fails here, naming the file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Layers, lowest first; a module may use the modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["model", "host"],
    &["settings", "system", "files"],
    &["pg"],
    &["render"],
    &["control_db"],
    &["hba"],
    &["tenant", "backup"],
    &["archive", "acme"],
    &["install", "dev", "api"],
    &["cli", "parse_proptests"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`.
fn used_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::x, b, c::{y, z}}`: the first segment of each top-level item.
            let (mut depth, mut item) = (0, String::new());
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            out.push(ident(item.trim()));
        } else {
            out.push(ident(rest));
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let name = rel.file_name().unwrap().to_string_lossy();
        // Test code may reach across (a render test compiles rules to render them).
        if top == "lib" || top == "main" || name == "tests.rs" || name == "proptests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let from = layer(&top)
            .unwrap_or_else(|| panic!("src/{top} is in no layer: add it to LAYERS in {}", file!()));
        for used in used_modules(code) {
            let Some(to) = layer(&used) else { continue };
            if used != top && to >= from {
                problems
                    .entry(format!("{top} -> {used}"))
                    .or_insert_with(Vec::new)
                    .push(rel.display().to_string());
            }
        }
    }
    assert!(
        problems.is_empty(),
        "modules that use a module of their own or a higher layer (see LAYERS):\n{}",
        problems
            .iter()
            .map(|(edge, files)| format!("  {edge}: {}", files.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_scanner_finds_grouped_and_plain_paths() {
    let used = used_modules(
        "use crate::{model::{A, B}, render::hba, settings};\nlet x = crate::files::reroot(p);",
    );
    assert_eq!(used, ["model", "render", "settings", "files"]);
}
