//! The module graph, read from the sources: which file uses which (`crate::…` paths outside
//! comments). Dependencies point one way: `agent → http → ws → tasks → store/monitor →
//! protocol`; no two files use each other, directly or round a circle; and no function
//! outside tests grows past about 80 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, by its path relative to `src/` (`ws/hub.rs`).
fn files() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read src/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src()).expect("under src/").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read_to_string(&p).expect("read a source file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &mut out);
    out
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The file a module path names (`["ws", "hub"]` → `ws/hub.rs`), taking the longest prefix
/// that is a file.
fn resolve(parts: &[&str], files: &BTreeMap<String, String>) -> Option<String> {
    for n in (1..=parts.len()).rev() {
        let p = parts[..n].join("/");
        for cand in [format!("{p}.rs"), format!("{p}/mod.rs")] {
            if files.contains_key(&cand) {
                return Some(cand);
            }
        }
    }
    None
}

/// `crate::a::b::{c, d::e}` paths in `code`, each as its segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        let base: Vec<String> =
            rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
            for item in rest[end + 1..close].split(',') {
                let mut p = base.clone();
                p.extend(item.trim().split("::").filter(|s| !s.is_empty() && *s != "self").map(str::to_string));
                out.push(p);
            }
        } else {
            out.push(base);
        }
    }
    out
}

/// file → the files it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = files();
    let mut g = BTreeMap::new();
    for (name, text) in &files {
        let mut deps = BTreeSet::new();
        for path in crate_paths(&code(text)) {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(dep) = resolve(&parts, &files).filter(|d| d != name && d != "lib.rs") {
                deps.insert(dep);
            }
        }
        g.insert(name.clone(), deps);
    }
    g
}

#[test]
fn no_file_is_part_of_an_import_circle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let from = stack.iter().position(|s| s == n).unwrap_or(0);
                return Some(stack[from..].iter().cloned().chain([n.to_string()]).collect());
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(circle) = visit(n, &g, &mut state, &mut Vec::new()) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    let g = graph();
    // A file of a layer may not use one of the layers above it.
    let layer = |f: &str| -> u8 {
        match f.split('/').next().unwrap_or(f) {
            "main.rs" => 6,
            "agent.rs" => 5,
            "http" => 4,
            "ws" => 3,
            "tasks" => 2,
            "store.rs" | "monitor.rs" | "metrics.rs" | "task_files.rs" | "contain" => 1,
            "protocol.rs" | "events.rs" | "eintr.rs" | "sync.rs" | "procfs.rs" | "cidr.rs" => 0,
            _ => u8::MAX, // not in the layering (config, discovery, commands, ...)
        }
    };
    let mut wrong = Vec::new();
    for (f, deps) in &g {
        for d in deps {
            if layer(f) != u8::MAX && layer(d) != u8::MAX && layer(d) > layer(f) {
                wrong.push(format!("{f} uses {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies that point up:\n{}", wrong.join("\n"));
    // The settings sit below everything that reads them: the tasks read `Config`, so it may
    // not reach up into them (nor into ws, http or the agent).
    let up: Vec<&String> =
        g["config.rs"].iter().filter(|d| layer(d) != u8::MAX && layer(d) >= layer("tasks")).collect();
    assert!(up.is_empty(), "config.rs uses {up:?}, which read the config");
    // The bottom layer uses nothing of the crate but its own kind.
    for f in ["protocol.rs", "eintr.rs", "sync.rs", "cidr.rs"] {
        assert!(g[f].is_empty(), "{f} should use nothing of the crate, uses {:?}", g[f]);
    }
}

#[test]
fn the_parser_sees_grouped_and_plain_paths() {
    let p = crate_paths("use crate::ws::{ctl::Ctl, queue::{Out}};\nlet x = crate::eintr::retry(f);");
    assert!(p.contains(&vec!["ws".to_string(), "ctl".into(), "Ctl".into()]), "{p:?}");
    assert!(p.contains(&vec!["eintr".to_string(), "retry".into()]), "{p:?}");
    let g = graph();
    assert!(g["http/server.rs"].contains("http/handlers.rs"), "{:?}", g["http/server.rs"]);
    assert!(g["ws/client.rs"].contains("ws/queue.rs"), "{:?}", g["ws/client.rs"]);
}

/// Functions outside tests stay short enough to read at once (about 80 lines; a few long
/// tables of data are allowed a little more).
#[test]
fn no_function_is_longer_than_about_80_lines() {
    let mut long = Vec::new();
    for (name, text) in files() {
        let body = code(&text);
        let lines: Vec<&str> = body.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i].trim_start();
            let is_fn = (l.starts_with("fn ") || l.starts_with("pub fn ") || l.starts_with("pub(crate) fn "))
                && !l.ends_with(';');
            if !is_fn {
                i += 1;
                continue;
            }
            let indent = lines[i].len() - l.len();
            let end = (i + 1..lines.len())
                .find(|&j| {
                    let t = lines[j];
                    t.len() - t.trim_start().len() == indent && t.trim_start().starts_with('}')
                })
                .unwrap_or(i);
            if end - i > 85 {
                long.push(format!("{name}:{} ({} lines) {}", i + 1, end - i, l));
            }
            i += 1;
        }
    }
    assert!(long.is_empty(), "functions over about 80 lines (85):\n{}", long.join("\n"));
}
