//! Embeds every file under `templates/` into the binary: generates a table of
//! `(relative path, contents)` pairs that `render` loads into minijinja.

use std::{env, fs, path::Path};

fn collect(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, base, out);
        } else {
            let rel = path.strip_prefix(base).expect("under base");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn main() {
    // Read at run time: a build script compiled for one checkout may be reused for another
    // sharing the target directory, and must read that one's templates.
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir);
    let mut files = Vec::new();
    for dir in ["templates", "playbooks"] {
        let base = root.join(dir);
        println!("cargo:rerun-if-changed={dir}");
        let mut found = Vec::new();
        collect(&base, &base, &mut found);
        let mut table = String::from("&[\n");
        for rel in &found {
            let abs = base.join(rel);
            println!("cargo:rerun-if-changed={}", abs.display());
            table.push_str(&format!(
                "    ({rel:?}, include_str!({:?})),\n",
                abs.display().to_string()
            ));
        }
        table.push_str("]\n");
        files.push((dir, table));
    }
    let out_dir = env::var("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out_dir);
    for (dir, table) in files {
        fs::write(out.join(format!("{dir}.rs")), table).expect("write embedded table");
    }
}
