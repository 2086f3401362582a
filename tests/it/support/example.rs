//! The package's examples, built on demand: `cargo test --test <name>` builds none.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::manifest_dir;

/// `cargo build --example <name>` with this test's profile and target directory; returns the
/// binary's path.
pub async fn build_example(name: &str) -> PathBuf {
    // A test runs as <target dir>/<profile dir>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()));
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("no profile directory above {}", exe.display()),
    };
    let mut cargo = Command::new(env!("CARGO"));
    // What cargo set for running this test describes this crate, not the build: left in, it
    // would dirty the fingerprints of build scripts that watch it (ring's watches
    // CARGO_MANIFEST_DIR) and rebuild them here and again in the next `cargo test`.
    for (var, _) in std::env::vars_os() {
        let text = var.to_string_lossy();
        if text.starts_with("CARGO_PKG_")
            || matches!(
                &*text,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            cargo.env_remove(var);
        }
    }
    let status = cargo
        .args(["build", "--quiet", "--example", name, "--profile", profile])
        .arg("--manifest-path")
        .arg(manifest_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .await
        .unwrap_or_else(|err| panic!("run cargo build --example {name}: {err}"));
    assert!(status.success(), "cargo build --example {name}: {status}");
    profile_dir.join("examples").join(name)
}
