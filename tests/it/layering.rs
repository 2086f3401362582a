//! The layers the architecture promises (../shared/STYLE.md, issue 17), checked on the source:
//! protocol codecs import nothing of the crate and no runtime or network crate; the bus and
//! the cluster state do not reach the server or the binary; Engine.IO and the transport know
//! no front-end; and no more than three modules import each other in one cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most modules allowed to import each other in one cycle (issue 17): the node reaches the
/// parts below it, and they report back through seams, never by naming it.
const LARGEST_CYCLE: usize = 3;

/// Every `.rs` file under `src/` except the binaries, as (module path, source).
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter(|path| !path.starts_with(root.join("bin")) && !path.ends_with("main.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&root).expect("under src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            let source = std::fs::read_to_string(&path).expect("read a source file");
            (parts.join("::"), source)
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code of a file without its comments (doc links name modules they do not import) and
/// without its unit tests (`#[cfg(test)] mod tests` at the end).
fn without_tests(source: &str) -> String {
    let code = source
        .find("#[cfg(test)]\nmod tests")
        .map_or(source, |at| &source[..at]);
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate modules `source` names (`crate::a::b` → the longest known module prefix).
fn imports(source: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code = without_tests(source);
    let code = code.as_str();
    for (at, _) in code.match_indices("crate::") {
        let path: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        // `use crate::{a, b::c}` names several modules in braces.
        if parts.is_empty() {
            let rest = &code[at + "crate::".len()..];
            if let Some(list) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
                for item in list.split(',') {
                    let item = item.trim().split("::").next().unwrap_or_default();
                    if known.contains(item) {
                        found.insert(item.to_owned());
                    }
                }
            }
            continue;
        }
        for len in (1..=parts.len()).rev() {
            let candidate = parts[..len].join("::");
            if known.contains(&candidate) {
                found.insert(candidate);
                break;
            }
        }
    }
    found
}

/// The strongly connected components of the import graph (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(state: &mut State<'g>, node: &'g str) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for next in graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[next].min(state.low[node]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.index[next].min(state.low[node]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().filter(|m| !m.is_empty()).cloned().collect();
    modules
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, source)| {
            let mut targets = imports(source, &known);
            targets.remove(name);
            (name.clone(), targets)
        })
        .collect()
}

#[test]
fn protocol_codecs_import_nothing_of_the_crate_nor_a_runtime() {
    for (name, source) in modules() {
        if name != "protocol" && !name.starts_with("protocol::") {
            continue;
        }
        let code = without_tests(&source);
        for forbidden in ["crate::", "tokio", "redis", "hyper", "axum"] {
            let uses = code.lines().any(|l| {
                l.contains(&format!("{forbidden}::")) || l.contains(&format!("use {forbidden}"))
            });
            assert!(!uses, "{name} uses {forbidden}: codecs stay pure");
        }
    }
}

#[test]
fn the_core_does_not_reach_the_node_or_what_serves_clients() {
    // The hub, the bus, the cluster state and what they stand on are built by the node and
    // report upwards through seams (bus::Receiver, cluster::Event and cluster::Census); none
    // of them may name the node or a part that serves clients.
    let graph = graph();
    let core = [
        "bus", "cluster", "hub", "metrics", "channel", "outbox", "pacing", "webhooks",
    ];
    let above = [
        "node",
        "server",
        "api",
        "admin",
        "access",
        "engine",
        "socketio",
        "ws",
        "notifications",
    ];
    for (name, targets) in &graph {
        let in_core = core
            .iter()
            .any(|m| name == m || name.starts_with(&format!("{m}::")));
        if in_core {
            for top in above {
                assert!(
                    !targets
                        .iter()
                        .any(|t| t == top || t.starts_with(&format!("{top}::"))),
                    "{name} imports {top}: the layers below report upwards through seams"
                );
            }
        }
    }
}

/// Whether `module` is `root` or inside it.
fn within(module: &str, root: &str) -> bool {
    module == root || module.starts_with(&format!("{root}::"))
}

#[test]
fn the_engine_and_the_transport_know_no_front_end() {
    // Engine.IO hands packets to its handler trait; the transport serves every protocol alike.
    let above = [
        "node",
        "socketio",
        "hub",
        "channel",
        "notifications",
        "server",
        "ws",
        "api",
        "admin",
    ];
    for (name, targets) in &graph() {
        let layer = if within(name, "engine") {
            "the engine"
        } else if within(name, "transport") {
            "the transport"
        } else {
            continue;
        };
        for target in targets {
            let forbidden = above.iter().any(|m| within(target, m))
                || (layer == "the transport" && within(target, "engine"));
            assert!(
                !forbidden,
                "{name} imports {target}: {layer} reaches the layers above only through its seams"
            );
        }
    }
    let ws = &graph()["ws"];
    assert!(
        !ws.contains("engine") && ws.contains("transport"),
        "the JSON endpoint runs on the transport, not on Engine.IO: {ws:?}"
    );
}

#[test]
fn the_import_cycle_does_not_grow() {
    let found = cycles(&graph());
    let largest = found.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        largest <= LARGEST_CYCLE,
        "{largest} modules import each other in one cycle (at most {LARGEST_CYCLE}): {found:?}"
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    let known: BTreeSet<String> = ["hub", "bus", "bus::redis"].map(String::from).into();
    assert_eq!(
        imports(
            "use crate::bus::redis::RedisBus;\nuse crate::{hub, bus};",
            &known
        ),
        ["bus", "bus::redis", "hub"].map(String::from).into()
    );
}
