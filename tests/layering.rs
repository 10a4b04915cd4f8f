//! The module dependencies flow one way (ARCHITECTURE.md "Modules"): among the top-level
//! modules of `src/`, the `crate::…` paths outside comments and `#[cfg(test)]` code form no
//! cycle, and the model never uses the parallel layout (parallelism is applied to it by
//! separate code).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        for line in code(&std::fs::read_to_string(&f).unwrap()).lines() {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    g.entry(top.clone()).or_default().insert(name);
                }
            }
        }
    }
    g
}

#[test]
fn module_dependencies_have_no_cycle() {
    let g = graph();
    // Depth-first search for a back edge, reporting the cycle.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        path.push(v.to_string());
        for w in g.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = path.iter().position(|x| x == w).unwrap();
                    let mut c = path[i..].to_vec();
                    c.push(w.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(w, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(v, &g, &mut state, &mut Vec::new()) {
                panic!("module cycle: {}", c.join(" → "));
            }
        }
    }
}

#[test]
fn the_model_does_not_use_the_parallel_layout() {
    let g = graph();
    for m in ["model", "layers", "backend", "comm", "config"] {
        let deps = g.get(m).cloned().unwrap_or_default();
        assert!(
            !deps.contains("parallel") && !deps.contains("train"),
            "{m} uses {deps:?}"
        );
    }
}

/// `text` without comments and `#[cfg(test)]` code.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap();
    before_tests
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Code of `file` (relative to `src/`), as [`code`].
fn code_of(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file);
    code(&std::fs::read_to_string(&p).unwrap())
}

#[test]
fn the_generic_traits_name_no_concrete_mpi_or_cuda_type() {
    // The backend traits and the communicator traits: what the model, the schedules and the
    // generation engine are written against.
    for f in ["backend/mod.rs", "comm/mod.rs"] {
        let code = code_of(f);
        for banned in ["cudarc", "mpi::", "MpiComm", "CudaStream", "CudaSlice"] {
            assert!(!code.contains(banned), "{f} names {banned}");
        }
    }
}

#[test]
fn no_backend_trait_default_is_overridden_by_every_backend() {
    // A default method every backend replaces is dead code: it should be a required method.
    let traits = code_of("backend/mod.rs");
    let impls = [
        code_of("backend/cpu/mod.rs"),
        code_of("backend/cuda/backend.rs"),
    ];
    let mut dead = Vec::new();
    for block in traits.split("pub trait ").skip(1) {
        let body = &block[..block.find("\n}").unwrap()];
        // A default method: `fn name(…) … {` at the trait's indentation.
        let mut rest = body;
        while let Some(i) = rest.find("\n    fn ") {
            rest = &rest[i + 8..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // The signature ends at the first line ending in `{` or `{}` (a body) or `;` (none).
            let end = rest
                .lines()
                .map(str::trim_end)
                .find(|l| l.ends_with('{') || l.ends_with("{}") || l.ends_with(';'))
                .unwrap();
            let has_default = !end.ends_with(';');
            let needle = format!("fn {name}(");
            if has_default && impls.iter().all(|c| c.contains(&needle)) {
                dead.push(name);
            }
        }
    }
    assert!(
        dead.is_empty(),
        "defaults every backend overrides: {dead:?}"
    );
}
