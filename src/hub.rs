//! The node's local state: its sockets and which channels they are in, and nothing else.
//!
//! The hub reports the first member of a channel and the last one to leave, so the node
//! subscribes to the bus exactly for the channels its sockets need. A broadcast is encoded
//! once per codec and the same bytes are queued to every local member; the hub never
//! waits on a socket.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::SetOnce;

use crate::auth::Principal;
use crate::limit::SocketLimit;
use crate::metrics::Protocol;
use crate::outbox::{CloseReason, Frame, Outbox, PushError, Pushed, Write};
use crate::pacing::Pacing;

/// A socket id, unique across the cluster (Laravel's `X-Socket-ID`).
pub type SocketId = Arc<str>;

/// The wire formats a broadcast can be encoded in, one per kind of client.
#[derive(Debug, Clone, Copy)]
pub enum Codec {
    /// Socket.IO v5 on the `/` namespace: `42["event","channel",data]`.
    SocketIo,
    /// Socket.IO v5 on `/`, the data alone: `42["event",data]`, as a socket.io server's
    /// `socket.to(channel).emit(event, data)` sends it.
    SocketIoData,
    /// The plain WebSocket protocol: `{"type":"event","channel":…,"payload":data}`.
    Json,
    /// Socket.IO on a namespace a feature defines: `42/ns,["event",data]`, without the channel,
    /// with an acknowledgement id where the namespace asks for one.
    Namespace(&'static Namespace),
}

/// A Socket.IO namespace beside `/`, as the feature that owns it describes it to the hub.
#[derive(Debug)]
pub struct Namespace {
    /// Its name, e.g. `/notifications`.
    pub name: &'static str,
    /// The acknowledgement id a broadcast of `event` with `data` asks for, if any.
    pub ack_id: fn(event: &str, data: &serde_json::value::RawValue) -> Option<u64>,
}

/// Cached encodings per broadcast: `/` in both shapes, JSON, and one feature namespace (a node
/// has one today, `/notifications`; a second would need a slot of its own).
const CODECS: usize = 4;

impl Codec {
    /// The kind of client it serves, for metrics.
    pub fn protocol(self) -> Protocol {
        match self {
            Codec::SocketIo | Codec::SocketIoData | Codec::Namespace(_) => Protocol::SocketIo,
            Codec::Json => Protocol::Json,
        }
    }

    /// Its Socket.IO namespace; `None` for the JSON protocol.
    fn namespace(self) -> Option<&'static str> {
        match self {
            Codec::SocketIo | Codec::SocketIoData => Some("/"),
            Codec::Namespace(namespace) => Some(namespace.name),
            Codec::Json => None,
        }
    }

    /// Its place in a broadcast's cache of encodings.
    fn slot(self) -> usize {
        match self {
            Codec::SocketIo => 0,
            Codec::Json => 1,
            Codec::Namespace(_) => 2,
            Codec::SocketIoData => 3,
        }
    }

    /// The frame telling a client the server ended its socket on purpose, so it does not
    /// reconnect by itself (Socket.IO's DISCONNECT packet); `None` where the close frame says it.
    pub fn farewell(self) -> Option<Frame> {
        let namespace = self.namespace()?;
        let mut out = crate::protocol::engineio::message(4 + namespace.len());
        crate::protocol::socketio::write_disconnect(&mut out, namespace);
        Some(Frame::from(out))
    }

    /// The frames telling a client its token expired, before its connection closes: on
    /// Socket.IO the event `auth:expired` (`{"message": "token expired"}`) then DISCONNECT, so
    /// the client does not reconnect by itself with the stale token; on the JSON endpoint an
    /// `ERROR` frame `TOKEN_EXPIRED` (the close frame, 1008 `token_expired`, follows).
    pub fn expiry_notice(self) -> Vec<Frame> {
        match self.namespace() {
            None => {
                let mut out = String::with_capacity(64);
                let code = crate::protocol::json::ErrorCode::TokenExpired;
                crate::protocol::json::write_error(&mut out, code, "token expired", None);
                vec![Frame::from(out)]
            }
            Some(namespace) => {
                let mut out = crate::protocol::engineio::message(64);
                let notice = serde_json::json!({"message": "token expired"});
                crate::protocol::socketio::write_event_value(
                    &mut out,
                    namespace,
                    "auth:expired",
                    &notice,
                );
                std::iter::once(Frame::from(out))
                    .chain(self.farewell())
                    .collect()
            }
        }
    }
}

/// Time left until `expires` (seconds since the Unix epoch); zero once it passed.
fn until(expires: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(expires))
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// A socket as the hub sees it: where to queue its frames and which channels it is in.
#[derive(Debug)]
pub struct Member {
    /// The socket id.
    pub id: SocketId,
    /// Who the socket belongs to.
    pub principal: Principal,
    /// How broadcasts are encoded for it.
    pub codec: Codec,
    /// Its outgoing queue.
    pub outbox: Arc<Outbox>,
    /// Its subscribe requests' rate.
    pub subscribe_limit: SocketLimit,
    /// Its events waiting for the back-end.
    pub forwards: AtomicU32,
    /// When its token stops being accepted, in seconds since the Unix epoch (0: never); a
    /// refresh with a newer token of the same user pushes it out.
    expires: AtomicU64,
    /// A short list: sockets join few channels (at most `max_subscriptions`), and a Vec is
    /// smaller per idle socket than a hash set.
    channels: Mutex<Vec<Arc<str>>>,
}

impl Member {
    /// Closes the socket when its token expires, telling the client why
    /// ([`Codec::expiry_notice`]): one timer task per socket whose token has `exp`, which ends
    /// early when the socket's connection closes and does nothing if the socket is gone.
    pub fn close_at_expiry(self: &Arc<Self>) {
        let mut armed = self.expires.load(Ordering::Relaxed);
        if armed == 0 {
            return;
        }
        let socket = Arc::downgrade(self);
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = outbox.closed() => return,
                    () = tokio::time::sleep(until(armed)) => {}
                }
                let Some(socket) = socket.upgrade() else {
                    return;
                };
                // A refresh may have pushed the expiry out (or removed it) meanwhile.
                match socket.expires.load(Ordering::Relaxed) {
                    0 => return,
                    expires if expires != armed => {
                        armed = expires;
                        continue;
                    }
                    _ => {}
                }
                tracing::info!(socket = %socket.id, user = %socket.principal.user_id, "token expired: closing the socket");
                for frame in socket.codec.expiry_notice() {
                    // A refused push has closed the outbox already.
                    let _ = outbox.push(frame);
                }
                outbox.close(CloseReason::TokenExpired);
                return;
            }
        });
    }

    /// Takes a newer token of the socket's own user: its expiry becomes the socket's (none
    /// if it has no `exp`); the rest of the socket's identity stays as connected. Returns the
    /// new expiry; a token of another user is refused.
    pub fn refresh(&self, token: &Principal) -> Result<Option<u64>, &'static str> {
        if token.user_id != self.principal.user_id {
            return Err("the token is for another user");
        }
        self.expires
            .store(token.expires.unwrap_or(0), Ordering::Relaxed);
        Ok(token.expires)
    }

    /// A member with no channels yet.
    pub fn new(id: SocketId, principal: Principal, codec: Codec, outbox: Arc<Outbox>) -> Self {
        Self {
            expires: AtomicU64::new(principal.expires.unwrap_or(0)),
            id,
            principal,
            codec,
            outbox,
            subscribe_limit: SocketLimit::default(),
            forwards: AtomicU32::new(0),
            channels: Mutex::new(Vec::new()),
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, Vec<Arc<str>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the socket is in `channel`.
    pub fn is_in(&self, channel: &str) -> bool {
        self.channels().iter().any(|c| &**c == channel)
    }
}

/// Resolves once the bus confirms its subscription to a channel.
#[derive(Debug, Default)]
pub struct Ready(SetOnce<()>);

impl Ready {
    /// Marks the subscription confirmed.
    pub fn set(&self) {
        // A second confirmation (after a reconnect) changes nothing.
        let _ = self.0.set(());
    }

    /// Waits for the confirmation; false if it did not come in time.
    pub async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.0.wait()).await.is_ok()
    }
}

/// The local members of a channel. A channel with one local member (typically a user's own
/// `private-user.{id}`) keeps it inline: one map less per connected user.
/// The map is a B-tree: its memory follows the members there are now, where a hash table
/// under the churn of reconnecting sockets doubles long after (see `Hub::keep_sparse`).
#[derive(Debug)]
enum Members {
    One(Arc<Member>),
    Many(BTreeMap<SocketId, Arc<Member>>),
}

impl Members {
    /// Adds a member; returns whether it was already there.
    fn insert(&mut self, member: &Arc<Member>) -> bool {
        match self {
            Self::One(existing) if existing.id == member.id => true,
            Self::One(existing) => {
                let mut map = BTreeMap::new();
                map.insert(existing.id.clone(), existing.clone());
                map.insert(member.id.clone(), member.clone());
                *self = Self::Many(map);
                false
            }
            Self::Many(map) => map.insert(member.id.clone(), member.clone()).is_some(),
        }
    }

    /// Removes a member; returns whether the channel is now empty.
    fn remove(&mut self, id: &str) -> bool {
        match self {
            Self::One(existing) => &*existing.id == id,
            Self::Many(map) => {
                map.remove(id);
                map.is_empty()
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(map) => map.len(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Arc<Member>)) {
        match self {
            Self::One(member) => f(member),
            Self::Many(map) => map.values().for_each(f),
        }
    }
}

#[derive(Debug)]
struct Channel {
    members: Members,
    ready: Arc<Ready>,
}

/// What a subscribe changed.
#[derive(Debug)]
pub struct Joined {
    /// Whether the socket was already in the channel.
    pub already: bool,
    /// The bus subscription of the channel.
    pub ready: Arc<Ready>,
    /// The channel's shared name.
    pub name: Arc<str>,
}

/// Why the hub refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The socket is at its subscription limit.
    #[error("too many subscriptions (limit {0})")]
    TooMany(usize),
}

/// One message to deliver, with its encodings made lazily, once each.
pub struct Broadcast<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The event name.
    pub event: &'a str,
    /// The event data, raw JSON.
    pub data: &'a serde_json::value::RawValue,
    /// A socket to leave out (the sender of a whisper, or Laravel's `toOthers()`).
    pub except: Option<&'a str>,
    /// Whether the pushes may write straight to the sockets (the hub's pacing decides too).
    pub write: Write,
    encoded: [OnceCell<Frame>; CODECS],
}

impl<'a> Broadcast<'a> {
    /// A message not yet encoded.
    pub fn new(
        channel: &'a str,
        event: &'a str,
        data: &'a serde_json::value::RawValue,
        except: Option<&'a str>,
    ) -> Self {
        Self {
            channel,
            event,
            data,
            except,
            write: Write::Direct,
            encoded: Default::default(),
        }
    }

    /// The frame for `codec`, encoded on first use.
    pub fn frame(&self, codec: Codec) -> &Frame {
        self.encoded[codec.slot()].get_or_init(|| match codec {
            Codec::SocketIo => {
                let mut out = crate::protocol::engineio::message(
                    self.event.len() + self.channel.len() + self.data.get().len() + 16,
                );
                crate::protocol::socketio::write_broadcast(
                    &mut out,
                    "/",
                    self.event,
                    self.channel,
                    self.data,
                );
                Frame::from(out)
            }
            Codec::SocketIoData => {
                let mut out = crate::protocol::engineio::message(
                    self.event.len() + self.data.get().len() + 16,
                );
                crate::protocol::socketio::write_event(&mut out, "/", self.event, &[self.data]);
                Frame::from(out)
            }
            Codec::Namespace(namespace) => {
                let mut out = crate::protocol::engineio::message(
                    self.event.len() + self.data.get().len() + namespace.name.len() + 24,
                );
                crate::protocol::socketio::write_event_ack(
                    &mut out,
                    namespace.name,
                    (namespace.ack_id)(self.event, self.data),
                    self.event,
                    self.data,
                );
                Frame::from(out)
            }
            Codec::Json => {
                let mut out = String::with_capacity(
                    self.event.len() + self.channel.len() + self.data.get().len() + 40,
                );
                crate::protocol::json::write_broadcast(
                    &mut out,
                    self.event,
                    self.channel,
                    self.data,
                );
                Frame::from(out)
            }
        })
    }
}

/// What a broadcast reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Sockets the frame was queued to.
    pub delivered: usize,
    /// Of those, per [`Protocol`].
    pub by_protocol: [usize; 2],
    /// Sockets dropped because their queue overflowed.
    pub slow: usize,
    /// Of the delivered, frames the push wrote to the socket itself.
    pub written: usize,
}

/// How many items hashbrown fits in `buckets` before it must grow or clean up (its
/// `bucket_mask_to_capacity`).
fn hashbrown_capacity(buckets: usize) -> usize {
    if buckets <= 8 {
        buckets.saturating_sub(1)
    } else {
        buckets / 8 * 7
    }
}

/// Local sockets and channel memberships.
#[derive(Debug, Default)]
pub struct Hub {
    channels: DashMap<Arc<str>, Channel>,
    pacing: Pacing,
}

impl Hub {
    /// An empty hub whose fan-outs write directly as `pacing` allows.
    pub fn new(pacing: Pacing) -> Self {
        Self {
            channels: DashMap::new(),
            pacing,
        }
    }

    /// How fan-outs choose between direct and queued writes.
    pub fn pacing(&self) -> &Pacing {
        &self.pacing
    }

    /// Adds `member` to `channel`. `on_first` runs, under the channel's lock, when the
    /// channel gains its first local member, so bus subscribe and unsubscribe stay ordered.
    pub fn join(
        &self,
        member: &Arc<Member>,
        channel: &str,
        limit: usize,
        on_first: impl FnOnce(&Arc<str>) -> Arc<Ready>,
    ) -> Result<Joined, JoinError> {
        let name: Arc<str> = {
            let mut channels = member.channels();
            if let Some(existing) = channels.iter().find(|c| &***c == channel) {
                existing.clone()
            } else {
                if channels.len() >= limit {
                    return Err(JoinError::TooMany(limit));
                }
                // Share the hub's copy of the name when the channel exists already.
                let name: Arc<str> = match self.channels.get(channel) {
                    Some(entry) => entry.key().clone(),
                    None => channel.into(),
                };
                channels.push(name.clone());
                name
            }
        };
        let mut already = false;
        let mut created = false;
        let ready = self
            .channels
            .entry(name.clone())
            .and_modify(|entry| already = entry.members.insert(member))
            .or_insert_with(|| {
                created = true;
                Channel {
                    members: Members::One(member.clone()),
                    ready: on_first(&name),
                }
            })
            .ready
            .clone();
        if created {
            self.keep_sparse(&name);
        }
        Ok(Joined {
            already,
            ready,
            name,
        })
    }

    /// Doubles the table shard holding `name` once it is more than 7/16 full, where hashbrown
    /// itself waits for 7/8. Channels come and go, and each removal may leave a tombstone;
    /// when the tombstones use up the free slots, hashbrown cleans them in place if at most
    /// half its capacity is live, and doubles otherwise. A shard left more than half full by
    /// its own growth thus doubles hours later, under churn alone: a step in a node's memory
    /// long after it reached its size (the soak's, docs/BENCHMARKS.md). Growing here pays that
    /// step while the channels arrive, and churn never grows the table again.
    fn keep_sparse(&self, name: &Arc<str>) {
        let shard = &self.channels.shards()[self.channels.determine_map(name)];
        let mut table = shard.write();
        let (len, capacity) = (table.len(), hashbrown_capacity(table.buckets()));
        if len > capacity / 2 {
            let hasher = self.channels.hasher();
            // More than the free slots: hashbrown moves to a table of twice the buckets.
            table.reserve(capacity + 1 - len, |(key, _)| hasher.hash_one(key));
        }
    }

    /// Removes `member` from `channel`; `on_last` runs, under the lock, when the channel
    /// loses its last local member. Returns the channel's name if the member was in it.
    pub fn leave(
        &self,
        member: &Member,
        channel: &str,
        on_last: impl FnOnce(&Arc<str>),
    ) -> Option<Arc<str>> {
        let name = {
            let mut channels = member.channels();
            let index = channels.iter().position(|c| &**c == channel)?;
            channels.swap_remove(index)
        };
        self.channels.remove_if_mut(channel, |name, entry| {
            if entry.members.remove(&member.id) {
                on_last(name);
                true
            } else {
                false
            }
        });
        Some(name)
    }

    /// Removes `member` from all its channels (at disconnect); returns their names.
    pub fn leave_all(&self, member: &Member, mut on_last: impl FnMut(&Arc<str>)) -> Vec<Arc<str>> {
        let channels: Vec<Arc<str>> = member.channels().iter().cloned().collect();
        channels
            .iter()
            .filter_map(|channel| self.leave(member, channel, &mut on_last))
            .collect()
    }

    /// Queues a broadcast to every local member of its channel that `keep` accepts, but the
    /// excluded one.
    pub fn broadcast(&self, message: &Broadcast<'_>, keep: impl Fn(&Member) -> bool) -> Fanout {
        let mut fanout = Fanout::default();
        // Taken out of the map first: a push may write to the socket, and the channel's shard
        // lock is not to be held through thousands of system calls.
        let members = self.members(message.channel);
        let quota = match message.write {
            Write::Direct => self.pacing.direct_quota(),
            Write::Queued => 0,
        };
        let mut write = if quota > 0 {
            Write::Direct
        } else {
            Write::Queued
        };
        let start = Instant::now();
        // The time the direct part took.
        let mut direct_took = Duration::ZERO;
        for (i, member) in members.iter().enumerate() {
            // A direct fan-out does not yield: past its quota or its time budget the rest goes
            // to the queues.
            if write == Write::Direct && (i == quota || (i % 32 == 31 && self.pacing.spent(start)))
            {
                write = Write::Queued;
                direct_took = start.elapsed();
            }
            if message.except == Some(&*member.id) || !keep(member) {
                continue;
            }
            match member
                .outbox
                .push_with(message.frame(member.codec).clone(), write)
            {
                Ok(pushed) => {
                    fanout.delivered += 1;
                    fanout.by_protocol[member.codec.protocol() as usize] += 1;
                    fanout.written += usize::from(pushed == Pushed::Written);
                }
                Err(PushError::Overflow) => fanout.slow += 1,
                Err(PushError::Closed) => {}
            }
        }
        let now = Instant::now();
        if write == Write::Direct {
            direct_took = now - start;
        }
        self.pacing
            .record(fanout.delivered, fanout.written, direct_took, now);
        fanout
    }

    /// How many channels have local members.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The local members of a channel.
    pub fn members(&self, channel: &str) -> Vec<Arc<Member>> {
        let mut members = Vec::new();
        if let Some(entry) = self.channels.get(channel) {
            entry
                .members
                .for_each(|member| members.push(member.clone()));
        }
        members
    }

    /// Every channel with its number of local members.
    pub fn channel_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.channels
            .iter()
            .map(|entry| (entry.key().clone(), entry.members.len()))
            .collect()
    }

    /// How many local members `channel` has.
    pub fn member_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |c| c.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Drained;
    use serde_json::value::RawValue;

    fn member(id: &str) -> Arc<Member> {
        let principal = Principal {
            user_id: "u".into(),
            role: None,
            claims: None,
            expires: None,
        };
        Arc::new(Member::new(
            id.into(),
            principal,
            Codec::SocketIo,
            Arc::new(Outbox::new(1 << 20)),
        ))
    }

    fn expiring(codec: Codec, in_secs: u64) -> Arc<Member> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let principal = Principal {
            user_id: "u".into(),
            role: None,
            claims: None,
            expires: Some(now + in_secs),
        };
        Arc::new(Member::new(
            "s".into(),
            principal,
            codec,
            Arc::new(Outbox::new(1 << 20)),
        ))
    }

    /// The buckets of the hub's channel table, all shards together.
    fn buckets(hub: &Hub) -> usize {
        hub.channels
            .shards()
            .iter()
            .map(|s| s.read().buckets())
            .sum()
    }

    #[test]
    fn channels_coming_and_going_never_grow_the_table() {
        // One socket per channel, as for users' own channels. Each step one channel is left
        // and a new one joined in the same shard, so that every shard keeps its count and
        // only tombstones could grow it: without `keep_sparse` the table doubles.
        let hub = Hub::default();
        let live = 3_000;
        let mut names: Vec<String> = (0..live).map(|i| format!("c{i}")).collect();
        let mut members: Vec<Arc<Member>> = (0..live).map(|i| member(&format!("s{i}"))).collect();
        let ready = |_: &Arc<str>| Arc::new(Ready::default());
        for (name, m) in names.iter().zip(&members) {
            assert!(hub.join(m, name, 10, ready).is_ok());
        }
        let after_joins = buckets(&hub);
        let mut next = live;
        for step in 0..live * 100 {
            let slot = step % live;
            let shard = hub.channels.determine_map(names[slot].as_str());
            let name = loop {
                next += 1;
                let name = format!("c{next}");
                if hub.channels.determine_map(name.as_str()) == shard {
                    break name;
                }
            };
            assert!(hub.leave(&members[slot], &names[slot], |_| ()).is_some());
            members[slot] = member(&format!("s{next}"));
            assert!(hub.join(&members[slot], &name, 10, ready).is_ok());
            names[slot] = name;
            assert_eq!(
                buckets(&hub),
                after_joins,
                "the table grew after {step} moves"
            );
        }
        assert_eq!(hub.channel_count(), live);
    }

    /// The frames queued, as text.
    fn queued(member: &Member) -> Vec<String> {
        let mut out = std::collections::VecDeque::new();
        let _ = member.outbox.try_drain(&mut out);
        out.iter().map(|f| f.as_str().to_owned()).collect()
    }

    /// A feature namespace, as `/notifications` is.
    static NOTES: Namespace = Namespace {
        name: "/notifications",
        ack_id: |_, _| None,
    };

    #[tokio::test(start_paused = true)]
    async fn a_socket_closes_when_its_token_expires() {
        for (codec, notice) in [
            (
                Codec::SocketIo,
                vec![r#"42["auth:expired",{"message":"token expired"}]"#, "41"],
            ),
            (
                Codec::Namespace(&NOTES),
                vec![
                    r#"42/notifications,["auth:expired",{"message":"token expired"}]"#,
                    "41/notifications,",
                ],
            ),
            (
                Codec::Json,
                vec![
                    r#"{"type":"ERROR","payload":{"code":"TOKEN_EXPIRED","message":"token expired"}}"#,
                ],
            ),
        ] {
            let socket = expiring(codec, 60);
            socket.close_at_expiry();
            tokio::time::sleep(Duration::from_secs(58)).await;
            assert_eq!(
                socket.outbox.close_reason(),
                None,
                "{codec:?} open before expiry"
            );
            let closed = tokio::time::timeout(Duration::from_secs(3), socket.outbox.closed()).await;
            assert_eq!(closed.ok(), Some(CloseReason::TokenExpired), "{codec:?}");
            assert_eq!(queued(&socket), notice);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_by_the_same_user_pushes_the_expiry_out() {
        let socket = expiring(Codec::SocketIo, 60);
        socket.close_at_expiry();
        let expires = socket.principal.expires.map(|e| e + 600);
        let token = |user: &str| Principal {
            user_id: user.into(),
            role: None,
            claims: None,
            expires,
        };
        assert_eq!(
            socket.refresh(&token("someone-else")),
            Err("the token is for another user")
        );
        assert_eq!(socket.refresh(&token("u")), Ok(expires));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(
            socket.outbox.close_reason(),
            None,
            "open past the first expiry"
        );
        let closed = tokio::time::timeout(Duration::from_secs(600), socket.outbox.closed()).await;
        assert_eq!(
            closed.ok(),
            Some(CloseReason::TokenExpired),
            "closed at the new one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_expiry_timer_ends_with_the_socket() {
        // Closed first: the timer task ends and leaves the socket alone.
        let socket = expiring(Codec::SocketIo, 60);
        socket.close_at_expiry();
        socket.outbox.close(CloseReason::ClientClosed);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(
            socket.outbox.close_reason(),
            Some(CloseReason::ClientClosed)
        );
        assert!(queued(&socket).is_empty());
        // Gone (left its namespace) while the connection stays open: nothing happens either.
        let socket = expiring(Codec::SocketIo, 60);
        let outbox = socket.outbox.clone();
        socket.close_at_expiry();
        drop(socket);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(outbox.close_reason(), None);
        // No `exp`: never closed.
        let socket = member("n");
        socket.close_at_expiry();
        tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
        assert_eq!(socket.outbox.close_reason(), None);
    }

    fn ready() -> Arc<Ready> {
        Arc::new(Ready::default())
    }

    #[test]
    fn reports_first_and_last_member() {
        let hub = Hub::default();
        let (a, b) = (member("a"), member("b"));
        let mut firsts = 0;
        hub.join(&a, "news", 10, |_| {
            firsts += 1;
            ready()
        })
        .expect("join");
        hub.join(&b, "news", 10, |_| {
            firsts += 1;
            ready()
        })
        .expect("join");
        assert_eq!(firsts, 1);
        assert_eq!(hub.member_count("news"), 2);

        let mut lasts = 0;
        assert!(hub.leave(&a, "news", |_| lasts += 1).is_some());
        assert_eq!(lasts, 0);
        assert!(
            hub.leave(&a, "news", |_| lasts += 1).is_none(),
            "leaving twice is a no-op"
        );
        assert_eq!(hub.leave_all(&b, |_| lasts += 1).len(), 1);
        assert_eq!(lasts, 1);
        assert_eq!(hub.channel_count(), 0);
    }

    #[test]
    fn a_single_member_channel_comes_and_goes() {
        let hub = Hub::default();
        let (a, b) = (member("a"), member("b"));
        hub.join(&a, "private-user.u", 10, |_| ready())
            .expect("join");
        assert!(
            hub.leave(&b, "private-user.u", |_| panic!("b was never in"))
                .is_none()
        );
        let mut lasts = 0;
        assert!(hub.leave(&a, "private-user.u", |_| lasts += 1).is_some());
        assert_eq!((lasts, hub.channel_count()), (1, 0));
        // Two members, then one leaves: the channel stays for the other.
        hub.join(&a, "news", 10, |_| ready()).expect("join");
        hub.join(&b, "news", 10, |_| ready()).expect("join");
        assert!(hub.leave(&a, "news", |_| panic!("b is still in")).is_some());
        assert_eq!(hub.member_count("news"), 1);
    }

    #[test]
    fn enforces_the_subscription_limit() {
        let hub = Hub::default();
        let a = member("a");
        hub.join(&a, "one", 1, |_| ready()).expect("first");
        assert!(hub.join(&a, "one", 1, |_| ready()).expect("again").already);
        assert_eq!(
            hub.join(&a, "two", 1, |_| ready()).err(),
            Some(JoinError::TooMany(1))
        );
        assert!(!a.is_in("two"));
    }

    #[test]
    fn broadcast_encodes_once_and_skips_the_sender() {
        let hub = Hub::default();
        let (a, b) = (member("a"), member("b"));
        hub.join(&a, "news", 10, |_| ready()).expect("join");
        hub.join(&b, "news", 10, |_| ready()).expect("join");
        let data = RawValue::from_string(r#"{"x":1}"#.into()).expect("json");
        let message = Broadcast::new("news", "update", &data, Some("a"));
        assert_eq!(
            hub.broadcast(&message, |_| true),
            Fanout {
                delivered: 1,
                by_protocol: [1, 0],
                slow: 0,
                written: 0
            }
        );
        let mut out = std::collections::VecDeque::new();
        assert_eq!(b.outbox.try_drain(&mut out), Some(Drained::Frames));
        assert_eq!(out[0].as_str(), r#"42["update","news",{"x":1}]"#);
        assert_eq!(a.outbox.try_drain(&mut out), None);
    }

    /// How many of `count` sockets on one channel a broadcast queued rather than wrote, under
    /// `pacing`.
    async fn queued_by(pacing: Pacing, count: usize) -> usize {
        let hub = Hub::new(pacing);
        let mut members = Vec::new();
        for i in 0..count {
            let m = member(&i.to_string());
            let (server, client) = crate::outbox::tests::tcp_pair().await;
            m.outbox.attach(server);
            hub.join(&m, "news", 10, |_| ready()).expect("join");
            members.push((m, client));
        }
        let data = RawValue::from_string("1".into()).expect("json");
        let fanout = hub.broadcast(&Broadcast::new("news", "update", &data, None), |_| true);
        let queued = members
            .iter()
            .filter(|(m, _)| m.outbox.queued_frames() > 0)
            .count();
        assert_eq!(
            fanout.written + queued,
            count,
            "each frame written or queued"
        );
        queued
    }

    #[tokio::test]
    async fn a_direct_fan_out_hands_the_rest_to_the_queues_once_its_budget_is_spent() {
        let budget = Duration::from_secs(60);
        assert_eq!(
            queued_by(Pacing::new(0.8, budget), 40).await,
            0,
            "all written at once"
        );
        // A spent budget is checked every 32 recipients, so the first 31 go directly.
        assert_eq!(queued_by(Pacing::new(0.8, Duration::ZERO), 40).await, 9);
        assert_eq!(
            queued_by(Pacing::new(0.0, budget), 4).await,
            4,
            "direct writes off"
        );
    }
}
