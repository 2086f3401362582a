//! The fuzz targets' properties replayed on stable Rust, so `cargo test` keeps them: every
//! committed seed (`fuzz/corpus/<target>/seed-*`) and every input a fuzzer found failing
//! (`fuzz/regressions/<target>/`) goes through the property of its target.

use std::path::{Path, PathBuf};

use crate::protocol::properties::{
    engineio_packets, json_frames, socketio_packets, websocket_frames,
};
use crate::transport::properties::http_head;

/// A property: panics when its input breaks it.
type Property = fn(input: &[u8]);

/// Every property, by the name of its fuzz target (`fuzz/fuzz_targets/<name>.rs`).
const TARGETS: [(&str, Property); 5] = [
    ("websocket_frames", websocket_frames),
    ("engineio_packets", engineio_packets),
    ("socketio_packets", socketio_packets),
    ("json_frames", json_frames),
    ("http_head", http_head),
];

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn the_fuzz_targets_are_the_properties() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = files(&dir)
        .iter()
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    targets.sort();
    let mut properties: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    properties.sort();
    assert_eq!(targets, properties);
}

#[test]
fn seeds_and_regressions_keep_their_properties() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, property) in TARGETS {
        let seeds: Vec<PathBuf> = files(&fuzz.join("corpus").join(target))
            .into_iter()
            .filter(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect();
        assert!(!seeds.is_empty(), "{target} has seeds");
        for path in seeds
            .iter()
            .chain(&files(&fuzz.join("regressions").join(target)))
        {
            // Printed before the property runs: a failing test shows which input broke it.
            println!("{target}: {}", path.display());
            property(&std::fs::read(path).expect("read a fuzz input"));
        }
    }
}
