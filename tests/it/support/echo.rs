//! A real Laravel Echo client (`tests/js/echo-agent.mjs`: laravel-echo 2.x with
//! its socket.io connector), scripted over JSON lines. Echo is what Laravel
//! front ends run, so these tests hold the server to Echo's conventions
//! (`subscribe`/`unsubscribe` with `{channel, auth}`, `client event` whispers,
//! `presence:*` events) as Echo itself implements them; echo-agent.mjs's header
//! shows the frames.
//!
//! An `EchoAgent` dereferences to [`JsonLinesProcess`] for what it shares
//! with [`super::Agent`]: `send`, `next`, `wait_for`, `assert_no`,
//! `expect_connect`, `expect_connect_error`, `expect_disconnect`, `exit`.
//!
//! Channel names in the agent's lines are the full names Echo subscribes:
//! `private("orders.1")` prints `"channel": "private-orders.1"`, and the helpers
//! below that take a channel to wait for want that full name.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use serde_json::{Value, json};

use super::json_lines::JsonLinesProcess;

/// Where a whisper goes: Echo whispers only on private and presence channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `Echo.private(name)`: the channel `private-{name}`.
    Private,
    /// `Echo.join(name)`: the channel `presence-{name}`.
    Presence,
}

impl ChannelKind {
    fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Private => "private",
            ChannelKind::Presence => "presence",
        }
    }
}

pub struct EchoAgent {
    process: JsonLinesProcess,
}

impl Deref for EchoAgent {
    type Target = JsonLinesProcess;

    fn deref(&self) -> &JsonLinesProcess {
        &self.process
    }
}

impl DerefMut for EchoAgent {
    fn deref_mut(&mut self) -> &mut JsonLinesProcess {
        &mut self.process
    }
}

impl EchoAgent {
    /// Starts `node tests/js/echo-agent.mjs '<config>'`; see that file for the
    /// config keys (`url` is required, `token` is the JWT). Echo connects at
    /// once; follow with `expect_connect` or `expect_connect_error`.
    pub fn spawn(config: Value) -> EchoAgent {
        let label = format!(
            "Echo agent for {}",
            config["url"].as_str().unwrap_or_default()
        );
        EchoAgent {
            process: JsonLinesProcess::spawn_node(label, "echo-agent.mjs", "laravel-echo", &config),
        }
    }

    /// `Echo.channel(channel).listen(event, …)` for each of `events`; each
    /// event arrives as an `event` line (see [`EchoAgent::expect_event`]).
    pub async fn channel(&mut self, channel: &str, events: &[&str]) {
        self.send(json!({"cmd": "channel", "channel": channel, "listen": events}))
            .await;
    }

    /// `Echo.private(channel).listen(event, …)` for each of `events`; Echo
    /// subscribes `private-{channel}`.
    pub async fn private(&mut self, channel: &str, events: &[&str]) {
        self.send(json!({"cmd": "private", "channel": channel, "listen": events}))
            .await;
    }

    /// `Echo.join(channel)` with `here`, `joining` and `leaving` callbacks;
    /// Echo subscribes `presence-{channel}`.
    pub async fn join(&mut self, channel: &str) {
        self.send(json!({"cmd": "join", "channel": channel})).await;
    }

    /// `.whisper(event, data)` on `Echo.private(channel)` or `Echo.join(channel)`.
    pub async fn whisper(&mut self, kind: ChannelKind, channel: &str, event: &str, data: Value) {
        self.send(json!({
            "cmd": "whisper", "kind": kind.as_str(), "channel": channel, "event": event, "data": data,
        }))
        .await;
    }

    /// `.listenForWhisper(event, …)` on `Echo.private(channel)` or `Echo.join(channel)`.
    pub async fn listen_for_whisper(&mut self, kind: ChannelKind, channel: &str, event: &str) {
        self.send(json!({
            "cmd": "listenForWhisper", "kind": kind.as_str(), "channel": channel, "event": event,
        }))
        .await;
    }

    /// `Echo.leave(channel)`: unsubscribes `channel`, `private-channel` and
    /// `presence-channel`, whichever Echo holds.
    pub async fn leave(&mut self, channel: &str) {
        self.send(json!({"cmd": "leave", "channel": channel})).await;
    }

    /// `Echo.socketId()`: what an app sends as `X-Socket-ID` to leave the
    /// sender out of a broadcast; `None` while not connected.
    pub async fn socket_id(&mut self) -> Option<String> {
        self.send(json!({"cmd": "socketId"})).await;
        let line = self
            .wait_for(|line| line["type"] == "socketId", super::TIMEOUT)
            .await;
        line["id"].as_str().map(str::to_owned)
    }

    /// `Echo.disconnect()`.
    pub async fn disconnect(&mut self) {
        self.send(json!({"cmd": "disconnect"})).await;
    }

    /// The server's `subscribed` answer for `channel` (a full name), e.g.
    /// `{"channel": "news", "status": "success"}`. Echo itself never waits for
    /// it; a test does, before it broadcasts.
    pub async fn expect_subscribed(&mut self, channel: &str, timeout: Duration) -> Value {
        self.expect_raw_for(channel, "subscribed", "subscription_error", timeout)
            .await
    }

    /// The server's `subscription_error` for `channel` (a full name), e.g.
    /// `{"channel": "presence-room.1", "error": "forbidden"}`; fails at once
    /// if the subscription succeeds instead.
    pub async fn expect_subscription_error(&mut self, channel: &str, timeout: Duration) -> Value {
        self.expect_raw_for(channel, "subscription_error", "subscribed", timeout)
            .await
    }

    /// The data of the next `event` (as named in `listen`) on `channel`.
    pub async fn expect_event(&mut self, channel: &str, event: &str, timeout: Duration) -> Value {
        self.expect_line("event", channel, Some(event), timeout)
            .await["data"]
            .take()
    }

    /// The data of the next whisper `event` (without `client-`) on `channel`.
    pub async fn expect_whisper(&mut self, channel: &str, event: &str, timeout: Duration) -> Value {
        self.expect_line("whisper", channel, Some(event), timeout)
            .await["data"]
            .take()
    }

    /// The members `here` reported for the presence `channel` (Echo hands
    /// over each member's `user_info`).
    pub async fn expect_here(&mut self, channel: &str, timeout: Duration) -> Vec<Value> {
        let line = self.expect_line("here", channel, None, timeout).await;
        line["members"].as_array().cloned().unwrap_or_default()
    }

    /// The `user_info` of the next member `joining` the presence `channel`.
    pub async fn expect_joining(&mut self, channel: &str, timeout: Duration) -> Value {
        self.expect_line("joining", channel, None, timeout).await["member"].take()
    }

    /// The `user_info` of the next member `leaving` the presence `channel`.
    pub async fn expect_leaving(&mut self, channel: &str, timeout: Duration) -> Value {
        self.expect_line("leaving", channel, None, timeout).await["member"].take()
    }

    /// The args of the next raw socket event called `event`, whatever Echo
    /// makes of it (`subscribed`, `error`, a broadcast, …).
    pub async fn expect_raw(&mut self, event: &str, timeout: Duration) -> Vec<Value> {
        let line = self
            .wait_for(
                |line| line["type"] == "raw" && line["event"] == event,
                timeout,
            )
            .await;
        line["args"].as_array().cloned().unwrap_or_default()
    }

    async fn expect_line(
        &mut self,
        kind: &str,
        channel: &str,
        event: Option<&str>,
        timeout: Duration,
    ) -> Value {
        self.wait_for(
            |line| {
                line["type"] == kind
                    && line["channel"] == channel
                    && event.is_none_or(|event| line["event"] == event)
            },
            timeout,
        )
        .await
    }

    /// The payload of the raw `wanted` event about `channel`; panics at once
    /// on the `other` one (subscribed vs subscription_error).
    async fn expect_raw_for(
        &mut self,
        channel: &str,
        wanted: &str,
        other: &str,
        timeout: Duration,
    ) -> Value {
        let mut line = self
            .wait_for(
                |line| {
                    line["type"] == "raw"
                        && (line["event"] == wanted || line["event"] == other)
                        && line["args"][0]["channel"] == channel
                },
                timeout,
            )
            .await;
        if line["event"] != wanted {
            panic!("expected {wanted} for {channel:?}, got {line}");
        }
        line["args"][0].take()
    }
}
