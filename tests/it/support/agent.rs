//! A real socket.io-client (`tests/js/agent.mjs` under node), scripted over
//! JSON lines. Testing against the reference client catches protocol
//! mistakes that a hand-written Rust client would share with the server.
//!
//! An `Agent` dereferences to [`JsonLinesProcess`], which has the plumbing
//! shared with [`super::EchoAgent`]: `send`, `next`, `wait_for`, `assert_no`,
//! `expect_connect`, `expect_connect_error`, `expect_disconnect`, `exit`.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use serde_json::{Value, json};

use super::json_lines::JsonLinesProcess;

/// The agent's own default for `timeout` (ms), used for acks.
const AGENT_DEFAULT_TIMEOUT_MS: u64 = 5000;

pub struct Agent {
    process: JsonLinesProcess,
    next_ack: u64,
    ack_timeout: Duration,
}

impl Deref for Agent {
    type Target = JsonLinesProcess;

    fn deref(&self) -> &JsonLinesProcess {
        &self.process
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut JsonLinesProcess {
        &mut self.process
    }
}

impl Agent {
    /// Starts `node tests/js/agent.mjs '<config>'`; see that file for the
    /// config keys (`url` is required). Does not wait for the connection: follow
    /// with `expect_connect` or `expect_connect_error`.
    pub fn spawn(config: Value) -> Agent {
        let ack_timeout = Duration::from_millis(
            config["timeout"]
                .as_u64()
                .unwrap_or(AGENT_DEFAULT_TIMEOUT_MS),
        );
        let label = format!(
            "socket.io agent for {}",
            config["url"].as_str().unwrap_or_default()
        );
        Agent {
            process: JsonLinesProcess::spawn_node(label, "agent.mjs", "socket.io-client", &config),
            next_ack: 0,
            ack_timeout,
        }
    }

    /// A websocket-only client of `url` with `token`, connected and told it joined its own
    /// `private-user.{id}` channel (the `subscribed` event every connect brings).
    pub async fn connected(url: &str, token: &str) -> Agent {
        let mut agent = Agent::spawn(serde_json::json!({
            "url": url,
            "auth": {"token": token},
            "transports": ["websocket"],
        }));
        agent.expect_connect(super::TIMEOUT).await;
        agent.expect_event("subscribed", super::TIMEOUT).await;
        agent
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

    /// Subscribes to `channel`; panics unless the server grants it.
    pub async fn subscribe_ok(&mut self, channel: &str) {
        let answer = self
            .emit_ack("subscribe", json!([{"channel": channel}]))
            .await;
        assert_eq!(
            answer[0]["status"], "success",
            "subscribe {channel}: {answer}"
        );
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
        let timeout = self.ack_timeout + Duration::from_secs(2);
        let line = self
            .wait_for(|line| line["type"] == "ack" && line["id"] == id, timeout)
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

    /// Fails if an event called `name` is buffered or arrives within `duration`.
    pub async fn assert_no_event(&mut self, name: &str, duration: Duration) {
        self.assert_no(
            &format!("event {name:?}"),
            |line| line["type"] == "event" && line["event"] == name,
            duration,
        )
        .await;
    }
}
