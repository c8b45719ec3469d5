//! The crate's modules import one way: each engine module uses only the engine modules below it,
//! and the foundations (digest, key, manifest, store backends, leases) never use the engine or
//! what is built on it (`run`). A new engine module must be placed in `ENGINE_LAYERS`.

use std::fs;
use std::path::{Path, PathBuf};

/// Engine modules, lowest first; a module may use only modules of an earlier layer.
const ENGINE_LAYERS: &[&[&str]] = &[
    &["mode", "context", "mapped"],
    &["store"],
    &["entry", "maintenance"],
    &["sweep"],
    &["task"],
    &["batch", "map"],
];

/// Modules and folders below the engine: they never name `crate::engine` or `crate::run`.
const FOUNDATIONS: &[&str] = &[
    "digest.rs",
    "error.rs",
    "file_digest.rs",
    "manifest.rs",
    "signing.rs",
    "key",
    "lease",
    "store",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without its comments (doc comments may name any module).
fn code_of(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    for e in fs::read_dir(path).unwrap() {
        out.extend(rust_files(&e.unwrap().path()));
    }
    out.retain(|p| p.extension().is_some_and(|x| x == "rs"));
    out
}

fn layer_of(module: &str) -> Option<usize> {
    ENGINE_LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn engine_modules_use_only_lower_layers() {
    let mut upward = Vec::new();
    for file in rust_files(&src().join("engine")) {
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        if name == "mod" {
            continue;
        }
        let own = layer_of(&name)
            .unwrap_or_else(|| panic!("place the engine module `{name}` in ENGINE_LAYERS"));
        let code = code_of(&file);
        for (i, _) in code.match_indices("super::") {
            let used: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(theirs) = layer_of(&used) {
                if theirs >= own && used != name {
                    upward.push(format!("engine/{name}.rs uses {used}"));
                }
            }
        }
        for above in ["crate::run", "crate::Task"] {
            if name != "task" && code.contains(above) && layer_of("task").unwrap() > own {
                upward.push(format!("engine/{name}.rs uses {above}"));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "imports going up a layer: {upward:#?}");
}

#[test]
fn foundations_never_use_the_engine_or_run() {
    let mut found = Vec::new();
    for part in FOUNDATIONS {
        for file in rust_files(&src().join(part)) {
            let code = code_of(&file);
            for higher in ["crate::engine", "crate::run", "crate::Store", "crate::Task"] {
                if code.contains(higher) {
                    found.push(format!("{} uses {higher}", file.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
