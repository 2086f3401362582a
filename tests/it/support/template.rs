//! Database data directories made once (per machine or target dir, and server version) and
//! copied for every server: making one takes seconds, a copy milliseconds.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// An empty directory under `root` to build the `kind` template in. It is renamed into place
/// when done ([`finish`]), so that a test binary running at the same time never sees half of
/// one.
pub fn building_dir(root: &Path, kind: &str) -> PathBuf {
    let building = root.join(format!("{kind}-template-building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building)
        .unwrap_or_else(|err| panic!("create {}: {err}", building.display()));
    building
}

/// Runs `command`, which fills `data`, then renames `data` to `template` and removes
/// `building`; `package` names what provides the command when it cannot run.
pub async fn finish(
    mut command: Command,
    package: &str,
    data: &Path,
    template: &Path,
    building: &Path,
) -> PathBuf {
    let output = command.output().await.unwrap_or_else(|err| {
        panic!("run {command:?}: {err}; is {package} installed? (scripts/test installs it)")
    });
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if std::fs::rename(data, template).is_err() && !template.is_dir() {
        panic!("move {} to {}", data.display(), template.display());
    }
    // Another test binary may have won the race; its template is as good.
    let _ = std::fs::remove_dir_all(building);
    template.to_path_buf()
}

/// `cp -a from to`: keeps owners and modes, which both servers check.
pub async fn copy(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .await
        .unwrap_or_else(|err| panic!("run cp -a: {err}"));
    assert!(
        status.success(),
        "cp -a {} {} failed: {status}",
        from.display(),
        to.display()
    );
}
