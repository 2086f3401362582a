//! One soak client for the whole run: connect (any of the three kinds), subscribe to its main
//! channel and its presence and extra channels, count what arrives, and obey the commands the
//! scenario gives it (reconnect, move to a new extra channel, stop), reconnecting after a
//! failure or a drop until it is stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore};

use super::plan::Kind;
use super::track::Tracker;
use crate::cli::Protocol;
use crate::client::{ClientContext, Failure, Failures, HandshakeError, Read, Session};
use crate::polling::PollingSession;
use crate::publish::EVENT;
use crate::wire::{self, Answer, Incoming, Reply};

/// How long a client waits before it tries again after a failed handshake or a drop.
const RETRY: Duration = Duration::from_secs(1);

/// Command bits of a [`Slot`].
pub const STOP: u8 = 1;
pub const RECONNECT: u8 = 2;
pub const RESUBSCRIBE: u8 = 4;

/// The name of extra channel `n`.
fn extra_channel(n: u64) -> String {
    format!("soak.extra.{n}")
}

/// The scenario's handle on one client: commands waiting, a wake-up, whether it is connected.
#[derive(Default)]
pub struct Slot {
    commands: AtomicU8,
    notify: Notify,
    connected: AtomicBool,
}

impl Slot {
    /// Gives the client `command` (bits); it acts on it when it next wakes.
    pub fn command(&self, command: u8) {
        self.commands.fetch_or(command, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Whether the client has a session now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Counters every client adds to; the scenario reads differences between samples.
#[derive(Default)]
pub struct Counters {
    /// Unique deliveries of main-channel messages.
    pub delivered: AtomicU64,
    /// Deliveries lost (gaps; late arrivals take theirs back).
    pub lost: AtomicI64,
    /// Of `lost`: seqs between a session's floor and its first, higher, seq.
    pub lost_at_join: AtomicU64,
    /// Of `lost`: seqs a still-connected client had not received at the end.
    pub lost_at_end: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    /// Messages on a main channel not the client's, or unreadable.
    pub misrouted: AtomicU64,
    /// Handshakes that succeeded, first ones included.
    pub handshakes: AtomicU64,
    /// Polite closes followed by a new handshake (churn).
    pub reconnects: AtomicU64,
    pub failures: FailureCounters,
    /// Subscribe and unsubscribe requests sent after the handshake, and their answers.
    pub subscribes: AtomicU64,
    pub subscribed: AtomicU64,
    pub unsubscribes: AtomicU64,
    pub unsubscribed: AtomicU64,
    /// Requests refused after the handshake.
    pub refused: AtomicU64,
    /// Presence events received (joins, leaves, member lists).
    pub presence_events: AtomicU64,
    /// Sessions ended by the node or the network.
    pub dropped: AtomicU64,
    /// Clients with a session now.
    pub connected: AtomicI64,
    /// Clients that finished their first handshake attempt, failed or not.
    pub first_attempts: AtomicU64,
}

/// Handshake failures by kind, as atomics.
#[derive(Default)]
pub struct FailureCounters {
    tcp: AtomicU64,
    upgrade: AtomicU64,
    connect_error: AtomicU64,
    subscribe: AtomicU64,
    timeout: AtomicU64,
    protocol: AtomicU64,
}

impl FailureCounters {
    fn add(&self, failure: Failure) {
        let count = match failure {
            Failure::Tcp => &self.tcp,
            Failure::Upgrade => &self.upgrade,
            Failure::ConnectError => &self.connect_error,
            Failure::Subscribe => &self.subscribe,
            Failure::Timeout => &self.timeout,
            Failure::Protocol => &self.protocol,
        };
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Failures {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Failures {
            tcp: get(&self.tcp),
            upgrade: get(&self.upgrade),
            connect_error: get(&self.connect_error),
            subscribe: get(&self.subscribe),
            timeout: get(&self.timeout),
            protocol: get(&self.protocol),
        }
    }
}

/// Failures by name, for the verdict.
pub fn failures_by_name(f: &Failures) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("tcp", f.tcp),
        ("upgrade", f.upgrade),
        ("connect_error", f.connect_error),
        ("subscribe", f.subscribe),
        ("timeout", f.timeout),
        ("protocol", f.protocol),
    ])
}

/// What all clients of a soak share.
pub struct Shared {
    pub context: Arc<ClientContext>,
    /// The bench's clock: `ts` in messages is microseconds since this instant.
    pub epoch: Instant,
    /// Per main channel, the next seq to publish: assigned before the PUBLISH is sent.
    pub next_seq: Vec<AtomicU64>,
    pub counters: Counters,
    /// Publish-to-receive latency since the last sample, in microseconds.
    pub latency: Mutex<Histogram<u64>>,
    pub slots: Vec<Slot>,
    /// Handshakes in flight at most.
    pub handshakes: Semaphore,
    /// The next extra channel's number.
    pub next_extra: AtomicU64,
    /// The first handshake failure and the first refusal, for stderr.
    pub first_problems: Mutex<Vec<String>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn note(&self, problem: String) {
        let mut first = self
            .first_problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.len() < 10 {
            eprintln!("switchboard-bench: soak: {problem}");
            first.push(problem);
        }
    }
}

/// What client `index` is.
pub struct Identity {
    pub index: usize,
    pub kind: Kind,
    pub channel: u32,
    /// `presence-soak.{k}`, for the clients that join one.
    pub presence: Option<String>,
}

/// The part of a message's data a client reads (`pad` is skipped).
#[derive(Deserialize)]
struct Stamp {
    ch: u32,
    seq: u64,
    ts: u64,
}

/// A session of either transport.
enum Link {
    WebSocket(Session),
    Polling(PollingSession),
}

impl Link {
    async fn read(&mut self) -> Read {
        match self {
            Link::WebSocket(s) => s.read().await,
            Link::Polling(s) => s.read().await,
        }
    }

    async fn send(&mut self, text: String) -> Result<(), HandshakeError> {
        match self {
            Link::WebSocket(s) => s.send(text).await,
            Link::Polling(s) => s.send(text).await,
        }
    }

    async fn request(
        &mut self,
        text: String,
        answer: impl Fn(&str) -> Answer,
    ) -> Result<(), HandshakeError> {
        match self {
            Link::WebSocket(s) => s.request(text, Failure::Subscribe, answer).await,
            Link::Polling(s) => s.request(text, Failure::Subscribe, answer).await,
        }
    }

    async fn close(self) {
        match self {
            Link::WebSocket(s) => s.close().await,
            Link::Polling(s) => s.close().await,
        }
    }
}

impl Kind {
    fn protocol(self) -> Protocol {
        match self {
            Kind::Json => Protocol::Json,
            Kind::SocketioWebsocket | Kind::SocketioPolling => Protocol::Socketio,
        }
    }
}

/// How a session ended.
enum End {
    Stopped,
    Reconnect,
    Dropped,
}

/// Runs client `who` until it is told to stop.
pub async fn run(shared: Arc<Shared>, who: Identity) {
    let slot = &shared.slots[who.index];
    let mut extra: Option<u64> = None;
    let mut first = true;
    loop {
        if slot.commands.load(Ordering::Acquire) & STOP != 0 {
            return;
        }
        let opened = open(&shared, &who, extra).await;
        if first {
            first = false;
            shared
                .counters
                .first_attempts
                .fetch_add(1, Ordering::Relaxed);
        }
        let link = match opened {
            Ok(link) => link,
            Err(e) => {
                shared.counters.failures.add(e.failure);
                shared.note(format!(
                    "client {} ({:?}) handshake failed: {:?}: {}",
                    who.index, who.kind, e.failure, e.detail
                ));
                if wait_or_stop(slot, RETRY).await {
                    return;
                }
                continue;
            }
        };
        shared.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        // Commands given to the previous session are void.
        slot.commands
            .fetch_and(!(RECONNECT | RESUBSCRIBE), Ordering::AcqRel);
        let floor = shared.next_seq[who.channel as usize].load(Ordering::Acquire);
        slot.connected.store(true, Ordering::Release);
        shared.counters.connected.fetch_add(1, Ordering::Relaxed);
        let end = hold(&shared, slot, &who, link, Tracker::new(floor), &mut extra).await;
        slot.connected.store(false, Ordering::Release);
        shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stopped => return,
            End::Reconnect => {
                shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            End::Dropped => {
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                shared.note(format!(
                    "client {} ({:?}) was disconnected by the node or the network",
                    who.index, who.kind
                ));
                if wait_or_stop(slot, RETRY).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `pause` unless stopped first; true when stopped.
async fn wait_or_stop(slot: &Slot, pause: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + pause;
    loop {
        if slot.commands.load(Ordering::Acquire) & STOP != 0 {
            return true;
        }
        tokio::select! {
            () = slot.notify.notified() => {}
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// The full handshake: connect, the main channel, then presence and extra channels.
async fn open(shared: &Shared, who: &Identity, extra: Option<u64>) -> Result<Link, HandshakeError> {
    let Ok(_permit) = shared.handshakes.acquire().await else {
        return Err(HandshakeError::new(
            Failure::Protocol,
            "the handshake semaphore is closed",
        ));
    };
    let context = &shared.context;
    let protocol = who.kind.protocol();
    // Boxed: the handshakes' state would otherwise stay in every client's task.
    let mut link = match who.kind {
        Kind::SocketioWebsocket | Kind::Json => {
            Link::WebSocket(Box::pin(context.open_as(who.index, protocol)).await?)
        }
        Kind::SocketioPolling => {
            Link::Polling(Box::pin(PollingSession::open(context, who.index)).await?)
        }
    };
    let channels = who.presence.iter().cloned().chain(extra.map(extra_channel));
    for name in channels {
        let request = link.request(wire::subscribe_to(protocol, &name), |text| {
            wire::subscribe_answer_for(protocol, text, &name)
        });
        match tokio::time::timeout(context.timeout(), Box::pin(request)).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                return Err(HandshakeError::new(
                    Failure::Timeout,
                    format!(
                        "subscribing to {name} took longer than {:?}",
                        context.timeout()
                    ),
                ));
            }
        }
    }
    Ok(link)
}

/// Holds a session: counts what arrives and obeys commands until it ends.
async fn hold(
    shared: &Shared,
    slot: &Slot,
    who: &Identity,
    mut link: Link,
    mut tracker: Tracker,
    extra: &mut Option<u64>,
) -> End {
    let protocol = who.kind.protocol();
    let counters = &shared.counters;
    loop {
        let read = tokio::select! {
            biased;
            () = slot.notify.notified() => {
                let commands = slot.commands.fetch_and(STOP, Ordering::AcqRel);
                if commands & STOP != 0 {
                    let next = shared.next_seq[who.channel as usize].load(Ordering::Acquire);
                    let tail = tracker.tail(next);
                    counters.lost.fetch_add(tail as i64, Ordering::Relaxed);
                    counters.lost_at_end.fetch_add(tail, Ordering::Relaxed);
                    Box::pin(link.close()).await;
                    return End::Stopped;
                }
                if commands & RECONNECT != 0 {
                    Box::pin(link.close()).await;
                    return End::Reconnect;
                }
                if commands & RESUBSCRIBE != 0 {
                    let n = shared.next_extra.fetch_add(1, Ordering::Relaxed);
                    counters.subscribes.fetch_add(1, Ordering::Relaxed);
                    if link.send(wire::subscribe_to(protocol, &extra_channel(n))).await.is_err() {
                        return End::Dropped;
                    }
                    if let Some(old) = extra.replace(n) {
                        counters.unsubscribes.fetch_add(1, Ordering::Relaxed);
                        if link.send(wire::unsubscribe_from(protocol, &extra_channel(old))).await.is_err() {
                            return End::Dropped;
                        }
                    }
                }
                continue;
            }
            read = link.read() => read,
        };
        let text = match read {
            Read::Text(text) => text,
            Read::Ping => {
                if link.send(wire::ENGINEIO_PONG.to_owned()).await.is_err() {
                    return End::Dropped;
                }
                continue;
            }
            Read::Closed => return End::Dropped,
        };
        let stamp = match wire::incoming(protocol, &text) {
            Incoming::Event(event) => event.data::<Stamp>(EVENT),
            _ => None,
        };
        if let Some(data) = stamp {
            match data {
                Ok(stamp) if stamp.ch == who.channel => {
                    let change = tracker.record(stamp.seq);
                    if change.lost != 0 {
                        counters.lost.fetch_add(change.lost, Ordering::Relaxed);
                    }
                    if change.lost_at_join > 0 {
                        counters
                            .lost_at_join
                            .fetch_add(change.lost_at_join, Ordering::Relaxed);
                    }
                    if change.reordered {
                        counters.reordered.fetch_add(1, Ordering::Relaxed);
                    }
                    if change.duplicate {
                        counters.duplicated.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                        let latency = shared.now_us().saturating_sub(stamp.ts);
                        shared
                            .latency
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .saturating_record(latency);
                    }
                }
                _ => {
                    counters.misrouted.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        match wire::reply(protocol, &text) {
            Reply::Subscribed(_) => {
                counters.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Unsubscribed(_) => {
                counters.unsubscribed.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Refused(detail) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                shared.note(format!(
                    "client {} ({:?}) request refused: {detail}",
                    who.index, who.kind
                ));
            }
            Reply::Presence => {
                counters.presence_events.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Other => {}
        }
    }
}
