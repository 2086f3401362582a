//! The node: hub, bus and sessions composed. The first local member of a channel makes the
//! node subscribe to it on the bus, the last one leaving unsubscribes; every message from the
//! bus is decoded once here and handed to the hub.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;
use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::backend::ForwardError;
use crate::blocks::{self, Blocks};
use crate::bus::memory::MemoryBus;
use crate::bus::redis::RedisBus;
use crate::bus::{Bus, BusError, Envelope, Receiver};
use crate::channel::{self, Refusal, WhisperRefusal};
use crate::cluster::redis::RedisState;
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::engine::Sessions;
use crate::hub::{Broadcast, Hub, JoinError, Member, SocketId};
use crate::limit::{
    AddressCounts, AddressLimits, KeyedLimits, LogBudget, SWEEP_INTERVAL, address_key, client_ip,
};
use crate::metrics::{Limit, Metrics, Protocol};
use crate::outbox::{CloseReason, Write};
use crate::pacing::Pacing;
use crate::policy::Request;
use crate::webhooks::Webhooks;

/// The bus channel of node-to-node commands (e.g. closing a user's sockets everywhere).
pub const CONTROL_CHANNEL: &str = "switchboard.control";

/// How long a subscribe waits for the bus to confirm, when the bus is up.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Longest shutdown waits for the last webhooks.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(5);

/// One gateway node.
pub struct Node {
    /// Checked configuration.
    pub config: Config,
    /// Local channel memberships.
    pub hub: Hub,
    /// The way to the other nodes.
    pub bus: Bus,
    /// What the nodes know together: connection slots, channel counts, presence.
    pub cluster: Cluster,
    /// Cached chat block lists.
    pub blocks: Blocks,
    /// Chat messages waiting for their author's block list, delivered in order.
    chat: mpsc::UnboundedSender<ChatMessage>,
    /// Chat messages sent to that queue and not yet delivered.
    chat_waiting: AtomicUsize,
    /// Connection attempts per client address.
    pub connect_limits: AddressLimits,
    /// Engine.IO sessions per client address that have not connected a namespace yet.
    pub unauthenticated: AddressCounts,
    /// HTTP API calls per key.
    pub api_limits: KeyedLimits<String>,
    /// Wrong API and admin credentials per client address.
    pub failed_auth: AddressLimits,
    /// Log lines of refused Socket.IO connects: one per sweep interval, then a count.
    pub connect_refusals: LogBudget,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Live Engine.IO sessions (the Socket.IO engine's, shared with it).
    pub sessions: Arc<Sessions<crate::socketio::Sockets>>,
    /// Live plain WebSocket sockets.
    pub plain: DashMap<SocketId, Arc<Member>>,
    /// The notification store, when a database is configured.
    pub notifications: Option<crate::notifications::store::Store>,
    /// Events posted to the application, when configured.
    pub webhooks: Webhooks,
    draining: AtomicBool,
    this: Weak<Node>,
}

/// Why a new connection was turned away before any protocol ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The node is draining.
    Draining,
    /// The client address is over its connect rate.
    RateLimited,
    /// The node holds `SWITCHBOARD_MAX_CONNECTIONS`.
    Full,
    /// The client address holds `SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS` sessions that
    /// have not connected a namespace.
    Unauthenticated,
}

impl Admission {
    /// The HTTP status to answer.
    pub fn status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::RateLimited | Self::Unauthenticated => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining | Self::Full => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What to tell the client.
    pub fn message(self) -> &'static str {
        match self {
            Self::Draining => "node is shutting down",
            Self::RateLimited => "too many connection attempts from this address, slow down",
            Self::Full => "node is at its connection limit",
            Self::Unauthenticated => {
                "too many sessions from this address have not connected yet, slow down"
            }
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics registry refused a metric (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The Redis bus could not be set up.
    #[error("SWITCHBOARD_REDIS_URL: {0}")]
    Bus(#[from] BusError),
    /// The shared state could not be set up.
    #[error("SWITCHBOARD_REDIS_URL: {0}")]
    Cluster(#[from] ClusterError),
    /// The webhook sender could not be set up.
    #[error("SWITCHBOARD_WEBHOOK_URL: {0}")]
    Webhooks(String),
}

impl Node {
    /// Builds the node and starts its bus; must run inside a tokio runtime.
    pub fn start(config: Config) -> Result<Arc<Self>, StartError> {
        let metrics = Metrics::new()?;
        let webhooks = match &config.webhooks {
            Some(settings) => Webhooks::start(settings.clone(), &config.node_id, metrics.clone())
                .map_err(StartError::Webhooks)?,
            None => Webhooks::off(),
        };
        let notifications = config.database.clone().map(|database| {
            crate::notifications::store::Store::new(
                database,
                config.notifications.clone(),
                metrics.clone(),
            )
        });
        let mut bus_error = None;
        let mut cluster_error = None;
        let (chat, chat_queue) = mpsc::unbounded_channel();
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            let bus = match (&config.redis, &config.redis_url) {
                (Some(client), Some(url)) => {
                    match RedisBus::start(
                        client.clone(),
                        url,
                        config.redis_prefix.clone(),
                        weak.clone() as Weak<dyn Receiver>,
                        &metrics,
                    ) {
                        Ok(bus) => Bus::Redis(bus),
                        Err(e) => {
                            bus_error = Some(e);
                            Bus::Memory(MemoryBus::new(weak.clone() as Weak<dyn Receiver>))
                        }
                    }
                }
                _ => Bus::Memory(MemoryBus::new(weak.clone() as Weak<dyn Receiver>)),
            };
            let per_user = config.max_connections_per_user;
            let cluster = match &bus {
                Bus::Redis(redis) => match RedisState::start(
                    redis.pool(),
                    &config.redis_prefix,
                    &config.node_id,
                    (config.presence_ttl, per_user),
                    weak.clone(),
                    metrics.redis("state"),
                ) {
                    Ok(state) => Cluster::redis(state, per_user),
                    Err(e) => {
                        cluster_error = Some(e);
                        Cluster::memory(per_user)
                    }
                },
                Bus::Memory(_) => Cluster::memory(per_user),
            };
            let blocks_pool = match &bus {
                Bus::Redis(redis) => Some(redis.pool()),
                Bus::Memory(_) => None,
            };
            Self {
                sessions: Arc::default(),
                plain: DashMap::new(),
                notifications,
                webhooks,
                hub: Hub::new(Pacing::new(
                    config.direct_write_share,
                    config.direct_write_budget,
                )),
                bus,
                cluster,
                blocks: Blocks::new(blocks_pool, config.redis_prefix.clone()),
                chat,
                chat_waiting: AtomicUsize::new(0),
                connect_limits: AddressLimits::new(config.connect_rate),
                unauthenticated: AddressCounts::new(config.max_unauthenticated_per_address),
                api_limits: KeyedLimits::new(config.api_rate),
                failed_auth: AddressLimits::new(crate::access::FAILED_ATTEMPTS),
                connect_refusals: LogBudget::default(),
                metrics,
                config,
                draining: AtomicBool::new(false),
                this: weak.clone(),
            }
        });
        if let Some(e) = bus_error {
            return Err(e.into());
        }
        if let Some(e) = cluster_error {
            return Err(e.into());
        }
        node.metrics.watch_runtime();
        if !node.cluster.is_shared() {
            // Without Redis this node is the whole cluster; with it, the heartbeat counts.
            node.metrics.cluster_nodes.set(1);
        }
        let _ = node.bus.subscribe(Arc::from(CONTROL_CHANNEL));
        if node.blocks.enabled() {
            // Heard for the node's whole life: the back-end's block list changes.
            let _ = node.bus.subscribe(Arc::from(blocks::CHANGED_CHANNEL));
        }
        tokio::spawn(deliver_chat(Arc::downgrade(&node), chat_queue));
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                node.connect_limits.sweep();
                node.api_limits.sweep();
                node.failed_auth.sweep();
                let refused = node.connect_refusals.summary();
                if refused > 0 {
                    tracing::info!(refused, interval = ?SWEEP_INTERVAL, "more Socket.IO connects refused than logged");
                }
            }
        });
        Ok(node)
    }

    /// Ready for traffic: the bus is reachable and the node is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.bus.is_healthy() && !self.is_draining()
    }

    /// How queued frames reach this node's websockets.
    pub fn writes(&self) -> crate::transport::Writes {
        crate::transport::Writes {
            delay: self.config.write_delay,
            direct: self.hub.pacing().enabled(),
        }
    }

    /// Client connections of every protocol on this node.
    pub fn connection_count(&self) -> usize {
        self.sessions.len() + self.plain.len()
    }

    /// The key every per-client limit counts by: the client's address (behind trusted proxies,
    /// the forwarded one), an IPv6 address by its /64.
    pub fn client_key(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        address_key(client_ip(peer, headers, &self.config.trusted_proxies))
    }

    /// Checks a new connection against shutdown, the client address's rate and the node's
    /// connection limit; refusals are counted. Returns the client's [`Node::client_key`].
    pub fn admit(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<IpAddr, Admission> {
        let key = self.client_key(peer, headers);
        let refusal = if self.is_draining() {
            Admission::Draining
        } else if !self.connect_limits.take(&key) {
            self.metrics.rate_limited(Limit::ConnectIp);
            Admission::RateLimited
        } else if self.connection_count() >= self.config.max_connections {
            self.metrics
                .errors
                .with_label_values(&["connection_limit"])
                .inc();
            Admission::Full
        } else {
            return Ok(key);
        };
        Err(refusal)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Delivers a bus message to the local members of its channel; `write` says whether the
    /// sockets may be written to at once (`Queued` when more messages are already waiting).
    fn on_bus_message(&self, channel: &str, payload: &[u8], write: Write) {
        let received = Instant::now();
        self.metrics.bus_receives.inc();
        let envelope: Envelope<'_> = match serde_json::from_slice(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.metrics
                    .errors
                    .with_label_values(&["bus_envelope"])
                    .inc();
                // Not `%e`: serde's message can quote the payload (`invalid type: string "…"`).
                tracing::warn!(channel, problem = ?e.classify(), column = e.column(), "ignoring a bus message that is not a broadcast envelope");
                return;
            }
        };
        let data = envelope.data.unwrap_or(RawValue::NULL);
        if channel == blocks::CHANGED_CHANNEL {
            self.on_blocks_changed(data);
            return;
        }
        if channel == CONTROL_CHANNEL {
            self.on_control(&envelope.event, data);
            return;
        }
        if let Some(author) = self.blocks.enabled().then(|| author(&envelope)).flatten() {
            // At once when the author's list is known and nothing waits before it; else by one
            // task, in order, once the list is loaded.
            if self.chat_waiting.load(Ordering::Acquire) == 0 && self.blocks.is_cached(&author) {
                self.deliver(channel, &envelope, Some(&author), received, write);
                return;
            }
            self.chat_waiting.fetch_add(1, Ordering::AcqRel);
            let _ = self.chat.send(ChatMessage {
                channel: channel.to_owned(),
                payload: Bytes::copy_from_slice(payload),
                received,
            });
            return;
        }
        self.deliver(channel, &envelope, None, received, write);
    }

    /// Hands a broadcast to the hub, leaving out recipients who blocked `author` or whom the
    /// author blocked; `received` is when the bus handed it over.
    fn deliver(
        &self,
        channel: &str,
        envelope: &Envelope<'_>,
        author: Option<&str>,
        received: Instant,
        write: Write,
    ) {
        // A root span on a node that received the message from Redis; under the publish's
        // span when the in-process bus delivers it within the publish.
        let span = tracing::debug_span!(
            "bus.deliver",
            otel.kind = "consumer",
            messaging.destination.name = channel,
            switchboard.event = &*envelope.event,
            switchboard.recipients = tracing::field::Empty,
            switchboard.slow = tracing::field::Empty,
        );
        let _span = span.enter();
        let data = envelope.data.unwrap_or(RawValue::NULL);
        let mut message =
            Broadcast::new(channel, &envelope.event, data, envelope.socket.as_deref());
        message.write = write;
        let fanout = self.hub.broadcast(&message, |member| {
            author.is_none_or(|author| !self.blocks.between(&member.principal.user_id, author))
        });
        span.record("switchboard.recipients", fanout.delivered);
        let metrics = &self.metrics;
        metrics.fanout.observe(fanout.delivered as f64);
        metrics.direct_writes.inc_by(fanout.written as u64);
        for protocol in [Protocol::SocketIo, Protocol::Json] {
            let sent = fanout.by_protocol[protocol as usize];
            if sent > 0 {
                metrics
                    .messages_out
                    .inc_by(protocol, "broadcast", sent as u64);
            }
        }
        metrics
            .delivery_latency
            .observe(received.elapsed().as_secs_f64());
        if fanout.slow > 0 {
            span.record("switchboard.slow", fanout.slow);
            tracing::warn!(
                channel,
                sockets = fanout.slow,
                "disconnecting slow consumers"
            );
        }
    }

    /// `{"userId": …}` on the block-list channel: reload that list if this node uses it.
    fn on_blocks_changed(&self, data: &RawValue) {
        let Some(user) = crate::protocol::id_field(data, "userId") else {
            tracing::warn!("ignoring a block-list change without a userId");
            return;
        };
        let Some(node) = self.this.upgrade() else {
            return;
        };
        tokio::spawn(async move { node.blocks.changed(&user).await });
    }

    /// A command from another node (or this one) on the control channel.
    fn on_control(&self, command: &str, data: &RawValue) {
        match (command, crate::protocol::id_field(data, "userId")) {
            ("disconnect_user", Some(user)) => {
                let closed = self.kick(&user);
                if closed > 0 {
                    tracing::info!(user, sockets = closed, "closed a user's sockets on request");
                }
            }
            _ => tracing::warn!(command, "ignoring an unknown control command"),
        }
    }

    /// Closes this node's sockets of `user`, telling Socket.IO clients not to reconnect.
    fn kick(&self, user: &str) -> usize {
        let mut sockets = self.hub.members(&channel::user_channel(user));
        sockets.extend(self.hub.members(&crate::notifications::user_room(user)));
        for socket in &sockets {
            if let Some(farewell) = socket.codec.farewell() {
                let _ = socket.outbox.push(farewell);
            }
            socket.outbox.close(CloseReason::Kicked);
        }
        sockets.len()
    }

    /// Closes every socket of `user` on every node.
    pub async fn disconnect_user(&self, user: &str) -> Result<(), BusError> {
        let data = serde_json::value::to_raw_value(&serde_json::json!({"userId": user}))
            .map_err(|e| BusError(e.to_string()))?;
        self.publish(CONTROL_CHANNEL, "disconnect_user", &data, None)
            .await
    }

    /// Forwards a client event to the back-end in its own task (the socket goes on meanwhile)
    /// and hands the answer to `reply`; at most the configured number per socket at once.
    pub fn forward(
        &self,
        socket: &Arc<Member>,
        event: String,
        data: Box<RawValue>,
        reply: impl FnOnce(Result<Box<RawValue>, ForwardError>) + Send + 'static,
    ) {
        let (Some(node), Some(backend)) = (self.this.upgrade(), self.config.backend.clone()) else {
            return reply(Err(ForwardError::Unreachable));
        };
        let in_flight = socket.forwards.fetch_add(1, Ordering::AcqRel);
        if in_flight >= backend.max_in_flight {
            socket.forwards.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rate_limited(Limit::Forward);
            return reply(Err(ForwardError::Busy));
        }
        let socket = socket.clone();
        tokio::spawn(async move {
            let answer = backend
                .forward(
                    &event,
                    &data,
                    &socket.principal.user_id,
                    &socket.id,
                    &node.config.node_id,
                )
                .await;
            socket.forwards.fetch_sub(1, Ordering::AcqRel);
            let outcome = match &answer {
                Ok(_) => "forward_ok",
                Err(ForwardError::NotAllowed(_)) => "forward_not_allowed",
                Err(_) => "forward_failed",
            };
            node.metrics
                .messages_in
                .inc(socket.codec.protocol(), outcome);
            if let Err(e) = &answer {
                tracing::info!(event, error = %e, "forwarded event not answered");
            }
            reply(answer);
        });
    }

    /// Adds a socket to a channel, subscribing the bus on the first local member, and waits
    /// until the bus delivers that channel. Returns the channel's shared name and whether the
    /// socket was already a member.
    pub async fn join(
        &self,
        member: &Arc<Member>,
        channel: &str,
    ) -> Result<(Arc<str>, bool), JoinError> {
        let joined = {
            let _change = self.cluster.change();
            let joined = self
                .hub
                .join(member, channel, self.config.max_subscriptions, |name| {
                    self.metrics.channels.inc();
                    if !self.cluster.is_shared() {
                        // This node is the whole cluster; with Redis, its writer decides.
                        self.webhooks.channel(name, true);
                    }
                    self.bus.subscribe(name.clone())
                })?;
            if !joined.already {
                self.cluster.subscribed(&joined.name);
            }
            joined
        };
        if joined.already {
            return Ok((joined.name, true));
        }
        self.metrics.subscriptions.inc();
        // While the bus is down the subscription is recorded and made on reconnect; waiting would only stall the client.
        if self.bus.is_healthy() && !joined.ready.wait(SUBSCRIBE_WAIT).await {
            tracing::warn!(channel, "bus did not confirm the subscription in time");
        }
        Ok((joined.name, false))
    }

    /// Removes a socket from a channel; returns whether it was a member.
    pub fn leave(&self, member: &Member, channel: &str) -> bool {
        let _change = self.cluster.change();
        match self.hub.leave(member, channel, |name| self.on_last(name)) {
            Some(name) => {
                self.left(member, &name);
                true
            }
            None => false,
        }
    }

    /// A socket was admitted: tells the application when webhooks are on, and closes the
    /// socket when its token expires.
    pub fn connected(&self, member: &Arc<Member>) {
        member.close_at_expiry();
        self.webhooks.connected(
            &member.id,
            &member.principal.user_id,
            member.codec.protocol().label(),
        );
    }

    /// A client's token refresh: verifies `token` and, when it is the same user's, takes its
    /// expiry for each of `sockets` (a Socket.IO session's `/` and `/notifications` sockets).
    /// Returns the new expiry (seconds since the Unix epoch; `None`: never), or why it was refused.
    pub async fn refresh_token(
        &self,
        sockets: &[&Member],
        token: Option<String>,
    ) -> Result<Option<u64>, String> {
        let principal = self.config.jwt.verify_found(token).await.map_err(|e| {
            self.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            e.to_string()
        })?;
        let mut expires = None;
        for socket in sockets {
            expires = socket.refresh(&principal).map_err(str::to_owned)?;
        }
        Ok(expires)
    }

    /// Removes a socket from every channel and gives back its connection slot.
    pub fn disconnect(&self, member: &Member) {
        // A socket whose connection is still open left by itself (Socket.IO `socket.disconnect()`).
        let reason = member
            .outbox
            .close_reason()
            .map_or("client_disconnect", CloseReason::label);
        self.webhooks.disconnected(
            &member.id,
            &member.principal.user_id,
            member.codec.protocol().label(),
            reason,
        );
        let _change = self.cluster.change();
        for name in self.hub.leave_all(member, |name| self.on_last(name)) {
            self.left(member, &name);
        }
        if self.cluster.disconnect(&member.principal.user_id) {
            self.blocks.forget(&member.principal.user_id);
        }
    }

    fn left(&self, member: &Member, channel: &Arc<str>) {
        self.metrics.subscriptions.dec();
        self.cluster.unsubscribed(channel);
        if channel::has_presence(channel) {
            self.presence_left(channel, &member.id);
        }
    }

    fn presence_left(&self, channel: &Arc<str>, socket: &SocketId) {
        let Some(member) = self.cluster.presence_leave(channel, socket) else {
            return;
        };
        let (Some(node), Ok(member)) = (
            self.this.upgrade(),
            RawValue::from_string(member.to_string()),
        ) else {
            return;
        };
        let channel = channel.clone();
        tokio::spawn(async move {
            node.announce_presence(&channel, "presence:leaving", &member, None)
                .await;
        });
    }

    /// Handles a subscribe request from any protocol: rate, name, policy, hub, presence.
    /// Returns the presence members for channels that keep them.
    pub async fn subscribe(
        &self,
        socket: &Arc<Member>,
        channel: &str,
        auth: Option<&serde_json::Value>,
    ) -> Result<Option<Vec<Box<RawValue>>>, Refusal> {
        let span = tracing::debug_span!(
            "subscribe",
            messaging.destination.name = channel,
            switchboard.refusal = tracing::field::Empty,
        );
        let result = self
            .check_and_join(socket, channel, auth)
            .instrument(span.clone())
            .await;
        if let Err(refusal) = &result {
            span.record("switchboard.refusal", tracing::field::display(refusal));
        }
        result
    }

    /// [`Node::subscribe`] within its span.
    async fn check_and_join(
        &self,
        socket: &Arc<Member>,
        channel: &str,
        auth: Option<&serde_json::Value>,
    ) -> Result<Option<Vec<Box<RawValue>>>, Refusal> {
        if !socket.subscribe_limit.take(self.config.subscribe_rate) {
            self.metrics.rate_limited(Limit::Subscribe);
            return Err(Refusal::RateLimited);
        }
        channel::validate(channel, self.config.max_channel_length).map_err(Refusal::InvalidName)?;
        let request = Request {
            principal: &socket.principal,
            channel,
            socket_id: &socket.id,
            auth,
        };
        let grant = self.config.policy.authorize(&request).await?;
        let (name, _) = self.join(socket, channel).await?;
        if channel::allows_whispers(&name) {
            // Users reach each other here (chat, whispers, typing): the member's block list
            // must be known before their messages arrive.
            self.blocks.ensure(&socket.principal.user_id).await;
        }
        if !channel::has_presence(&name) {
            return Ok(None);
        }
        let member = grant
            .member
            .unwrap_or_else(|| self.config.policy.member_from_token(&socket.principal));
        match self
            .presence_join(socket, &name, member.to_string().into())
            .await
        {
            Ok(members) => Ok(Some(members)),
            Err(e) => {
                tracing::warn!(channel = %name, error = %e, "presence join failed");
                self.leave(socket, &name);
                Err(Refusal::Unavailable(
                    "presence state is unreachable, try again".into(),
                ))
            }
        }
    }

    /// Sends a client event to the other members of a channel the sender is in, on every node.
    pub async fn whisper(
        &self,
        socket: &Member,
        channel: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<(), WhisperRefusal> {
        if !event.starts_with("client-") {
            return Err(WhisperRefusal::Name);
        }
        if !channel::allows_whispers(channel) {
            return Err(WhisperRefusal::Public);
        }
        if !socket.is_in(channel) {
            return Err(WhisperRefusal::NotSubscribed);
        }
        self.publish_from(socket, channel, event, data)
            .await
            .map_err(|_| WhisperRefusal::Unavailable)
    }

    /// Adds a socket to a presence channel it has joined; the other members hear
    /// `presence:joining` when this is the user's first socket there. Returns the members.
    pub async fn presence_join(
        &self,
        member: &Member,
        channel: &Arc<str>,
        info: Arc<str>,
    ) -> Result<Vec<Box<RawValue>>, ClusterError> {
        let joined = self
            .cluster
            .presence_join(channel, &member.id, &member.principal.user_id, info.clone())
            .await?;
        if !member.is_in(channel) {
            // The socket left while Redis answered: its leave found nothing to remove.
            self.presence_left(channel, &member.id);
        } else if joined.first
            && let Ok(info) = RawValue::from_string(info.to_string())
        {
            self.announce_presence(channel, "presence:joining", &info, Some(&member.id))
                .await;
        }
        Ok(joined.members)
    }

    /// Publishes a presence event (`presence:joining`/`presence:leaving`) to a channel.
    pub async fn announce_presence(
        &self,
        channel: &str,
        event: &str,
        member: &RawValue,
        except: Option<&str>,
    ) {
        match event {
            "presence:joining" => self.webhooks.member(channel, member, true),
            "presence:leaving" => self.webhooks.member(channel, member, false),
            _ => {}
        }
        // A failed publish is logged and counted by `publish`; presence state itself is right.
        let _ = self.publish(channel, event, member, except).await;
    }

    fn on_last(&self, channel: &Arc<str>) {
        self.metrics.channels.dec();
        if !self.cluster.is_shared() {
            self.webhooks.channel(channel, false);
        }
        self.bus.unsubscribe(channel.clone());
    }

    /// Publishes an event to a channel on every node.
    pub async fn publish(
        &self,
        channel: &str,
        event: &str,
        data: &RawValue,
        except: Option<&str>,
    ) -> Result<(), BusError> {
        let envelope = Envelope {
            event: event.into(),
            data: Some(data),
            socket: except.map(Into::into),
            author: None,
        };
        self.publish_envelope(channel, &envelope).await
    }

    /// Publishes what a client sends the other members of a channel (a whisper, typing): not
    /// back to its socket, and not to users who blocked its user or whom it blocked.
    pub async fn publish_from(
        &self,
        sender: &Member,
        channel: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<(), BusError> {
        let envelope = Envelope {
            event: event.into(),
            data: Some(data),
            socket: Some((*sender.id).into()),
            author: Some((*sender.principal.user_id).into()),
        };
        self.publish_envelope(channel, &envelope).await
    }

    async fn publish_envelope(
        &self,
        channel: &str,
        envelope: &Envelope<'_>,
    ) -> Result<(), BusError> {
        let event = &*envelope.event;
        let payload = envelope.to_bytes();
        let span = tracing::debug_span!(
            "bus.publish",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = self.bus.kind(),
            messaging.destination.name = channel,
            switchboard.event = event,
        );
        match self
            .bus
            .publish(channel, payload)
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                self.metrics.bus_publishes.inc();
                Ok(())
            }
            Err(e) => {
                span.record("otel.status_code", "error");
                self.metrics
                    .bus_errors
                    .with_label_values(&["publish"])
                    .inc();
                tracing::warn!(channel, error = %e, "publish failed");
                Err(e)
            }
        }
    }

    /// Starts shutdown: tells every client to reconnect elsewhere and waits, up to the
    /// drain time, for them to leave.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let open = self.sessions.len();
        tracing::info!(sessions = open, drain_time = ?self.config.drain_time, "draining: asking clients to reconnect");
        self.sessions.close_all(CloseReason::ShuttingDown);
        for socket in self.plain.iter() {
            socket.outbox.close(CloseReason::ShuttingDown);
        }
        let deadline = tokio::time::Instant::now() + self.config.drain_time;
        while self.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.connection_count();
        if left > 0 {
            tracing::warn!(
                sessions = left,
                "drain time over; exiting with sessions still open"
            );
        } else {
            tracing::info!("drained");
        }
        for (channel, member) in self.cluster.shutdown().await {
            if let Ok(member) = RawValue::from_string(member) {
                self.announce_presence(&channel, "presence:leaving", &member, None)
                    .await;
            }
        }
        // The clients' `disconnected` and the channels' `vacated` events leave before the node.
        self.webhooks.flush(WEBHOOK_FLUSH).await;
    }
}

impl Receiver for Node {
    fn message(&self, channel: &str, payload: &[u8], write: Write) {
        self.on_bus_message(channel, payload, write);
    }

    fn reconnected(&self) {
        // Redis may have come back empty: the shared state is checked at once.
        self.cluster.nudge();
    }
}

/// A chat message from the bus waiting for its author's block list.
struct ChatMessage {
    channel: String,
    payload: Bytes,
    /// When the bus handed it over: its delivery latency includes the wait.
    received: Instant,
}

/// The user whose messages block lists filter: a client's (whisper, typing), or the author of
/// a back-end chat message.
fn author(envelope: &Envelope<'_>) -> Option<String> {
    match &envelope.author {
        Some(author) => Some(author.to_string()),
        None if blocks::FILTERED_EVENTS.contains(&&*envelope.event) => {
            envelope.data.and_then(blocks::author)
        }
        None => None,
    }
}

/// Delivers chat messages in arrival order, each once its author's block list is loaded.
async fn deliver_chat(node: Weak<Node>, mut queue: mpsc::UnboundedReceiver<ChatMessage>) {
    while let Some(message) = queue.recv().await {
        let Some(node) = node.upgrade() else { return };
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(&message.payload) else {
            continue;
        };
        let author = author(&envelope);
        if let Some(author) = &author {
            node.blocks.ensure(author).await;
        }
        node.deliver(
            &message.channel,
            &envelope,
            author.as_deref(),
            message.received,
            Write::Direct,
        );
        node.chat_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
