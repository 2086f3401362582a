//! The cluster's shared state in Redis.
//!
//! Keys (all under the configured prefix):
//! - `sb:nodes` — sorted set of node instance → last heartbeat (ms since the epoch);
//! - `sb:nodes:connections` — hash of node instance → its client connections at its last
//!   heartbeat (for the admin page; exact counts stay in each node);
//! - `sb:node:{instance}:users` / `:channels` — hashes of that node's sockets per user and
//!   per channel;
//! - `sb:node:{instance}:presence` — that node's presence entries, one field
//!   `channel \n user \n socket` per socket;
//! - `sb:channels` — sockets per channel summed over every node's hash, whose changes from
//!   and to 0 raise the `channel_occupied` / `channel_vacated` webhooks once per cluster;
//! - `sb:presence:{channel}:counts` / `:members` — sockets per user across the cluster, and
//!   each present user's member JSON.
//!
//! Every read or write that must be consistent is one Lua script, so two nodes never race
//! (no check-then-act). Writes whose answer nobody waits for (a socket leaving a channel or
//! disconnecting) go through one writer task that batches them and retries after a failure;
//! when a heartbeat finds that Redis lost this node (restarted empty, or swept it during a
//! partition) the node rewrites its whole share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_redis::Pool;
use redis::Script;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{ChannelInfo, ClusterError, PresenceEntry, PresenceJoin, now_ms};
use crate::hub::SocketId;
use crate::metrics::RedisHealth;
use crate::node::Node;

/// How long a script may take, pool wait included.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a failed heartbeat is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// Most queued writes applied in one script call.
const BATCH: usize = 1000;

/// Takes per-user slots, for each user in ARGV[6..] in turn, if that user's sockets on live
/// nodes are below the limit; returns each user's new count, or -1 when refused.
const CONNECT: &str = r"
local nodes, nodep, me, limit, oldest = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local mine = nodep .. me .. ':users'
local live = redis.call('ZRANGEBYSCORE', nodes, oldest, '+inf')
local out = {}
for i = 6, #ARGV do
  local user = ARGV[i]
  local total = tonumber(redis.call('HGET', mine, user) or '0')
  for _, n in ipairs(live) do
    if n ~= me then total = total + tonumber(redis.call('HGET', nodep .. n .. ':users', user) or '0') end
  end
  if limit > 0 and total >= limit then
    out[#out + 1] = -1
  else
    redis.call('HINCRBY', mine, user, 1)
    out[#out + 1] = total + 1
  end
end
return out
";

/// Applies counter deltas: ARGV = nodep, me, totals, then (hash, field, delta) triples.
/// Channel deltas also move the cluster-wide totals; returns {channel, "1" | "0", …} for
/// each channel whose total left 0 (occupied) or came back to 0 (vacated), so exactly one
/// node sees each transition.
const APPLY: &str = r"
local base, totals = ARGV[1] .. ARGV[2] .. ':', ARGV[3]
local out = {}
for i = 4, #ARGV, 3 do
  local hash, field, delta = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = base .. hash
  local n = redis.call('HINCRBY', key, field, delta)
  if n <= 0 then redis.call('HDEL', key, field) end
  if hash == 'channels' then
    -- A count below 0 is dropped from the node's hash, so the total drops it too.
    if n < 0 then delta = delta - n end
    if delta ~= 0 then
      local total = redis.call('HINCRBY', totals, field, delta)
      if total <= 0 then
        redis.call('HDEL', totals, field)
        if total - delta > 0 then
          out[#out + 1] = field
          out[#out + 1] = '0'
        end
      elseif total - delta <= 0 then
        out[#out + 1] = field
        out[#out + 1] = '1'
      end
    end
  end
end
return out
";

/// Replaces this node's channel counts (ARGV = its hash, totals, then (channel, count)
/// pairs) and moves the totals by the difference; returns transitions as APPLY does.
const RESYNC_CHANNELS: &str = r"
local mine, totals = ARGV[1], ARGV[2]
local touched, before = {}, {}
local function touch(ch)
  if before[ch] == nil then
    before[ch] = tonumber(redis.call('HGET', totals, ch) or '0')
    touched[#touched + 1] = ch
  end
end
local old = redis.call('HGETALL', mine)
for i = 1, #old, 2 do
  touch(old[i])
  redis.call('HINCRBY', totals, old[i], -tonumber(old[i + 1]))
end
redis.call('DEL', mine)
for i = 3, #ARGV, 2 do
  touch(ARGV[i])
  redis.call('HSET', mine, ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', totals, ARGV[i], ARGV[i + 1])
end
local out = {}
for _, ch in ipairs(touched) do
  local now = tonumber(redis.call('HGET', totals, ch) or '0')
  if now <= 0 then redis.call('HDEL', totals, ch) end
  if before[ch] <= 0 and now > 0 then
    out[#out + 1] = ch
    out[#out + 1] = '1'
  elseif before[ch] > 0 and now <= 0 then
    out[#out + 1] = ch
    out[#out + 1] = '0'
  end
end
return out
";

/// Adds a socket's presence entry (idempotent); returns {first, members}.
const JOIN: &str = r"
local nodep, me, presp, ch, user, socket, member = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local first = 0
if redis.call('HSETNX', nodep .. me .. ':presence', ch .. '\n' .. user .. '\n' .. socket, '1') == 1 then
  if redis.call('HINCRBY', presp .. ch .. ':counts', user, 1) == 1 then
    redis.call('HSET', presp .. ch .. ':members', user, member)
    first = 1
  end
end
return {first, redis.call('HVALS', presp .. ch .. ':members')}
";

/// Removes a socket's presence entry (idempotent); returns the member if the user left.
const LEAVE: &str = r"
local nodep, me, presp, ch, user, socket = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HDEL', nodep .. me .. ':presence', ch .. '\n' .. user .. '\n' .. socket) == 0 then return false end
local counts = presp .. ch .. ':counts'
if redis.call('HINCRBY', counts, user, -1) > 0 then return false end
redis.call('HDEL', counts, user)
local member = redis.call('HGET', presp .. ch .. ':members', user)
redis.call('HDEL', presp .. ch .. ':members', user)
return member
";

/// Removes a dead node's whole share; returns {{channel, member, …}, {vacated channel, …},
/// {user, sockets, …}}: users who left presence channels with it, channels it was the last
/// subscriber of, and its sockets per user. Only the node whose ZREM succeeds sweeps, so
/// each `leaving` is announced once.
const SWEEP: &str = r"
local nodes, nodep, presp, dead, totals = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('ZREM', nodes, dead) == 0 then return {{}, {}, {}} end
local key = nodep .. dead .. ':presence'
local out = {}
for _, field in ipairs(redis.call('HKEYS', key)) do
  local ch, user = string.match(field, '^([^\n]*)\n([^\n]*)\n')
  if ch then
    local counts = presp .. ch .. ':counts'
    if redis.call('HINCRBY', counts, user, -1) <= 0 then
      redis.call('HDEL', counts, user)
      local member = redis.call('HGET', presp .. ch .. ':members', user)
      redis.call('HDEL', presp .. ch .. ':members', user)
      if member then
        table.insert(out, ch)
        table.insert(out, member)
      end
    end
  end
end
local vacated = {}
local channels = redis.call('HGETALL', nodep .. dead .. ':channels')
for i = 1, #channels, 2 do
  local count = tonumber(channels[i + 1])
  local total = redis.call('HINCRBY', totals, channels[i], -count)
  if total <= 0 then
    redis.call('HDEL', totals, channels[i])
    if total + count > 0 then table.insert(vacated, channels[i]) end
  end
end
local users = redis.call('HGETALL', nodep .. dead .. ':users')
redis.call('DEL', key, nodep .. dead .. ':users', nodep .. dead .. ':channels')
redis.call('HDEL', nodes .. ':connections', dead)
return {out, vacated, users}
";

/// Sums fields (ARGV[5..]) of a per-node hash over live nodes; one total per field.
const SUM: &str = r"
local nodes, nodep, oldest, hash = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local live = redis.call('ZRANGEBYSCORE', nodes, oldest, '+inf')
local totals = {}
for i = 5, #ARGV do
  local total = 0
  for _, n in ipairs(live) do
    total = total + tonumber(redis.call('HGET', nodep .. n .. ':' .. hash, ARGV[i]) or '0')
  end
  totals[#totals + 1] = total
end
return totals
";

/// Every channel's socket count summed over live nodes, as {name, count, …}.
const ALL_CHANNELS: &str = r"
local nodes, nodep, oldest = ARGV[1], ARGV[2], ARGV[3]
local totals, names = {}, {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', nodes, oldest, '+inf')) do
  local entries = redis.call('HGETALL', nodep .. n .. ':channels')
  for i = 1, #entries, 2 do
    local name, count = entries[i], tonumber(entries[i + 1])
    if totals[name] == nil then
      totals[name] = 0
      table.insert(names, name)
    end
    totals[name] = totals[name] + count
  end
end
local out = {}
for _, name in ipairs(names) do
  if totals[name] > 0 then
    table.insert(out, name)
    table.insert(out, totals[name])
  end
end
return out
";

/// Every node instance with its last heartbeat and its connections then, as
/// {instance, heartbeat, connections, …}.
const NODES: &str = r"
local nodes = ARGV[1]
local entries = redis.call('ZRANGE', nodes, 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #entries, 2 do
  table.insert(out, entries[i])
  table.insert(out, entries[i + 1])
  table.insert(out, redis.call('HGET', nodes .. ':connections', entries[i]) or '0')
end
return out
";

/// A write whose answer nobody waits for.
enum Op {
    User(Arc<str>, i64),
    Channel(Arc<str>, i64),
    Leave {
        channel: Arc<str>,
        socket: SocketId,
        user: Arc<str>,
    },
}

struct Scripts {
    connect: Script,
    apply: Script,
    resync_channels: Script,
    join: Script,
    leave: Script,
    sweep: Script,
    sum: Script,
    all_channels: Script,
    nodes: Script,
}

/// Key names and timing.
struct Keys {
    nodes: String,
    /// Sockets per channel summed over every node's hash (live or not yet swept).
    totals: String,
    /// `nodes` + `:connections`, as the sweep and nodes scripts name it.
    connections: String,
    node_prefix: String,
    presence_prefix: String,
    /// This process: the node id plus a random suffix, so a restarted node is a new
    /// instance and its previous one is swept like any dead node.
    instance: String,
    ttl: Duration,
}

impl Keys {
    /// Heartbeats come four times per TTL: a live node is never older than a quarter of it.
    fn heartbeat(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(100))
    }

    /// Oldest heartbeat (ms) of a node still counted as live; older ones are swept, so a dead
    /// node's share is gone at most one TTL after its last heartbeat.
    fn oldest_live(&self) -> u64 {
        now_ms().saturating_sub((self.ttl - self.heartbeat()).as_millis() as u64)
    }

    fn mine(&self, hash: &str) -> String {
        format!("{}{}:{hash}", self.node_prefix, self.instance)
    }
}

/// The connection pool, key names and scripts, shared by the handle and the writer task.
struct Redis {
    pool: Pool,
    keys: Keys,
    scripts: Scripts,
    /// `redis_up`/`redis_errors_total` of the `state` component.
    health: RedisHealth,
}

impl Redis {
    /// Runs a script or a command with a connection from the pool, within [`TIMEOUT`].
    async fn query<T, F>(&self, run: F) -> Result<T, ClusterError>
    where
        F: AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    {
        let work = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| ClusterError(format!("no Redis connection: {e}")))?;
            run(&mut conn)
                .await
                .map_err(|e| ClusterError(format!("Redis failed: {e}")))
        };
        let result = tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| ClusterError("Redis timed out".into()))
            .and_then(|result| result);
        self.health.record(&result);
        result
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        self.query(async |conn| invocation.invoke_async(&mut **conn).await)
            .await
    }

    async fn command<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        self.query(async |conn| command.query_async(&mut **conn).await)
            .await
    }

    /// Adds a socket's presence entry; returns whether the user is new there, and the members.
    async fn join(
        &self,
        channel: &str,
        socket: &str,
        entry: &PresenceEntry,
    ) -> Result<(bool, Vec<String>), ClusterError> {
        let k = &self.keys;
        let (first, members): (i64, Vec<String>) = self
            .script(
                self.scripts
                    .join
                    .arg(&k.node_prefix)
                    .arg(&k.instance)
                    .arg(&k.presence_prefix)
                    .arg(channel)
                    .arg(&*entry.user)
                    .arg(socket)
                    .arg(&*entry.member),
            )
            .await?;
        Ok((first == 1, members))
    }

    /// Removes a socket's presence entry; returns the member if the user left the channel.
    async fn leave(
        &self,
        channel: &str,
        socket: &str,
        user: &str,
    ) -> Result<Option<String>, ClusterError> {
        let k = &self.keys;
        self.script(
            self.scripts
                .leave
                .arg(&k.node_prefix)
                .arg(&k.instance)
                .arg(&k.presence_prefix)
                .arg(channel)
                .arg(user)
                .arg(socket),
        )
        .await
    }

    /// Removes a node instance's whole share (nothing if another node swept it first).
    async fn sweep(&self, instance: &str) -> Result<Swept, ClusterError> {
        let k = &self.keys;
        let (left, vacated, users): (Vec<String>, Vec<String>, Vec<String>) = self
            .script(
                self.scripts
                    .sweep
                    .arg(&k.nodes)
                    .arg(&k.node_prefix)
                    .arg(&k.presence_prefix)
                    .arg(instance)
                    .arg(&k.totals),
            )
            .await?;
        let users = pairs(users)
            .into_iter()
            .map(|(user, sockets)| (user, sockets.parse().unwrap_or(0)))
            .collect();
        Ok(Swept {
            left: pairs(left),
            vacated,
            users,
        })
    }

    /// Sums fields of a per-node hash over live nodes, in one script call.
    async fn sums(&self, hash: &str, fields: &[&str]) -> Result<Vec<u64>, ClusterError> {
        let k = &self.keys;
        let mut invocation = self.scripts.sum.prepare_invoke();
        invocation
            .arg(&k.nodes)
            .arg(&k.node_prefix)
            .arg(k.oldest_live())
            .arg(hash);
        for field in fields {
            invocation.arg(*field);
        }
        self.script(&invocation).await
    }

    /// Sums one field of a per-node hash over live nodes.
    async fn sum(&self, hash: &str, field: &str) -> Result<u64, ClusterError> {
        Ok(self
            .sums(hash, &[field])
            .await?
            .first()
            .copied()
            .unwrap_or(0))
    }
}

/// The shared state in Redis, as seen from one node.
pub struct RedisState {
    redis: Arc<Redis>,
    ops: mpsc::UnboundedSender<Op>,
    connects: mpsc::UnboundedSender<Connect>,
    /// Sockets per user across the cluster; 0 = unlimited.
    limit: usize,
    /// Set when this node changed its share without Redis (an outage); the next heartbeat
    /// rewrites the share.
    drifted: Arc<AtomicBool>,
    /// Wakes the writer for a heartbeat now.
    beat_now: Arc<Notify>,
    /// The node, for the webhooks of what the shutdown sweep finds.
    node: Weak<Node>,
}

impl RedisState {
    /// Starts heart-beating, the writer and the admitter; `ttl` is how long a silent node's
    /// share lives, `limit` the sockets a user may have across the cluster (0 = no limit).
    pub fn start(
        pool: Pool,
        prefix: &str,
        node_id: &str,
        (ttl, limit): (Duration, usize),
        node: Weak<Node>,
        health: RedisHealth,
    ) -> Result<Self, ClusterError> {
        let suffix = crate::transport::random_id()
            .map_err(|e| ClusterError(format!("no randomness for the instance id: {e}")))?;
        let redis = Arc::new(Redis {
            pool,
            keys: Keys {
                nodes: format!("{prefix}sb:nodes"),
                totals: format!("{prefix}sb:channels"),
                connections: format!("{prefix}sb:nodes:connections"),
                node_prefix: format!("{prefix}sb:node:"),
                presence_prefix: format!("{prefix}sb:presence:"),
                instance: format!("{node_id}.{}", &suffix[..8]),
                ttl,
            },
            scripts: Scripts {
                connect: Script::new(CONNECT),
                apply: Script::new(APPLY),
                resync_channels: Script::new(RESYNC_CHANNELS),
                join: Script::new(JOIN),
                leave: Script::new(LEAVE),
                sweep: Script::new(SWEEP),
                sum: Script::new(SUM),
                all_channels: Script::new(ALL_CHANNELS),
                nodes: Script::new(NODES),
            },
            health,
        });
        let (ops, rx) = mpsc::unbounded_channel();
        let drifted = Arc::new(AtomicBool::new(false));
        let beat_now = Arc::new(Notify::new());
        let writer = Writer {
            beat_now: beat_now.clone(),
            redis: redis.clone(),
            drifted: drifted.clone(),
            node: node.clone(),
            pending: Pending::default(),
            registered: false,
        };
        tokio::spawn(writer.run(rx));
        let (connects, waiting) = mpsc::unbounded_channel();
        tokio::spawn(admit(redis.clone(), waiting, limit, ops.clone()));
        Ok(Self {
            redis,
            ops,
            connects,
            limit,
            drifted,
            beat_now,
            node,
        })
    }

    /// Takes a slot for `user` unless it has `limit` sockets on live nodes.
    pub async fn connect(&self, user: &str) -> Result<(), super::ConnectRefusal> {
        let (answer, admitted) = oneshot::channel();
        let unavailable = || ClusterError("the connection admitter stopped".into());
        self.connects
            .send(Connect {
                user: user.into(),
                answer,
            })
            .map_err(|_| unavailable())?;
        match admitted.await.map_err(|_| unavailable())?? {
            true => Ok(()),
            false => Err(super::ConnectRefusal::TooMany(self.limit)),
        }
    }

    /// Asks the writer for a heartbeat now.
    pub fn nudge(&self) {
        self.beat_now.notify_one();
    }

    /// Asks for this node's share to be rewritten at the next heartbeat.
    pub fn mark_drifted(&self) {
        self.drifted.store(true, Ordering::Release);
    }

    /// Queues a change of `user`'s socket count on this node.
    pub fn user_delta(&self, user: Arc<str>, delta: i64) {
        // The writer lives as long as the runtime; after that nothing is left to count.
        let _ = self.ops.send(Op::User(user, delta));
    }

    /// Queues a change of `channel`'s socket count on this node.
    pub fn channel_delta(&self, channel: Arc<str>, delta: i64) {
        let _ = self.ops.send(Op::Channel(channel, delta));
    }

    /// Adds a presence entry and reads the members.
    pub(super) async fn presence_join(
        &self,
        channel: &str,
        socket: &str,
        entry: &PresenceEntry,
    ) -> Result<PresenceJoin, ClusterError> {
        let (first, members) = self.redis.join(channel, socket, entry).await?;
        Ok(PresenceJoin {
            first,
            members: parse_members(members),
        })
    }

    /// Queues the removal of a presence entry; the writer announces `leaving` if it was the
    /// user's last socket.
    pub fn presence_leave(&self, channel: Arc<str>, socket: SocketId, user: Arc<str>) {
        let _ = self.ops.send(Op::Leave {
            channel,
            socket,
            user,
        });
    }

    /// The members of a presence channel.
    pub async fn presence_members(
        &self,
        channel: &str,
    ) -> Result<Vec<Box<RawValue>>, ClusterError> {
        let key = format!("{}{channel}:members", self.redis.keys.presence_prefix);
        let members: Vec<String> = self.redis.command(redis::cmd("HVALS").arg(key)).await?;
        Ok(parse_members(members))
    }

    /// Sockets of `user` on live nodes.
    pub async fn user_connections(&self, user: &str) -> Result<u64, ClusterError> {
        self.redis.sum("users", user).await
    }

    /// Sockets of each of `users` on live nodes.
    pub async fn users_connections(&self, users: &[&str]) -> Result<Vec<u64>, ClusterError> {
        self.redis.sums("users", users).await
    }

    /// One channel's counts on live nodes.
    pub async fn channel(
        &self,
        channel: &str,
        presence: bool,
    ) -> Result<ChannelInfo, ClusterError> {
        let subscriptions = self.redis.sum("channels", channel).await?;
        let users = if presence {
            let key = format!("{}{channel}:counts", self.redis.keys.presence_prefix);
            Some(self.redis.command(redis::cmd("HLEN").arg(key)).await?)
        } else {
            None
        };
        Ok(ChannelInfo {
            subscriptions,
            users,
        })
    }

    /// Every channel with sockets on live nodes.
    pub async fn channels(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let k = &self.redis.keys;
        self.redis
            .script(
                self.redis
                    .scripts
                    .all_channels
                    .arg(&k.nodes)
                    .arg(&k.node_prefix)
                    .arg(k.oldest_live()),
            )
            .await
    }

    /// Every node instance in the cluster, with its last heartbeat and its connections then.
    pub async fn nodes(&self) -> Result<Vec<super::NodeInfo>, ClusterError> {
        let k = &self.redis.keys;
        let flat: Vec<String> = self
            .redis
            .script(&self.redis.scripts.nodes.arg(&k.nodes))
            .await?;
        let oldest_live = k.oldest_live();
        let nodes = flat
            .chunks_exact(3)
            .map(|entry| {
                // A score is a double in Redis; heartbeats are whole milliseconds.
                let heartbeat = entry[1].parse::<f64>().map_or(0, |ms| ms as u64);
                super::NodeInfo {
                    id: entry[0].clone(),
                    this: entry[0] == k.instance,
                    last_heartbeat_ms: heartbeat,
                    live: heartbeat >= oldest_live,
                    connections: entry[2].parse().unwrap_or(0),
                }
            })
            .collect();
        Ok(nodes)
    }

    /// Removes this instance's share now (its sockets are gone at shutdown); returns the
    /// (channel, member) pairs of users who left with it.
    pub async fn shutdown(&self) -> Vec<(String, String)> {
        match self.redis.sweep(&self.redis.keys.instance).await {
            Ok(swept) => {
                if let Some(node) = self.node.upgrade() {
                    for channel in &swept.vacated {
                        node.webhooks.channel(channel, false);
                    }
                }
                swept.left
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not remove this node's shared state; the other nodes will sweep it");
                Vec::new()
            }
        }
    }
}

/// A connection waiting for its per-user slot.
struct Connect {
    user: Arc<str>,
    answer: oneshot::Sender<Result<bool, ClusterError>>,
}

/// Takes per-user slots for waiting connections, all those waiting in one script call: a
/// connect storm costs one Redis round trip per batch, not per connection. A slot taken for
/// a connect nobody waits for any more (its request was cancelled) is given back through
/// `ops`, so a client that hangs up mid-connect cannot leak a slot.
async fn admit(
    redis: Arc<Redis>,
    mut waiting: mpsc::UnboundedReceiver<Connect>,
    limit: usize,
    ops: mpsc::UnboundedSender<Op>,
) {
    let mut batch = Vec::new();
    while let Some(first) = waiting.recv().await {
        batch.push(first);
        while batch.len() < BATCH
            && let Ok(next) = waiting.try_recv()
        {
            batch.push(next);
        }
        let k = &redis.keys;
        let mut invocation = redis.scripts.connect.prepare_invoke();
        invocation
            .arg(&k.nodes)
            .arg(&k.node_prefix)
            .arg(&k.instance)
            .arg(limit)
            .arg(k.oldest_live());
        for connect in &batch {
            invocation.arg(&*connect.user);
        }
        let counts: Result<Vec<i64>, _> = redis.script(&invocation).await;
        for (index, connect) in batch.drain(..).enumerate() {
            let result = match &counts {
                Ok(counts) => Ok(counts.get(index).is_some_and(|c| *c >= 0)),
                Err(e) => Err(e.clone()),
            };
            let taken = matches!(result, Ok(true));
            if connect.answer.send(result).is_err() && taken {
                let _ = ops.send(Op::User(connect.user, -1));
            }
        }
    }
}

/// What sweeping a node removed.
struct Swept {
    /// (channel, member) of users who left presence channels with it.
    left: Vec<(String, String)>,
    /// Channels it held the last subscribers of.
    vacated: Vec<String>,
    /// Its sockets per user.
    users: Vec<(String, u64)>,
}

/// Pairs up a flat {a, b, a, b, …} answer.
fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(a), Some(b)) = (items.next(), items.next()) {
        pairs.push((a, b));
    }
    pairs
}

/// Members read from Redis; anything that is not JSON (written by someone else) is skipped.
fn parse_members(mut members: Vec<String>) -> Vec<Box<RawValue>> {
    members.sort();
    members
        .into_iter()
        .filter_map(|m| RawValue::from_string(m).ok())
        .collect()
}

/// Writes not yet applied, merged so a burst of joins and leaves costs one script call.
#[derive(Default)]
struct Pending {
    users: HashMap<Arc<str>, i64>,
    channels: HashMap<Arc<str>, i64>,
    leaves: Vec<(Arc<str>, SocketId, Arc<str>)>,
}

impl Pending {
    fn add(&mut self, op: Op) {
        match op {
            Op::User(user, delta) => *self.users.entry(user).or_default() += delta,
            Op::Channel(channel, delta) => *self.channels.entry(channel).or_default() += delta,
            Op::Leave {
                channel,
                socket,
                user,
            } => self.leaves.push((channel, socket, user)),
        }
    }

    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.channels.is_empty() && self.leaves.is_empty()
    }
}

/// The task that applies queued writes, heart-beats and sweeps dead nodes.
struct Writer {
    redis: Arc<Redis>,
    node: Weak<Node>,
    pending: Pending,
    drifted: Arc<AtomicBool>,
    beat_now: Arc<Notify>,
    /// Whether this instance's share is known to be in Redis.
    registered: bool,
}

impl Writer {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut heartbeat = tokio::time::interval(self.redis.keys.heartbeat());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    self.pending.add(op);
                    while let Ok(op) = ops.try_recv() {
                        self.pending.add(op);
                    }
                    self.flush().await;
                }
                () = self.beat_now.notified() => heartbeat.reset_immediately(),
                // The task ends when the node (and so the sender of `ops`) is gone; it must not
                // look at the node's strong count, which is 0 while the node is being built.
                _ = heartbeat.tick() => {
                    if !self.beat(&mut ops).await {
                        // Redis is away: try again soon, so the share is rewritten as soon as
                        // it is back rather than a whole heartbeat later.
                        heartbeat.reset_after(RETRY);
                    }
                    // Retries writes that failed while Redis was away.
                    self.flush().await;
                }
            }
        }
    }

    /// Applies pending writes; what fails stays pending for the next try.
    async fn flush(&mut self) {
        if self.pending.is_empty() || !self.registered {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut deltas = Vec::new();
        for (hash, map) in [("users", pending.users), ("channels", pending.channels)] {
            deltas.extend(
                map.into_iter()
                    .filter(|(_, delta)| *delta != 0)
                    .map(|(field, delta)| (hash, field, delta)),
            );
        }
        let k = &self.redis.keys;
        for chunk in deltas.chunks(BATCH) {
            let mut invocation = self.redis.scripts.apply.prepare_invoke();
            invocation
                .arg(&k.node_prefix)
                .arg(&k.instance)
                .arg(&k.totals);
            for (hash, field, delta) in chunk {
                invocation.arg(*hash).arg(&**field).arg(*delta);
            }
            let applied = self.redis.script::<Vec<String>>(&invocation).await;
            if let Ok(transitions) = &applied {
                self.channels_changed(transitions);
            }
            if let Err(e) = applied {
                tracing::warn!(error = %e, "shared counts not updated; will retry");
                for (hash, field, delta) in chunk {
                    let op = if *hash == "users" {
                        Op::User(field.clone(), *delta)
                    } else {
                        Op::Channel(field.clone(), *delta)
                    };
                    self.pending.add(op);
                }
            }
        }
        for (channel, socket, user) in pending.leaves {
            match self.redis.leave(&channel, &socket, &user).await {
                Ok(Some(member)) => self.announce(&channel, "presence:leaving", member),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "presence entry not removed; will retry");
                    self.pending.leaves.push((channel, socket, user));
                }
            }
        }
    }

    /// Raises `channel_occupied` / `channel_vacated` for {channel, "1" | "0", …}.
    fn channels_changed(&self, transitions: &[String]) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        for pair in transitions.chunks_exact(2) {
            node.webhooks.channel(&pair[0], pair[1] == "1");
        }
    }

    /// Publishes a presence event for a member read from Redis.
    fn announce(&self, channel: &str, event: &'static str, member: String) {
        let (Some(node), Ok(member)) = (self.node.upgrade(), RawValue::from_string(member)) else {
            return;
        };
        let channel = channel.to_owned();
        tokio::spawn(async move {
            node.announce_presence(&channel, event, &member, None).await;
        });
    }

    /// Marks this node alive, rewrites its share if Redis lost it, and sweeps dead nodes;
    /// false when Redis could not be reached.
    async fn beat(&mut self, ops: &mut mpsc::UnboundedReceiver<Op>) -> bool {
        let k = &self.redis.keys;
        // Each heartbeat also records this node's connection count, for the admin page's
        // node list (read back by NODES; removed by SWEEP with the rest of the node).
        let connections = self
            .node
            .upgrade()
            .map_or(0, |node| node.connection_count());
        let mut heartbeat = redis::pipe();
        heartbeat
            .cmd("ZADD")
            .arg(&k.nodes)
            .arg(now_ms())
            .arg(&k.instance)
            .cmd("HSET")
            .arg(&k.connections)
            .arg(&k.instance)
            .arg(connections)
            .ignore();
        let added = self
            .redis
            .query(async |conn| heartbeat.query_async::<(i64,)>(&mut **conn).await)
            .await
            .map(|(added,)| added);
        match added {
            // New in the set (first beat, Redis restarted empty, or others swept us), not yet
            // written (the node was still being built), or changed without Redis: rewrite.
            Ok(added) => {
                let drifted = self.drifted.swap(false, Ordering::AcqRel);
                if (added == 1 || !self.registered || drifted) && !self.resync(ops).await {
                    self.drifted.store(true, Ordering::Release);
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat to Redis failed");
                return false;
            }
        }
        let k = &self.redis.keys;
        let dead = redis::cmd("ZRANGEBYSCORE")
            .arg(&k.nodes)
            .arg("-inf")
            .arg(format!("({}", k.oldest_live()))
            .clone();
        let dead: Vec<String> = self.redis.command(&dead).await.unwrap_or_default();
        for instance in dead {
            match self.redis.sweep(&instance).await {
                Ok(swept) => {
                    tracing::info!(node = %instance, members_left = swept.left.len(), "swept a node that stopped heart-beating");
                    for (channel, member) in swept.left {
                        self.announce(&channel, "presence:leaving", member);
                    }
                    if let Some(node) = self.node.upgrade() {
                        for channel in &swept.vacated {
                            node.webhooks.channel(channel, false);
                        }
                        let dead = instance.rsplit_once('.').map_or(&*instance, |(id, _)| id);
                        for (user, sockets) in &swept.users {
                            node.webhooks.node_lost(dead, user, *sockets);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %instance, error = %e, "sweeping a dead node failed")
                }
            }
        }
        let live = redis::cmd("ZCOUNT")
            .arg(&k.nodes)
            .arg(k.oldest_live())
            .arg("+inf")
            .clone();
        if let (Ok(live), Some(node)) =
            (self.redis.command::<i64>(&live).await, self.node.upgrade())
        {
            node.metrics.cluster_nodes.set(live);
        }
        true
    }

    /// Rewrites this instance's whole share from the node's own state; false when Redis
    /// failed (the next heartbeat tries again).
    async fn resync(&mut self, ops: &mut mpsc::UnboundedReceiver<Op>) -> bool {
        // None while the node is still being built: the next beat (soon) tries again.
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        let cluster = &node.cluster;
        let rewrite = cluster.rewrite.write().await;
        let (users, presence, channels) = {
            let _changes = cluster.changes.write().unwrap_or_else(|p| p.into_inner());
            // Counts queued before the snapshot are in it; presence removals are not.
            while let Ok(op) = ops.try_recv() {
                if matches!(op, Op::Leave { .. }) {
                    self.pending.add(op);
                }
            }
            self.pending.users.clear();
            self.pending.channels.clear();
            let super::Snapshot { users, presence } = cluster.snapshot();
            (users, presence, node.hub.channel_counts())
        };
        let k = &self.redis.keys;
        let mut pipe = redis::pipe();
        // Presence entries are not deleted: re-adding them below is idempotent, and a delete
        // would leave the per-channel counts they contributed behind.
        pipe.atomic().del(k.mine("users"));
        for chunk in users.chunks(BATCH) {
            let fields: Vec<(&str, u32)> = chunk.iter().map(|(u, c)| (&**u, *c)).collect();
            pipe.hset_multiple(k.mine("users"), &fields);
        }
        let mut channels_invocation = self.redis.scripts.resync_channels.prepare_invoke();
        channels_invocation.arg(k.mine("channels")).arg(&k.totals);
        for (channel, count) in &channels {
            channels_invocation.arg(&**channel).arg(*count);
        }
        let written = match self
            .redis
            .query(async |conn| pipe.query_async::<()>(&mut **conn).await)
            .await
        {
            Ok(()) => self.redis.script::<Vec<String>>(&channels_invocation).await,
            Err(e) => Err(e),
        };
        let transitions = match written {
            Ok(transitions) => transitions,
            Err(e) => {
                tracing::warn!(error = %e, "could not write this node's share to Redis; will retry");
                // Forget the registration so the next beat tries again.
                let zrem = redis::cmd("ZREM").arg(&k.nodes).arg(&k.instance).clone();
                let _ = self.redis.command::<i64>(&zrem).await;
                return false;
            }
        };
        self.channels_changed(&transitions);
        drop(rewrite);
        // Users the others saw leave (when they swept this node) are announced again.
        for (channel, socket, entry) in presence {
            if let Ok((true, _)) = self.redis.join(&channel, &socket, &entry).await {
                self.announce(&channel, "presence:joining", entry.member.to_string());
            }
        }
        if self.registered {
            tracing::info!("Redis had lost this node's shared state; rewrote it");
        }
        self.registered = true;
        true
    }
}
