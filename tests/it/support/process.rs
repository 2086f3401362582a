//! A child process whose stdout and stderr go to one log file: the common part
//! of [`super::Node`], [`super::RedisServer`] and [`super::Nginx`].
//!
//! When a test panics, every such process prints its log as it is dropped, so
//! the panic messages of the start-up waits need not repeat it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::STARTUP_TIMEOUT;

pub(crate) struct LoggedChild {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl LoggedChild {
    /// Starts `command` with both output streams appended to `log_path`
    /// (appended, so a restarted process keeps the earlier run's lines).
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> LoggedChild {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap_or_else(|err| panic!("open log file {}: {err}", log_path.display()));
        // One shared file description for both streams keeps their lines in
        // the order they were written.
        let log_err = log.try_clone().expect("duplicate log file handle");
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("start {name} ({command:?}): {err}"));
        LoggedChild {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
        }
    }

    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }

    /// The process id; panics if the process has already been waited for.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("{} has already exited", self.name))
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|err| panic!("check whether {} is running: {err}", self.name))
    }

    /// Sends `signal` (a name such as "TERM") without waiting.
    ///
    /// Goes through the `kill` utility because std and tokio only offer
    /// SIGKILL, and a libc dependency for one call is not worth it.
    pub fn signal(&self, signal: &str) {
        let Some(pid) = self.child.id() else {
            panic!(
                "cannot send SIG{signal} to {}: it has already exited",
                self.name
            );
        };
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|err| panic!("run `kill -{signal} {pid}` for {}: {err}", self.name));
        assert!(
            status.success(),
            "`kill -{signal} {pid}` for {} failed: {status}",
            self.name
        );
    }

    /// SIGKILL, then wait until the process is gone (and its ports are free).
    pub async fn kill(&mut self) {
        // An error here only means the process had already exited.
        let _ = self.child.start_kill();
        self.child
            .wait()
            .await
            .unwrap_or_else(|err| panic!("wait for {} to exit: {err}", self.name));
    }

    /// Polls `probe` every 20 ms until it succeeds. If the process exits
    /// first, or [`STARTUP_TIMEOUT`] passes (then it is killed), panics with
    /// `what` it was waiting for, e.g. "answer PING on port 6379", and the
    /// probe's last error.
    pub async fn wait_ready(
        &mut self,
        what: &str,
        mut probe: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}) before it would {what}", self.name);
            }
            let last = match probe().await {
                Ok(()) => return,
                Err(error) => error,
            };
            if Instant::now() > deadline {
                self.kill().await;
                panic!(
                    "{} did not {what} within {STARTUP_TIMEOUT:?} (last: {last})",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`LoggedChild::wait_ready`] for an HTTP server: until `GET url` answers 200.
    pub async fn wait_http_ok(&mut self, url: &str) {
        self.wait_ready(
            &format!("answer GET {url} with 200"),
            async || match super::try_http("GET", url, &[], b"").await {
                Ok(response) if response.status == 200 => Ok(()),
                Ok(response) => Err(format!("status {}: {}", response.status, response.text())),
                Err(err) => Err(err.to_string()),
            },
        )
        .await;
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                Some(status.unwrap_or_else(|err| panic!("wait for {} to exit: {err}", self.name)))
            }
            Err(_elapsed) => None,
        }
    }
}

/// A log file's text, also once its process is gone (say, killed for a
/// restart), or why it cannot be read.
pub(crate) fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        // kill_on_drop does the killing; this only makes a failing test show
        // what the process said.
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_path.display(),
                self.logs(),
                self.name
            );
        }
    }
}
