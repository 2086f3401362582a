//! A child process scripted over JSON lines: commands go to its stdin, one
//! object per line, and every line it prints is read back as JSON. The common
//! part of [`super::Agent`] (socket.io-client) and [`super::EchoAgent`]
//! (Laravel Echo): both dereference to it, so `send`, `wait_for`, `next`,
//! `assert_no`, `expect_connect` and `exit` are the same on either; they add
//! only their own commands and lines.
//!
//! Lines are buffered: a `wait_for` takes the first line that matches and
//! leaves the others for later waits, so a test need not predict the order of
//! unrelated events (say, an ack and a broadcast).
//!
//! When a test panics, each process prints every line it received and its
//! stderr as it is dropped, so failure messages stay short.
//!
//! A process that reports `{"type":"error"}` (a script exception, a rejected
//! promise, a bad command) fails the test at once, and so does one that exits
//! before the test asked it to: otherwise a crashed agent would read as
//! "nothing arrived" and every negative check would pass.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::manifest_dir;

/// Why no line came.
enum RecvError {
    Closed,
    TimedOut,
}
use RecvError::{Closed, TimedOut};

pub struct JsonLinesProcess {
    /// Names the process in failure output, e.g. "agent for http://…".
    label: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Received but not yet taken by a wait.
    backlog: VecDeque<Value>,
    /// Every line received, for failure messages.
    seen: Vec<Value>,
    /// Without reconnection a `connect_error` is final.
    reconnection: bool,
    /// The test asked the process to exit: its end is expected.
    exiting: bool,
    /// A std Mutex: only the reader task appends, only panics read, and the
    /// lock is never held across an await.
    stderr: Arc<Mutex<String>>,
}

impl JsonLinesProcess {
    /// Starts `node tests/js/<script> '<config>'`, after checking that
    /// `npm ci` has installed `needs` (a package under node_modules). The
    /// config's `reconnection` (default false) is the agents' own key.
    pub fn spawn_node(label: String, script: &str, needs: &str, config: &Value) -> Self {
        let js = manifest_dir().join("tests/js");
        assert!(
            js.join("node_modules").join(needs).is_dir(),
            "{} has no node_modules/{needs}: run `npm ci` there (scripts/test does)",
            js.display()
        );
        let mut command = Command::new("node");
        command
            .arg(js.join(script))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|err| {
            panic!("start the {label} ({command:?}); is node installed? {err}")
        });
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");

        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                // Anything that is not a JSON line (a stray console.log) is
                // kept visible rather than dropped.
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"type": "unparsed", "line": line}));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buf).await {
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        JsonLinesProcess {
            label,
            child,
            stdin,
            lines,
            backlog: VecDeque::new(),
            seen: Vec::new(),
            reconnection: config["reconnection"].as_bool().unwrap_or(false),
            exiting: false,
            stderr,
        }
    }

    /// Sends one command line, e.g. `json!({"cmd": "disconnect"})`.
    pub async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        let sent = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        if let Err(err) = sent.await {
            panic!("send {cmd} to the {}: {err}", self.label);
        }
    }

    /// The next line (buffered first), or `None` after `timeout` or once the
    /// process has exited and everything was read.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(line) = self.backlog.pop_front() {
            return Some(line);
        }
        self.recv_until(Instant::now() + timeout).await.ok()
    }

    /// The first line matching `pred` (buffered lines first); the lines it
    /// skips stay buffered. Panics on timeout; the drop prints every line seen.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self
                .backlog
                .remove(i)
                .expect("position is within the backlog");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline).await {
                Ok(line) if pred(&line) => return line,
                Ok(line) => self.backlog.push_back(line),
                Err(Closed) => panic!("the {} exited while a test waited for a line", self.label),
                Err(TimedOut) => {
                    panic!(
                        "no matching line from the {} within {timeout:?}",
                        self.label
                    )
                }
            }
        }
    }

    /// Fails, naming `what`, if a line matching `pred` is buffered or arrives
    /// within `duration`. The lines it skips stay buffered.
    pub async fn assert_no(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        duration: Duration,
    ) {
        if let Some(line) = self.backlog.iter().find(|line| pred(line)) {
            panic!("unexpected {what}: {line}");
        }
        let deadline = Instant::now() + duration;
        loop {
            match self.recv_until(deadline).await {
                Ok(line) if pred(&line) => panic!("unexpected {what}: {line}"),
                Ok(line) => self.backlog.push_back(line),
                Err(Closed) if !self.exiting => {
                    panic!(
                        "the {} exited during a check that nothing arrives",
                        self.label
                    )
                }
                // A process that has exited on request prints nothing more.
                Err(Closed) | Err(TimedOut) => return,
            }
        }
    }

    /// Sends `{"cmd":"exit"}` (the agents disconnect cleanly, then exit) and
    /// waits for the process to end.
    pub async fn exit(&mut self) -> ExitStatus {
        self.exiting = true;
        self.send(json!({"cmd": "exit"})).await;
        match tokio::time::timeout(super::TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(err)) => panic!("wait for the {} to exit: {err}", self.label),
            Err(_) => panic!(
                "the {} did not exit within {:?}",
                self.label,
                super::TIMEOUT
            ),
        }
    }

    /// Every line seen so far and the process's stderr, for failure messages.
    pub fn report(&self) -> String {
        let lines: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        format!(
            "----- lines -----\n{}\n----- stderr -----\n{stderr}",
            lines.join("\n")
        )
    }

    /// Waits for the `connect` line both agents print (tests/js/lines.mjs)
    /// and returns the socket id. Without reconnection a `connect_error` is
    /// final, so it fails at once.
    pub async fn expect_connect(&mut self, timeout: Duration) -> String {
        let fail_fast = !self.reconnection;
        let line = self
            .wait_for(
                |line| line["type"] == "connect" || (fail_fast && line["type"] == "connect_error"),
                timeout,
            )
            .await;
        if line["type"] == "connect_error" {
            panic!("expected a connection, got {line}");
        }
        line["id"]
            .as_str()
            .unwrap_or_else(|| panic!("connect line without an id: {line}"))
            .to_owned()
    }

    /// Waits for a refused connection and returns its message; fails at once
    /// if the connection succeeds instead.
    pub async fn expect_connect_error(&mut self, timeout: Duration) -> String {
        let line = self
            .wait_for(
                |line| line["type"] == "connect_error" || line["type"] == "connect",
                timeout,
            )
            .await;
        if line["type"] == "connect" {
            panic!(
                "expected connect_error, but the {} connected: {line}",
                self.label
            );
        }
        line["message"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits for the server to refuse the connection and returns why (`err.data.reason`);
    /// fails unless the message is the one every refusal carries, `Authentication failed`.
    pub async fn expect_refused(&mut self, timeout: Duration) -> String {
        let line = self
            .wait_for(
                |line| line["type"] == "connect_error" || line["type"] == "connect",
                timeout,
            )
            .await;
        assert_eq!(
            (line["type"].as_str(), line["message"].as_str()),
            (Some("connect_error"), Some("Authentication failed")),
            "{}: {line}",
            self.label
        );
        line["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits for a disconnect and returns its reason (e.g. "io server disconnect").
    pub async fn expect_disconnect(&mut self, timeout: Duration) -> String {
        let line = self
            .wait_for(|line| line["type"] == "disconnect", timeout)
            .await;
        line["reason"].as_str().unwrap_or_default().to_owned()
    }

    async fn recv_until(&mut self, deadline: Instant) -> Result<Value, RecvError> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                if line["type"] == "error" {
                    panic!("the {} reported an error: {line}", self.label);
                }
                Ok(line)
            }
            Ok(None) => Err(Closed),
            Err(_elapsed) => Err(TimedOut),
        }
    }
}

impl Drop for JsonLinesProcess {
    fn drop(&mut self) {
        // kill_on_drop ends the process; this only explains a failing test.
        if std::thread::panicking() {
            eprintln!("----- {} -----\n{}", self.label, self.report());
        }
    }
}
