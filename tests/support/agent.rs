//! A real socket.io-client (`tests/js/agent.mjs` under node), scripted over
//! JSON lines. Testing against the reference client catches protocol
//! mistakes that a hand-written Rust client would share with the server.
//!
//! Lines the agent prints are buffered: a `wait_for` takes the first line that
//! matches and leaves the others for later waits, so a test need not predict
//! the order of unrelated events (say, an ack and a broadcast).
//!
//! When a test panics, each of its agents prints every line it received and
//! its stderr as it is dropped, so failure messages here stay short.

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

/// The agent's own default for `timeout` (ms), used for acks.
const AGENT_DEFAULT_TIMEOUT_MS: u64 = 5000;

pub struct Agent {
    /// The config's url, to tell agents apart in failure output.
    url: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Received but not yet taken by a wait.
    backlog: VecDeque<Value>,
    /// Every line received, for failure messages.
    seen: Vec<Value>,
    /// A std Mutex: only the reader task appends, only panics read, and the
    /// lock is never held across an await.
    stderr: Arc<Mutex<String>>,
    next_ack: u64,
    ack_timeout: Duration,
    reconnection: bool,
}

impl Agent {
    /// Starts `node tests/js/agent.mjs '<config>'`; see that file for the
    /// config keys (`url` is required). Does not wait for the connection: follow
    /// with [`Agent::expect_connect`] or [`Agent::expect_connect_error`].
    pub fn spawn(config: Value) -> Agent {
        let js = manifest_dir().join("tests/js");
        assert!(
            js.join("node_modules/socket.io-client").is_dir(),
            "{} has no node_modules/socket.io-client: run `npm ci` there (scripts/test does)",
            js.display()
        );
        let ack_timeout = Duration::from_millis(
            config["timeout"]
                .as_u64()
                .unwrap_or(AGENT_DEFAULT_TIMEOUT_MS),
        );
        let reconnection = config["reconnection"].as_bool().unwrap_or(false);

        let mut command = Command::new("node");
        command
            .arg(js.join("agent.mjs"))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|err| {
            panic!("start the socket.io agent ({command:?}); is node installed? {err}")
        });
        let stdin = child.stdin.take().expect("agent stdin is piped");
        let stdout = child.stdout.take().expect("agent stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("agent stderr is piped");

        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                // Anything that is not a JSON line (a stray console.log) is
                // kept visible rather than dropped.
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"type": "raw", "line": line}));
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
                    .expect("agent stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        Agent {
            url: config["url"].as_str().unwrap_or_default().to_owned(),
            child,
            stdin,
            lines,
            backlog: VecDeque::new(),
            seen: Vec::new(),
            stderr,
            next_ack: 0,
            ack_timeout,
            reconnection,
        }
    }

    /// Sends one command line, e.g. `json!({"cmd": "disconnect"})`.
    pub async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        if let Err(err) = self.stdin.write_all(line.as_bytes()).await {
            panic!("send {cmd} to the agent: {err}");
        }
        if let Err(err) = self.stdin.flush().await {
            panic!("send {cmd} to the agent: {err}");
        }
    }

    /// Emits `event` with `args` (a JSON array), without an ack.
    pub async fn emit(&mut self, event: &str, args: Value) {
        assert!(
            args.is_array(),
            "emit args must be a JSON array, got {args}"
        );
        self.send(json!({"cmd": "emit", "event": event, "args": args}))
            .await;
    }

    /// Emits with an acknowledgement and returns the ack's arguments (a JSON
    /// array); panics if the server does not ack in time.
    pub async fn emit_ack(&mut self, event: &str, args: Value) -> Value {
        match self.try_emit_ack(event, args).await {
            Ok(reply) => reply,
            Err(error) => panic!("ack for {event:?} failed: {error}"),
        }
    }

    /// Like [`Agent::emit_ack`], but returns the agent's error ("timeout", or
    /// "socket has been disconnected") instead of panicking.
    pub async fn try_emit_ack(&mut self, event: &str, args: Value) -> Result<Value, String> {
        assert!(
            args.is_array(),
            "emit args must be a JSON array, got {args}"
        );
        self.next_ack += 1;
        let id = self.next_ack;
        self.send(json!({"cmd": "emit", "event": event, "args": args, "ack": id}))
            .await;
        // The agent reports its own timeout; the margin covers node's timers.
        let line = self
            .wait_for(
                |line| line["type"] == "ack" && line["id"] == id,
                self.ack_timeout + Duration::from_secs(2),
            )
            .await;
        match line["error"].as_str() {
            Some(error) => Err(error.to_owned()),
            None => Ok(line["args"].clone()),
        }
    }

    /// The engine's current transport name ("polling" or "websocket"), or
    /// `None` when not connected.
    pub async fn transport(&mut self) -> Option<String> {
        self.send(json!({"cmd": "transport"})).await;
        let line = self
            .wait_for(|line| line["type"] == "transport", super::TIMEOUT)
            .await;
        line["name"].as_str().map(str::to_owned)
    }

    /// The next line (buffered first), or `None` after `timeout` or once the
    /// agent has exited and everything was read.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(line) = self.backlog.pop_front() {
            return Some(line);
        }
        self.recv_until(Instant::now() + timeout).await.ok()
    }

    /// The first line matching `pred` (buffered lines first); the lines it
    /// skips stay buffered. Panics with every line seen on timeout.
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
                Err(Closed) => panic!("the agent exited while a test waited for a line"),
                Err(TimedOut) => panic!("no matching line from the agent within {timeout:?}"),
            }
        }
    }

    /// The args of the next `event` called `name`.
    pub async fn expect_event(&mut self, name: &str, timeout: Duration) -> Vec<Value> {
        let line = self
            .wait_for(
                |line| line["type"] == "event" && line["event"] == name,
                timeout,
            )
            .await;
        line["args"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the connection and returns the socket id. Without
    /// reconnection a `connect_error` is final, so it fails at once.
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
            panic!("expected connect_error, but the agent connected: {line}");
        }
        line["message"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits for a disconnect and returns its reason (e.g. "io server disconnect").
    pub async fn expect_disconnect(&mut self, timeout: Duration) -> String {
        let line = self
            .wait_for(|line| line["type"] == "disconnect", timeout)
            .await;
        line["reason"].as_str().unwrap_or_default().to_owned()
    }

    /// Fails if an event called `name` is buffered or arrives within `duration`.
    pub async fn assert_no_event(&mut self, name: &str, duration: Duration) {
        let is_it = |line: &Value| line["type"] == "event" && line["event"] == name;
        if let Some(line) = self.backlog.iter().find(|line| is_it(line)) {
            panic!("unexpected event {name:?}: {line}");
        }
        let deadline = Instant::now() + duration;
        loop {
            match self.recv_until(deadline).await {
                Ok(line) if is_it(&line) => panic!("unexpected event {name:?}: {line}"),
                Ok(line) => self.backlog.push_back(line),
                // An agent that has exited receives nothing more.
                Err(Closed) | Err(TimedOut) => return,
            }
        }
    }

    /// Disconnects cleanly and waits for the agent to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        self.send(json!({"cmd": "exit"})).await;
        match tokio::time::timeout(super::TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(err)) => panic!("wait for the agent to exit: {err}"),
            Err(_) => panic!("the agent did not exit within {:?}", super::TIMEOUT),
        }
    }

    /// Every line seen so far and the agent's stderr, for failure messages.
    pub fn report(&self) -> String {
        let lines: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        format!(
            "----- agent lines -----\n{}\n----- agent stderr -----\n{stderr}",
            lines.join("\n")
        )
    }

    async fn recv_until(&mut self, deadline: Instant) -> Result<Value, RecvError> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                Ok(line)
            }
            Ok(None) => Err(Closed),
            Err(_elapsed) => Err(TimedOut),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // kill_on_drop ends the process; this only explains a failing test.
        if std::thread::panicking() {
            eprintln!("----- agent for {} -----\n{}", self.url, self.report());
        }
    }
}
