//! The engine's module graph: which modules import which (`crate::x`,
//! outside `#[cfg(test)]`), and the import circles in it. A circle that is
//! not listed in [`KNOWN`] fails (a new one was introduced); a listed one
//! that is gone fails too, so the list only shrinks as the layout of
//! `docs/contributing.md` is reached. `.ci/layers` checks the crate level.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Circles that remain, each as its sorted member modules. None: the last
/// three (audit–identity–store, consent–policy, contract–ledger–node) were
/// broken by `clock`, `purpose` and `node`'s child modules.
const KNOWN: &[&[&str]] = &[];

/// The first path segment of every `crate::…` reference in `code`,
/// including each item of a `crate::{a, b::c}` group.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of a (possibly nested) group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(first_segment(&item));
        } else {
            out.insert(first_segment(rest));
        }
    }
    out.remove("");
    out
}

fn first_segment(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The references of a source file outside its test module (tests may
/// import what they test against).
fn file_references(p: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(p).unwrap();
    references(text.split("#[cfg(test)]").next().unwrap_or_default())
}

/// The references of every `.rs` file under `dir`, at any depth.
fn folder_references(dir: &Path) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for c in std::fs::read_dir(dir).unwrap() {
        let c = c.unwrap().path();
        if c.is_dir() {
            all.extend(folder_references(&c));
        } else if c.extension().is_some_and(|x| x == "rs") {
            all.extend(file_references(&c));
        }
    }
    all
}

/// The floors of the engine, bottom up: a module may import modules of
/// its own floor and of the floors below, never above.
const FLOORS: &[&str] = &[
    "ground",
    "trust",
    "space",
    "govern",
    "query",
    "federated",
    "node",
];

/// The folders that are wings: each of their files is a module of that
/// floor.
const WINGS: &[&str] = &["trust", "space", "govern", "query"];

/// The modules at the ground.
const GROUND: &[&str] = &[
    "error", "clock", "closed", "keys", "purpose", "noise", "mask",
];

/// The engine's modules: name → (floor, the names it imports). A module
/// is a top-level file of `engine/src` (with its folder of child modules,
/// at any depth), or a file of a wing's folder. An import names a module
/// (`crate::dp`, which the crate root re-exports) or a wing
/// (`crate::query::…`, which counts as that floor).
fn modules(src: &Path) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    let mut add = |name: String, floor: &str, p: &Path| {
        let mut refs = file_references(&p.with_extension("rs"));
        if p.with_extension("").is_dir() {
            refs.extend(folder_references(&p.with_extension("")));
        }
        let e = out
            .entry(name)
            .or_insert_with(|| (floor.to_string(), BTreeSet::new()));
        e.1.extend(refs);
    };
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        if WINGS.contains(&name.as_str()) {
            for c in std::fs::read_dir(src.join(&name)).unwrap() {
                let c = c.unwrap().path();
                if c.extension().is_some_and(|x| x == "rs") {
                    let child = c.file_stem().unwrap().to_string_lossy().into_owned();
                    add(child, &name, &c);
                }
            }
            continue;
        }
        let floor = if GROUND.contains(&name.as_str()) {
            "ground".to_string()
        } else {
            name.clone()
        };
        add(name, &floor, &p);
    }
    out
}

/// Module → the crate's modules it imports (wing paths dropped), for the
/// circle check.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let m = modules(src);
    m.iter()
        .map(|(name, (_, refs))| {
            let deps = refs
                .iter()
                .filter(|r| *r != name && m.contains_key(*r))
                .cloned()
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// The strongly connected components with more than one module (Tarjan).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in &t.g[v] {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                t.out.push(c);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

#[test]
fn the_engine_has_only_the_known_import_circles() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src"));
    let found = circles(&g);
    let known: Vec<Vec<String>> = KNOWN
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(
        found, known,
        "the engine's import circles changed; a new circle is a layering error (see docs/contributing.md), a broken one is progress: update KNOWN"
    );
    // The ground floor imports nothing above it: its modules read only the
    // basic ones (codes, clock, closed sets, keys).
    for &ground in GROUND {
        let above: Vec<&String> = g[ground]
            .iter()
            .filter(|d| !["error", "clock", "closed", "keys"].contains(&d.as_str()))
            .collect();
        assert!(above.is_empty(), "{ground} imports {above:?}");
    }
}

/// No module imports a floor above its own (the wing check; DataFusion
/// keeps a similar script for its crates).
#[test]
fn no_wing_imports_a_wing_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src");
    let m = modules(&src);
    let level = |floor: &str| FLOORS.iter().position(|f| *f == floor).unwrap();
    let mut upward = Vec::new();
    for (name, (floor, refs)) in &m {
        for r in refs {
            let to = match m.get(r) {
                Some((f, _)) => f.as_str(),
                None if FLOORS.contains(&r.as_str()) => r.as_str(),
                None => continue,
            };
            if level(to) > level(floor) {
                upward.push(format!("{name} ({floor}) imports {r} ({to})"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that go up a floor: {upward:#?}");
    // Every module has a floor: nothing was left at the top level unplaced.
    for (name, (floor, _)) in &m {
        assert!(FLOORS.contains(&floor.as_str()), "{name} has no floor");
    }
}

/// The federated protocols' roles are transport-free and stateless: they
/// read the policy model and the plan, never the node, its store, its
/// audit log or a socket.
#[test]
fn the_protocol_roles_read_only_the_model() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src/federated");
    let mut refs = file_references(&src.join("rounds.rs"));
    refs.extend(folder_references(&src.join("rounds")));
    let model = ["error", "federated", "contribution", "policy", "dp", "gate"];
    let beyond: Vec<&String> = refs
        .iter()
        .filter(|r| !model.contains(&r.as_str()))
        .collect();
    assert!(beyond.is_empty(), "the protocol roles import {beyond:?}");
    for f in std::fs::read_dir(src.join("rounds")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for io in [
            "std::net",
            "std::thread",
            "Instant::now",
            "tokio",
            "std::fs",
        ] {
            assert!(!text.contains(io), "a protocol role uses {io}");
        }
    }
    // The contribution model does not reach back into the node.
    let contribution = src.with_file_name("govern").join("contribution.rs");
    assert!(!file_references(&contribution).contains("node"));
}

#[test]
fn references_read_groups_and_paths() {
    let r =
        references("use crate::{audit::{A, B}, store::now, error};\nlet x = crate::dp::plan();");
    let want: BTreeSet<String> = ["audit", "store", "error", "dp"]
        .map(String::from)
        .into_iter()
        .collect();
    assert_eq!(r, want);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(circles(&g), vec![vec!["a", "b", "c"]]);
}
