//! What the nodes know together: connections per user (for the per-user limit and online
//! status), sockets per channel, and presence members.
//!
//! Each node keeps its own share locally. Without Redis that is the whole cluster. With
//! Redis ([`redis`]) every node mirrors its share under keys named by its instance id, the
//! cluster view is the sum over live nodes, and a node that stops heart-beating is swept by
//! the others: its presence members leave (with `presence:leaving`) and its connection
//! slots come back.

pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use deadpool_redis::Pool;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::hub::{Hub, SocketId};
use crate::metrics::RedisHealth;

/// Shared state could not be read or written (Redis down or slow).
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct ClusterError(pub String);

/// Why a connection was refused by the per-user limit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectRefusal {
    /// The user has the most sockets allowed.
    #[error("too many connections (limit {0} per user)")]
    TooMany(usize),
    /// The limit could not be checked; the connection is refused rather than let through.
    #[error(transparent)]
    Unavailable(#[from] ClusterError),
}

impl ConnectRefusal {
    /// The metric label of the refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::TooMany(_) => "too_many_connections",
            Self::Unavailable(_) => "limit_unavailable",
        }
    }

    /// What the client is told (no internal cause).
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::TooMany(_) => "too many connections",
            Self::Unavailable(_) => "service unavailable, try again",
        }
    }
}

/// A presence member of a channel, as its JSON text `{"user_id":…,"user_info":…}`.
pub type MemberJson = Arc<str>;

/// What joining a presence channel found.
#[derive(Debug)]
pub struct PresenceJoin {
    /// Whether this is the user's first socket in the channel (the others hear `joining`).
    pub first: bool,
    /// Every member, the new one included, one per user.
    pub members: Vec<Box<RawValue>>,
}

/// One channel's counts across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Sockets subscribed.
    pub subscriptions: u64,
    /// Distinct presence members (presence channels only).
    pub users: Option<u64>,
}

/// A node of the cluster, as its heartbeats show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its instance id: the node id, plus a per-process suffix with Redis.
    pub id: String,
    /// Whether it is this node.
    pub this: bool,
    /// Its last heartbeat, in ms since the Unix epoch (now, for this node without Redis).
    pub last_heartbeat_ms: u64,
    /// Whether that heartbeat is recent enough for the node to count as live.
    pub live: bool,
    /// Its client connections at that heartbeat.
    pub connections: u64,
}

/// What the shared state in Redis reports to the node, which turns it into webhooks, metrics
/// and presence broadcasts: the cluster state itself knows none of those.
#[derive(Debug)]
pub enum Event {
    /// A channel got its first socket across the cluster (`true`) or lost its last.
    Occupancy {
        /// The channel.
        channel: String,
        /// Whether it is occupied now.
        occupied: bool,
    },
    /// Redis confirmed that a user joined (`true`) or left a presence channel: their first
    /// socket in it on any node, or their last.
    Presence {
        /// The channel.
        channel: String,
        /// Whether the member joined.
        joined: bool,
        /// The member, `{"user_id":…,"user_info":…}`.
        member: Box<RawValue>,
    },
    /// A node stopped heart-beating and was swept; `user` had `sockets` sockets on it.
    NodeLost {
        /// The lost node's id (without its instance suffix).
        node: String,
        /// A user it held sockets of.
        user: String,
        /// How many.
        sockets: u64,
    },
    /// How many nodes are alive, at each heartbeat.
    LiveNodes(i64),
}

/// What the shared state reads of this node when it heart-beats and rewrites its share:
/// counts other parts keep. The node implements it; the state holds it weakly.
pub trait Census: Send + Sync + 'static {
    /// Client connections open on this node.
    fn connections(&self) -> usize;
    /// Local sockets per channel.
    fn channel_counts(&self) -> Vec<(Arc<str>, usize)>;
}

/// How the shared state is tied to the rest of the node.
pub struct Links {
    /// Counts other parts keep; weak, since the node owns this state.
    pub census: Weak<dyn Census>,
    /// Where what Redis confirms is reported.
    pub events: mpsc::UnboundedSender<Event>,
    /// Asks for a heartbeat now (the bus reconnected, or a write found Redis away).
    pub beat_now: Arc<tokio::sync::Notify>,
}

/// How this node's share is kept in Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Prefix of every key (`SWITCHBOARD_REDIS_PREFIX`).
    pub prefix: String,
    /// This node's id; a per-process suffix makes the instance id.
    pub node_id: String,
    /// How long a silent node's share lives (`SWITCHBOARD_PRESENCE_TTL`).
    pub ttl: Duration,
    /// Sockets a user may have across the cluster; 0 = no limit.
    pub max_per_user: usize,
}

/// What a node took with it when it left the cluster.
#[derive(Debug, Default)]
pub struct Departure {
    /// (channel, member) of users who left presence channels with it.
    pub left: Vec<(String, String)>,
    /// Channels it held the last subscribers of.
    pub vacated: Vec<String>,
}

#[derive(Debug, Clone)]
struct PresenceEntry {
    user: Arc<str>,
    member: MemberJson,
}

/// A copy of this node's share: sockets per user, and (channel, socket, entry) of presence.
struct Snapshot {
    users: Vec<(Arc<str>, u32)>,
    presence: Vec<(Arc<str>, SocketId, PresenceEntry)>,
}

/// This node's share.
#[derive(Debug, Default)]
struct Local {
    /// Sockets per user.
    users: DashMap<Arc<str>, u32>,
    /// Presence entries per channel, one per socket.
    presence: DashMap<Arc<str>, HashMap<SocketId, PresenceEntry>>,
}

/// This node's share and the locks that order its changes against a rewrite; the Redis
/// writer holds it too, to take its snapshot.
#[derive(Debug, Default)]
struct Share {
    local: Local,
    /// Held for reading by every local change together with the write it queues, and for
    /// writing while a rewrite of the share takes its snapshot: a change is then either in
    /// the snapshot or applied after it, never both, never neither.
    changes: std::sync::RwLock<()>,
    /// Held for reading by a connect across its Redis script and its local count, and for
    /// writing while the share is rewritten, which would otherwise erase the script's count.
    rewrite: tokio::sync::RwLock<()>,
}

impl Share {
    /// This node's share, to rewrite its mirror in Redis after Redis lost it.
    fn snapshot(&self) -> Snapshot {
        let users = self
            .local
            .users
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        let presence = self
            .local
            .presence
            .iter()
            .flat_map(|e| {
                let channel = e.key().clone();
                e.value()
                    .iter()
                    .map(|(socket, entry)| (channel.clone(), socket.clone(), entry.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Snapshot { users, presence }
    }
}

/// The shared state as this node sees it.
pub struct Cluster {
    share: Arc<Share>,
    redis: Option<redis::RedisState>,
    max_per_user: usize,
}

impl Cluster {
    /// A single-node cluster; `max_per_user` 0 means no per-user limit.
    pub fn memory(max_per_user: usize) -> Self {
        Self {
            share: Arc::default(),
            redis: None,
            max_per_user,
        }
    }

    /// A cluster sharing its state in Redis: starts heart-beating, the writer and the
    /// admitter, tied to the node by `links`.
    pub fn redis(
        pool: Pool,
        settings: RedisSettings,
        links: Links,
        health: RedisHealth,
    ) -> Result<Self, ClusterError> {
        let share = Arc::<Share>::default();
        let max_per_user = settings.max_per_user;
        let state = redis::RedisState::start(
            pool,
            &settings,
            redis::Seam {
                share: share.clone(),
                census: links.census,
                events: links.events,
            },
            links.beat_now,
            health,
        )?;
        Ok(Self {
            share,
            redis: Some(state),
            max_per_user,
        })
    }

    /// Takes a connection slot for `user`, atomically across the cluster. When Redis cannot
    /// answer, a configured limit refuses the connection (the limit is a guarantee); without a
    /// limit the connection is counted locally and the share rewritten once Redis is back.
    pub async fn connect(&self, user: &Arc<str>) -> Result<(), ConnectRefusal> {
        let _rewrite = self.share.rewrite.read().await;
        if let Some(redis) = &self.redis {
            match redis.connect(user).await {
                Ok(()) => {}
                Err(ConnectRefusal::Unavailable(e)) if self.max_per_user == 0 => {
                    tracing::warn!(error = %e, "connection counted on this node only");
                    redis.mark_drifted();
                    redis.nudge();
                }
                Err(refusal) => {
                    redis.nudge();
                    return Err(refusal);
                }
            }
            let _change = self.change();
            *self.share.local.users.entry(user.clone()).or_insert(0) += 1;
            return Ok(());
        }
        let _change = self.change();
        let mut count = self.share.local.users.entry(user.clone()).or_insert(0);
        if self.max_per_user > 0 && *count as usize >= self.max_per_user {
            return Err(ConnectRefusal::TooMany(self.max_per_user));
        }
        *count += 1;
        Ok(())
    }

    /// A guard to hold across a local change (hub membership, connection count) and the
    /// cluster call that queues its write.
    pub fn change(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.share.changes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives back a slot taken by [`Cluster::connect`]; returns whether it was the user's last
    /// socket on this node.
    pub fn disconnect(&self, user: &Arc<str>) -> bool {
        let last = self
            .share
            .local
            .users
            .remove_if_mut(user, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            })
            .is_some();
        if let Some(redis) = &self.redis {
            redis.user_delta(user.clone(), -1);
        }
        last
    }

    /// Whether the state is shared with other nodes through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// A socket joined `channel` on this node.
    pub fn subscribed(&self, channel: &Arc<str>) {
        if let Some(redis) = &self.redis {
            redis.channel_delta(channel.clone(), 1);
        }
    }

    /// A socket left `channel` on this node.
    pub fn unsubscribed(&self, channel: &Arc<str>) {
        if let Some(redis) = &self.redis {
            redis.channel_delta(channel.clone(), -1);
        }
    }

    /// Adds a socket's presence entry; one member per user however many sockets it has.
    pub async fn presence_join(
        &self,
        channel: &Arc<str>,
        socket: &SocketId,
        user: &Arc<str>,
        member: MemberJson,
    ) -> Result<PresenceJoin, ClusterError> {
        let entry = PresenceEntry {
            user: user.clone(),
            member,
        };
        let joined = match &self.redis {
            Some(redis) => redis.presence_join(channel, socket, &entry).await?,
            None => {
                let mut sockets = self
                    .share
                    .local
                    .presence
                    .entry(channel.clone())
                    .or_default();
                let first = !sockets.values().any(|e| e.user == *user);
                sockets.insert(socket.clone(), entry);
                return Ok(PresenceJoin {
                    first,
                    members: unique_members(sockets.values()),
                });
            }
        };
        self.share
            .local
            .presence
            .entry(channel.clone())
            .or_default()
            .insert(socket.clone(), entry);
        Ok(joined)
    }

    /// Removes a socket's presence entry. Returns the member when it was the user's last
    /// socket and this node must announce `presence:leaving`; with Redis the announcement
    /// is made by the writer task once Redis confirms, so this returns `None`.
    pub fn presence_leave(&self, channel: &Arc<str>, socket: &SocketId) -> Option<MemberJson> {
        let mut removed = None;
        self.share
            .local
            .presence
            .remove_if_mut(channel, |_, sockets| {
                removed = sockets.remove(socket);
                sockets.is_empty()
            });
        let entry = removed?;
        match &self.redis {
            Some(redis) => {
                redis.presence_leave(channel.clone(), socket.clone(), entry.user);
                None
            }
            None => {
                let still_here = self
                    .share
                    .local
                    .presence
                    .get(channel)
                    .is_some_and(|sockets| sockets.values().any(|e| e.user == entry.user));
                (!still_here).then_some(entry.member)
            }
        }
    }

    /// The members of a presence channel, one per user.
    pub async fn presence_members(
        &self,
        channel: &str,
    ) -> Result<Vec<Box<RawValue>>, ClusterError> {
        match &self.redis {
            Some(redis) => redis.presence_members(channel).await,
            None => Ok(self
                .share
                .local
                .presence
                .get(channel)
                .map(|sockets| unique_members(sockets.values()))
                .unwrap_or_default()),
        }
    }

    /// How many sockets `user` has across the cluster.
    pub async fn user_connections(&self, user: &str) -> Result<u64, ClusterError> {
        match &self.redis {
            Some(redis) => redis.user_connections(user).await,
            None => Ok(self
                .share
                .local
                .users
                .get(user)
                .map_or(0, |c| u64::from(*c))),
        }
    }

    /// How many of `users` have a socket somewhere in the cluster (one Redis call).
    pub async fn online(&self, users: &[&str]) -> Result<usize, ClusterError> {
        match &self.redis {
            Some(redis) => Ok(redis
                .users_connections(users)
                .await?
                .iter()
                .filter(|n| **n > 0)
                .count()),
            None => Ok(users
                .iter()
                .filter(|u| self.share.local.users.contains_key(**u))
                .count()),
        }
    }

    /// One channel's counts across the cluster.
    pub async fn channel(&self, hub: &Hub, channel: &str) -> Result<ChannelInfo, ClusterError> {
        let presence = crate::channel::kind(channel) == crate::channel::Kind::Presence;
        match &self.redis {
            Some(redis) => redis.channel(channel, presence).await,
            None => Ok(ChannelInfo {
                subscriptions: hub.member_count(channel) as u64,
                users: presence.then(|| {
                    self.share
                        .local
                        .presence
                        .get(channel)
                        .map_or(0, |sockets| unique_members(sockets.values()).len() as u64)
                }),
            }),
        }
    }

    /// Every channel with subscribers and its socket count across the cluster.
    pub async fn channels(&self, hub: &Hub) -> Result<Vec<(String, u64)>, ClusterError> {
        match &self.redis {
            Some(redis) => redis.channels().await,
            None => Ok(hub
                .channel_counts()
                .into_iter()
                .map(|(name, count)| (name.to_string(), count as u64))
                .collect()),
        }
    }

    /// Every node of the cluster. This node, `node_id` with `connections` now, is listed with
    /// its current count rather than the one of its last heartbeat.
    pub async fn nodes(
        &self,
        node_id: &str,
        connections: u64,
    ) -> Result<Vec<NodeInfo>, ClusterError> {
        let Some(redis) = &self.redis else {
            return Ok(vec![NodeInfo {
                id: node_id.to_owned(),
                this: true,
                last_heartbeat_ms: now_ms(),
                live: true,
                connections,
            }]);
        };
        let mut nodes = redis.nodes().await?;
        for node in nodes.iter_mut().filter(|n| n.this) {
            node.connections = connections;
        }
        Ok(nodes)
    }

    /// Leaves the cluster at shutdown: this node's share is removed at once rather than
    /// waiting for the others to sweep it. Returns what left with it.
    pub async fn shutdown(&self) -> Departure {
        match &self.redis {
            Some(redis) => redis.shutdown().await,
            None => Departure::default(),
        }
    }

    /// Asks for a heartbeat now (Redis came back, or was unreachable for a write).
    pub fn nudge(&self) {
        if let Some(redis) = &self.redis {
            redis.nudge();
        }
    }

    /// Users with at least one socket on this node.
    pub fn local_user_count(&self) -> usize {
        self.share.local.users.len()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One member per user, in a stable order.
fn unique_members<'a>(entries: impl Iterator<Item = &'a PresenceEntry>) -> Vec<Box<RawValue>> {
    let mut by_user: Vec<(&Arc<str>, &MemberJson)> = Vec::new();
    for entry in entries {
        if !by_user.iter().any(|(user, _)| **user == entry.user) {
            by_user.push((&entry.user, &entry.member));
        }
    }
    by_user.sort_by(|a, b| a.0.cmp(b.0));
    by_user
        .into_iter()
        .filter_map(|(_, member)| RawValue::from_string(member.to_string()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str) -> MemberJson {
        format!(r#"{{"user_id":"{user}","user_info":{{}}}}"#).into()
    }

    fn texts(members: &[Box<RawValue>]) -> Vec<&str> {
        members.iter().map(|m| m.get()).collect()
    }

    #[tokio::test]
    async fn per_user_limit_in_memory() {
        let cluster = Cluster::memory(2);
        let user: Arc<str> = "7".into();
        assert!(cluster.connect(&user).await.is_ok());
        assert!(cluster.connect(&user).await.is_ok());
        assert!(matches!(
            cluster.connect(&user).await,
            Err(ConnectRefusal::TooMany(2))
        ));
        assert_eq!(cluster.user_connections("7").await.unwrap(), 2);
        cluster.disconnect(&user);
        assert!(cluster.connect(&user).await.is_ok());
        cluster.disconnect(&user);
        cluster.disconnect(&user);
        assert_eq!(cluster.user_connections("7").await.unwrap(), 0);
        assert!(cluster.share.local.users.is_empty());
    }

    #[tokio::test]
    async fn presence_is_one_member_per_user() {
        let cluster = Cluster::memory(0);
        let channel: Arc<str> = "presence-chat".into();
        let (a1, a2, b1): (SocketId, SocketId, SocketId) = ("a1".into(), "a2".into(), "b1".into());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());

        let joined = cluster
            .presence_join(&channel, &a1, &a, member("a"))
            .await
            .unwrap();
        assert!(joined.first);
        let joined = cluster
            .presence_join(&channel, &a2, &a, member("a"))
            .await
            .unwrap();
        assert!(!joined.first, "a second tab is not a new member");
        assert_eq!(texts(&joined.members), [&*member("a")]);
        let joined = cluster
            .presence_join(&channel, &b1, &b, member("b"))
            .await
            .unwrap();
        assert!(joined.first);
        assert_eq!(texts(&joined.members), [&*member("a"), &*member("b")]);

        assert_eq!(cluster.presence_leave(&channel, &a1), None);
        assert_eq!(cluster.presence_leave(&channel, &a1), None, "idempotent");
        assert_eq!(cluster.presence_leave(&channel, &a2), Some(member("a")));
        let info = cluster.channel(&Hub::default(), &channel).await.unwrap();
        assert_eq!(info.users, Some(1));
        assert_eq!(cluster.presence_leave(&channel, &b1), Some(member("b")));
        assert!(cluster.share.local.presence.is_empty());
    }
}
