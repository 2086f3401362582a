//! Webhooks: what happens to connections, channels and presence members, posted to the
//! application (`SWITCHBOARD_WEBHOOK_URL`) in signed batches.
//!
//! Each event is raised once per cluster by the node that sees it happen:
//! - `connected` / `disconnected`: the node holding the socket (a node that dies without
//!   saying so is reported by the node that sweeps it, one `disconnected` per user with
//!   `reason: "node_lost"`, since its socket ids died with it);
//! - `channel_occupied` / `channel_vacated`: the node whose change takes the channel's
//!   cluster-wide socket count from 0 to 1 or back (one Redis script decides, see
//!   [`crate::cluster::redis`]);
//! - `member_added` / `member_removed`: the node that announces `presence:joining` /
//!   `presence:leaving`, which is already decided once per cluster.
//!
//! The body is `{node_id, time_ms, events: [{id, name, time_ms, …}]}`, signed like the
//! back-end forwards (`X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of the body>`). A
//! batch leaves after [`Settings::batch_wait`] or when [`Settings::batch_max`] events wait;
//! one batch is in flight at a time, so events arrive in the order they happened on a node.
//! A failed batch (network error, timeout, 408, 429, 5xx) is retried with exponential
//! backoff; the same ids are sent again, so the application can drop repeats. Other 4xx
//! answers mean the application refuses it: the batch is dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{SIGNATURE_HEADER, sign};
use crate::metrics::Metrics;

/// First wait before a failed batch is sent again; doubled on each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The webhook settings (all from `SWITCHBOARD_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where batches are posted.
    pub url: reqwest::Url,
    /// The HMAC key (`SWITCHBOARD_BACKEND_SECRET`).
    pub secret: Arc<[u8]>,
    /// Event names sent; empty = all.
    pub events: Vec<Kind>,
    /// Longest an event waits for its batch to fill.
    pub batch_wait: Duration,
    /// Most events in one request.
    pub batch_max: usize,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Tries after the first before a batch is given up.
    pub retries: u32,
    /// Most events waiting to be sent; more are dropped and counted.
    pub queue: usize,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum Kind {
    /// A socket was admitted.
    Connected,
    /// A socket went away.
    Disconnected,
    /// A channel got its first subscriber in the cluster.
    ChannelOccupied,
    /// A channel lost its last subscriber in the cluster.
    ChannelVacated,
    /// A user joined a presence channel (first socket there).
    MemberAdded,
    /// A user left a presence channel (last socket there).
    MemberRemoved,
}

impl Kind {
    /// The event name on the wire and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
        }
    }
}

/// One event, serialised into its batch.
#[derive(Serialize)]
struct Event {
    id: String,
    name: &'static str,
    time_ms: u64,
    #[serde(flatten)]
    fields: Fields,
}

/// The fields an event carries besides its id, name and time.
#[derive(Serialize)]
#[serde(untagged)]
enum Fields {
    Socket {
        socket_id: Option<Box<str>>,
        user_id: Box<str>,
        protocol: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        /// For `node_lost`: how many of the user's sockets the dead node had.
        #[serde(skip_serializing_if = "Option::is_none")]
        sockets: Option<u64>,
        /// The node the socket was on.
        node_id: Box<str>,
    },
    Channel {
        channel: Box<str>,
    },
    Member {
        channel: Box<str>,
        user_id: Box<RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_info: Option<Box<RawValue>>,
    },
}

/// The parts of a presence member's JSON a webhook repeats.
#[derive(serde::Deserialize)]
struct Member {
    user_id: Box<RawValue>,
    user_info: Option<Box<RawValue>>,
}

enum Item {
    Event(Box<Event>),
    /// Send what is queued now and answer when done (shutdown).
    Flush(oneshot::Sender<()>),
}

/// The handle nodes raise events with; cheap to call when webhooks are off.
pub struct Webhooks {
    inner: Option<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Item>,
    allowed: Vec<Kind>,
    node_id: Arc<str>,
    /// This process: event ids are `{instance}-{sequence}`, unique across restarts.
    instance: String,
    sequence: AtomicU64,
    metrics: Metrics,
}

impl Webhooks {
    /// No webhooks.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Starts the sender task; must run inside a tokio runtime.
    pub fn start(settings: Settings, node_id: &str, metrics: Metrics) -> Result<Self, String> {
        let suffix = crate::transport::random_id()
            .map_err(|e| format!("no randomness for webhook ids: {e}"))?;
        let client = crate::http_client::build("webhooks", settings.timeout)?;
        let (queue, waiting) = mpsc::channel(settings.queue.max(1));
        let node_id: Arc<str> = node_id.into();
        let allowed = settings.events.clone();
        tokio::spawn(
            Sender {
                client,
                settings,
                node_id: node_id.clone(),
                metrics: metrics.clone(),
            }
            .run(waiting),
        );
        Ok(Self {
            inner: Some(Inner {
                queue,
                allowed,
                instance: format!("{node_id}.{}", &suffix[..8]),
                node_id,
                sequence: AtomicU64::new(0),
                metrics,
            }),
        })
    }

    /// A socket was admitted on this node.
    pub fn connected(&self, socket: &Arc<str>, user: &Arc<str>, protocol: &'static str) {
        self.raise(Kind::Connected, |node_id| Fields::Socket {
            socket_id: Some(socket.as_ref().into()),
            user_id: user.as_ref().into(),
            protocol: Some(protocol),
            reason: None,
            sockets: None,
            node_id,
        });
    }

    /// A socket of this node went away.
    pub fn disconnected(
        &self,
        socket: &Arc<str>,
        user: &Arc<str>,
        protocol: &'static str,
        reason: &'static str,
    ) {
        self.raise(Kind::Disconnected, |node_id| Fields::Socket {
            socket_id: Some(socket.as_ref().into()),
            user_id: user.as_ref().into(),
            protocol: Some(protocol),
            reason: Some(reason),
            sockets: None,
            node_id,
        });
    }

    /// A node died with `sockets` of `user`'s sockets; this node swept it.
    pub fn node_lost(&self, dead_node: &str, user: &str, sockets: u64) {
        let dead: Box<str> = dead_node.into();
        self.raise(Kind::Disconnected, |_| Fields::Socket {
            socket_id: None,
            user_id: user.into(),
            protocol: None,
            reason: Some("node_lost"),
            sockets: Some(sockets),
            node_id: dead,
        });
    }

    /// A channel's cluster-wide socket count went from 0 to more (`true`) or back to 0.
    pub fn channel(&self, channel: &str, occupied: bool) {
        if crate::channel::is_internal(channel) {
            return;
        }
        let kind = if occupied {
            Kind::ChannelOccupied
        } else {
            Kind::ChannelVacated
        };
        self.raise(kind, |_| Fields::Channel {
            channel: channel.into(),
        });
    }

    /// A presence member joined (`true`) or left a channel, once per cluster.
    pub fn member(&self, channel: &str, member: &RawValue, added: bool) {
        let Ok(parsed) = serde_json::from_str::<Member>(member.get()) else {
            return;
        };
        let kind = if added {
            Kind::MemberAdded
        } else {
            Kind::MemberRemoved
        };
        self.raise(kind, |_| Fields::Member {
            channel: channel.into(),
            user_id: parsed.user_id,
            user_info: parsed.user_info,
        });
    }

    fn raise(&self, kind: Kind, fields: impl FnOnce(Box<str>) -> Fields) {
        let Some(inner) = &self.inner else { return };
        if !inner.allowed.is_empty() && !inner.allowed.contains(&kind) {
            return;
        }
        let sequence = inner.sequence.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            id: format!("{}-{sequence}", inner.instance),
            name: kind.name(),
            time_ms: now_ms(),
            fields: fields(inner.node_id.as_ref().into()),
        };
        if inner.queue.try_send(Item::Event(Box::new(event))).is_err() {
            inner
                .metrics
                .webhook_failures
                .with_label_values(&["queue_full"])
                .inc();
            tracing::warn!(event = kind.name(), "webhook queue full; event dropped");
        }
    }

    /// Sends what is queued, waiting at most `within` (at shutdown).
    pub async fn flush(&self, within: Duration) {
        let Some(inner) = &self.inner else { return };
        let (done, flushed) = oneshot::channel();
        if inner.queue.send(Item::Flush(done)).await.is_ok()
            && tokio::time::timeout(within, flushed).await.is_err()
        {
            tracing::warn!("webhooks not all sent before shutdown");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a batch was not accepted.
enum Failure {
    /// Worth trying again.
    Transient(String),
    /// The application refused it.
    Refused(u16),
}

/// The task that batches and posts events.
struct Sender {
    client: reqwest::Client,
    settings: Settings,
    node_id: Arc<str>,
    metrics: Metrics,
}

/// Events gathered for sending, and the flushes waiting for them.
#[derive(Default)]
struct Batch {
    events: Vec<Event>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Batch {
    fn add(&mut self, item: Item) {
        match item {
            Item::Event(event) => self.events.push(*event),
            Item::Flush(done) => self.flushes.push(done),
        }
    }
}

/// The body of one request.
#[derive(Serialize)]
struct Body<'a> {
    node_id: &'a str,
    time_ms: u64,
    events: &'a [Event],
}

impl Sender {
    async fn run(self, mut waiting: mpsc::Receiver<Item>) {
        let max = self.settings.batch_max.max(1);
        while let Some(first) = waiting.recv().await {
            let deadline = tokio::time::Instant::now() + self.settings.batch_wait;
            let mut batch = Batch::default();
            batch.add(first);
            while batch.events.len() < max && batch.flushes.is_empty() {
                match tokio::time::timeout_at(deadline, waiting.recv()).await {
                    Ok(Some(item)) => batch.add(item),
                    Ok(None) | Err(_) => break,
                }
            }
            // A flush sends everything queued before it, without waiting for the batch time.
            if !batch.flushes.is_empty() {
                while let Ok(item) = waiting.try_recv() {
                    batch.add(item);
                }
            }
            for chunk in batch.events.chunks(max) {
                self.deliver(chunk).await;
            }
            for done in batch.flushes {
                let _ = done.send(());
            }
        }
    }

    /// Posts one batch, trying again with backoff; gives up after the configured retries.
    async fn deliver(&self, events: &[Event]) {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 0..=self.settings.retries {
            let failure = match self.post(events).await {
                Ok(()) => {
                    for event in events {
                        self.metrics
                            .webhook_events
                            .with_label_values(&[event.name])
                            .inc();
                    }
                    return;
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Refused(status) => {
                    self.metrics
                        .webhook_failures
                        .with_label_values(&["refused"])
                        .inc();
                    tracing::warn!(
                        status,
                        events = events.len(),
                        "webhook batch refused by the application; dropped"
                    );
                    return;
                }
                Failure::Transient(why) => {
                    self.metrics
                        .webhook_failures
                        .with_label_values(&["retry"])
                        .inc();
                    tracing::warn!(attempt, error = %why, "webhook batch not delivered; will retry");
                }
            }
            if attempt < self.settings.retries {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        self.metrics
            .webhook_failures
            .with_label_values(&["given_up"])
            .inc();
        tracing::error!(
            events = events.len(),
            retries = self.settings.retries,
            "webhook batch given up"
        );
    }

    async fn post(&self, events: &[Event]) -> Result<(), Failure> {
        let body = serde_json::to_vec(&Body {
            node_id: &self.node_id,
            time_ms: now_ms(),
            events,
        })
        .map_err(|e| Failure::Transient(format!("cannot encode: {e}")))?;
        let response = self
            .client
            .post(self.settings.url.clone())
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.settings.secret, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| {
                Failure::Transient(if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "unreachable".to_owned()
                })
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
            Err(Failure::Transient(format!("answered {}", status.as_u16())))
        } else {
            Err(Failure::Refused(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat() {
        let event = Event {
            id: "n1.abcd-0".into(),
            name: Kind::Disconnected.name(),
            time_ms: 5,
            fields: Fields::Socket {
                socket_id: None,
                user_id: "7".into(),
                protocol: None,
                reason: Some("node_lost"),
                sockets: Some(2),
                node_id: "n2".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"id": "n1.abcd-0", "name": "disconnected", "time_ms": 5,
                "socket_id": null, "user_id": "7", "protocol": null, "reason": "node_lost",
                "sockets": 2, "node_id": "n2"})
        );
        let member =
            RawValue::from_string(r#"{"user_id":7,"user_info":{"name":"A"}}"#.into()).unwrap();
        let parsed: Member = serde_json::from_str(member.get()).unwrap();
        let event = Event {
            id: "x-1".into(),
            name: Kind::MemberAdded.name(),
            time_ms: 6,
            fields: Fields::Member {
                channel: "presence-a".into(),
                user_id: parsed.user_id,
                user_info: parsed.user_info,
            },
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"id": "x-1", "name": "member_added", "time_ms": 6,
                "channel": "presence-a", "user_id": 7, "user_info": {"name": "A"}})
        );
    }
}
