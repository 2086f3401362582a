//! A real socket.io-client (`tests/js/agent.mjs` under node), scripted over
//! JSON lines. Testing against the reference client catches protocol
//! mistakes that a hand-written Rust client would share with the server.
//!
//! The process plumbing (buffered waits, failure reports) is
//! [`super::json_lines::JsonLinesProcess`], shared with [`super::EchoAgent`].

use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{Value, json};

use super::json_lines::JsonLinesProcess;

/// The agent's own default for `timeout` (ms), used for acks.
const AGENT_DEFAULT_TIMEOUT_MS: u64 = 5000;

pub struct Agent {
    process: JsonLinesProcess,
    next_ack: u64,
    ack_timeout: Duration,
    reconnection: bool,
}

impl Agent {
    /// Starts `node tests/js/agent.mjs '<config>'`; see that file for the
    /// config keys (`url` is required). Does not wait for the connection: follow
    /// with [`Agent::expect_connect`] or [`Agent::expect_connect_error`].
    pub fn spawn(config: Value) -> Agent {
        let ack_timeout = Duration::from_millis(
            config["timeout"]
                .as_u64()
                .unwrap_or(AGENT_DEFAULT_TIMEOUT_MS),
        );
        let reconnection = config["reconnection"].as_bool().unwrap_or(false);
        let label = format!(
            "socket.io agent for {}",
            config["url"].as_str().unwrap_or_default()
        );
        Agent {
            process: JsonLinesProcess::spawn_node(label, "agent.mjs", "socket.io-client", &config),
            next_ack: 0,
            ack_timeout,
            reconnection,
        }
    }

    /// Sends one command line, e.g. `json!({"cmd": "disconnect"})`.
    pub async fn send(&mut self, cmd: Value) {
        self.process.send(cmd).await;
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
        self.process.next(timeout).await
    }

    /// The first line matching `pred` (buffered lines first); the lines it
    /// skips stay buffered. Panics on timeout.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.process.wait_for(pred, timeout).await
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
        self.process
            .expect_connect(!self.reconnection, timeout)
            .await
    }

    /// Waits for a refused connection and returns its message; fails at once
    /// if the connection succeeds instead.
    pub async fn expect_connect_error(&mut self, timeout: Duration) -> String {
        self.process.expect_connect_error(timeout).await
    }

    /// Waits for a disconnect and returns its reason (e.g. "io server disconnect").
    pub async fn expect_disconnect(&mut self, timeout: Duration) -> String {
        self.process.expect_disconnect(timeout).await
    }

    /// Fails if an event called `name` is buffered or arrives within `duration`.
    pub async fn assert_no_event(&mut self, name: &str, duration: Duration) {
        self.process
            .assert_no(
                &format!("event {name:?}"),
                |line| line["type"] == "event" && line["event"] == name,
                duration,
            )
            .await;
    }

    /// Disconnects cleanly and waits for the agent to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        self.process.exit().await
    }

    /// Every line seen so far and the agent's stderr, for failure messages.
    pub fn report(&self) -> String {
        self.process.report()
    }
}
