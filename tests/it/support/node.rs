//! The real switchboard binary as a child process on a free port.

use std::net::SocketAddr;
use std::process::{ExitStatus, Output};
use std::time::Duration;

use tokio::process::Command;

use super::process::LoggedChild;
use super::{STARTUP_TIMEOUT, TempDir, free_port, try_http};

pub struct Node {
    addr: SocketAddr,
    // Declared before `dir` so the process is gone before its log file.
    process: LoggedChild,
    dir: TempDir,
}

impl Node {
    /// Waits until `channel` has `sockets` subscribed across the cluster, as the shared counts
    /// report it (`GET /api/channels/{channel}` with `api_key`).
    pub async fn until_subscribed(&self, api_key: &str, channel: &str, sockets: u64) {
        let deadline = tokio::time::Instant::now() + super::TIMEOUT;
        loop {
            let info = super::http(
                "GET",
                &format!("{}/api/channels/{channel}", self.url()),
                &[("authorization", &format!("Bearer {api_key}"))],
                b"",
            )
            .await
            .json();
            if info["subscription_count"] == sockets {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel} never had {sockets} sockets: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `switchboard <args> --listen 127.0.0.1:<free port>` with `envs`
    /// added, and returns once `GET /health` answers 200.
    pub async fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Node {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("node");
        let process = LoggedChild::spawn(
            "switchboard",
            command(args, envs, addr),
            &dir.path().join("node.log"),
        );
        let mut node = Node { addr, process, dir };
        node.wait_healthy().await;
        node
    }

    /// Runs the binary the same way, expecting it to refuse to start (a bad
    /// setting): returns its exit status and everything it printed.
    pub async fn spawn_expect_failure(
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (ExitStatus, String) {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("node-fail");
        let mut process = LoggedChild::spawn(
            "switchboard",
            command(args, envs, addr),
            &dir.path().join("node.log"),
        );
        match process.wait_exit(STARTUP_TIMEOUT).await {
            Some(status) => (status, process.logs()),
            None => {
                process.kill().await;
                panic!(
                    "switchboard {args:?} was expected to fail but was still running after {STARTUP_TIMEOUT:?}"
                );
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The process id of the running node.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the node printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Waits until `GET /ready` answers 200 (`want`) or not, within 15 s.
    pub async fn wait_ready(&self, want: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let ready = try_http("GET", &format!("{}/ready", self.url()), &[], b"")
                .await
                .is_ok_and(|r| r.status == 200);
            if ready == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/ready never became {want}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks for a graceful shutdown; follow with [`Node::wait_exit`].
    pub fn sigterm(&self) {
        self.process.signal("TERM");
    }

    /// SIGKILL, like a crash; returns once the process is gone.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// The exit status, or `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    async fn wait_healthy(&mut self) {
        let health = format!("{}/health", self.url());
        self.process.wait_http_ok(&health).await;
    }
}

fn command(args: &[&str], envs: &[(&str, &str)], addr: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    clear_settings(&mut command);
    command.args(args).arg("--listen").arg(addr.to_string());
    command.envs(envs.iter().copied());
    command
}

/// Runs `switchboard <args>` (no `--listen`: for subcommands such as `migrate`) with `envs`
/// added, and returns its exit status and everything it printed.
pub async fn run_switchboard(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let output = switchboard_output(args, envs).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// Runs `switchboard <args>` like [`run_switchboard`], keeping stdout and stderr apart.
pub async fn switchboard_output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    clear_settings(&mut command);
    command
        .args(args)
        .envs(envs.iter().copied())
        .kill_on_drop(true);
    tokio::time::timeout(STARTUP_TIMEOUT * 3, command.output())
        .await
        .unwrap_or_else(|_| panic!("switchboard {args:?} did not exit"))
        .unwrap_or_else(|err| panic!("run switchboard {args:?}: {err}"))
}

/// Settings exported in the developer's shell (`SWITCHBOARD_*`, and `OTEL_*`, which would
/// send the tests' traces to their collector) must not leak into tests; each test says
/// exactly which ones it sets.
fn clear_settings(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("SWITCHBOARD_") || text.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
}
