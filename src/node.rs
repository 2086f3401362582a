//! The node: hub, bus and sessions composed. The first local member of a channel makes the
//! node subscribe to it on the bus, the last one leaving unsubscribes; every message from the
//! bus is decoded once here and handed to the hub.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::HeaderMap;
use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use crate::backend::ForwardError;
use crate::blocks::{self, Blocks};
use crate::bus::memory::MemoryBus;
use crate::bus::redis::RedisBus;
use crate::bus::{Bus, BusError, Envelope, Receiver};
use crate::channel::{self, Refusal, WhisperRefusal};
use crate::cluster::{self as cluster_state, Census, Cluster, ClusterError};
use crate::config::{Clients, Config};
use crate::dispatch::{CONTROL_CHANNEL, Command, Dispatch, UserRoom};
use crate::engine::SessionTable;
use crate::hub::{Hub, JoinError, Member, SocketId};
use crate::limit::{
    AddressCounts, AddressLimits, KeyedLimits, LogBudget, SWEEP_INTERVAL, address_key, client_ip,
};
use crate::members::Memberships;
use crate::metrics::{Limit, Metrics, PoolSample, Sample};
use crate::outbox::CloseReason;
use crate::pacing::Pacing;
use crate::policy::Request;
use crate::webhooks::Webhooks;

/// How long a subscribe waits for the bus to confirm, when the bus is up.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Longest shutdown waits for the last webhooks.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(5);

/// One gateway node.
pub struct Node {
    /// Checked configuration.
    pub config: Config,
    /// Token verification.
    pub jwt: crate::auth::JwtVerifier,
    /// Who may join which channel.
    pub policy: Arc<crate::policy::Policy>,
    /// The back-end bridge, when configured.
    pub backend: Option<Arc<crate::backend::Backend>>,
    /// The application's database, when configured (connects on first use).
    pub database: Option<crate::database::Database>,
    /// Local channel memberships.
    pub hub: Arc<Hub>,
    /// The way to the other nodes.
    pub bus: Bus,
    /// What the nodes know together: connection slots, channel counts, presence.
    pub cluster: Cluster,
    /// Cached chat block lists.
    pub blocks: Arc<Blocks>,
    /// Room and group memberships the back-end manages through the API.
    pub memberships: Memberships,
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
    pub sessions: Arc<dyn SessionTable>,
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
    pub fn start(
        config: Config,
        clients: Clients,
        sessions: Arc<dyn SessionTable>,
    ) -> Result<Arc<Self>, StartError> {
        let Clients {
            redis: redis_client,
            jwt,
            backend,
            database,
            policy,
        } = clients;
        let metrics = Metrics::new()?;
        let webhooks = match &config.webhooks {
            Some(settings) => {
                Webhooks::start(settings.clone(), &config.server.node_id, metrics.clone())
                    .map_err(StartError::Webhooks)?
            }
            None => Webhooks::off(),
        };
        let notifications = database.clone().map(|database| {
            crate::notifications::store::Store::new(
                database,
                config.notifications.clone(),
                metrics.clone(),
            )
        });
        let hub = Arc::new(Hub::new(Pacing::new(
            config.limits.direct_write_share,
            config.limits.direct_write_budget,
        )));
        let redis = match (&redis_client, &config.redis.redis_url) {
            (Some(client), Some(url)) => Some((client.clone(), crate::bus::redis::pool(url)?)),
            _ => None,
        };
        let redis_pool = redis.as_ref().map(|(_, pool)| pool.clone());
        let blocks = Arc::new(Blocks::new(
            redis_pool.clone(),
            config.redis.redis_prefix.clone(),
        ));
        // The bus's reconnects wake the shared state's heartbeat: Redis may be back empty.
        let beat_now = Arc::new(Notify::new());
        let (commands, command_queue) = mpsc::unbounded_channel();
        let dispatch = Dispatch::start(
            hub.clone(),
            blocks.clone(),
            metrics.clone(),
            vec![
                channel::user_channel as UserRoom,
                crate::notifications::rooms::user_room,
            ],
            beat_now.clone(),
            commands,
        );
        let receiver = dispatch as Arc<dyn Receiver>;
        let bus = match &redis {
            Some((client, pool)) => Bus::Redis(RedisBus::start(
                client.clone(),
                pool.clone(),
                config.redis.redis_prefix.clone(),
                receiver,
                &metrics,
            )),
            None => Bus::Memory(MemoryBus::new(receiver)),
        };
        let (cluster_events, cluster_reports) = mpsc::unbounded_channel();
        let per_user = config.limits.max_connections_per_user;
        let mut cluster_error = None;
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            let cluster = match redis {
                Some((_, pool)) => match Cluster::redis(
                    pool,
                    cluster_state::RedisSettings {
                        prefix: config.redis.redis_prefix.clone(),
                        node_id: config.server.node_id.clone(),
                        ttl: config.limits.presence_ttl,
                        max_per_user: per_user,
                    },
                    cluster_state::Links {
                        census: weak.clone() as Weak<dyn Census>,
                        events: cluster_events,
                        beat_now,
                    },
                    metrics.redis("state"),
                ) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        cluster_error = Some(e);
                        Cluster::memory(per_user)
                    }
                },
                None => Cluster::memory(per_user),
            };
            Self {
                sessions,
                plain: DashMap::new(),
                notifications,
                webhooks,
                hub,
                bus,
                cluster,
                blocks,
                memberships: Memberships::new(
                    redis_pool.clone(),
                    config.redis.redis_prefix.clone(),
                ),
                connect_limits: AddressLimits::new(config.limits.connect_rate),
                unauthenticated: AddressCounts::new(config.limits.max_unauthenticated_per_address),
                api_limits: KeyedLimits::new(config.limits.api_rate),
                failed_auth: AddressLimits::new(crate::limit::FAILED_ATTEMPTS),
                connect_refusals: LogBudget::default(),
                metrics,
                config,
                jwt,
                policy,
                backend,
                database,
                draining: AtomicBool::new(false),
                this: weak.clone(),
            }
        });
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
        tokio::spawn(on_cluster_events(Arc::downgrade(&node), cluster_reports));
        tokio::spawn(on_commands(Arc::downgrade(&node), command_queue));
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

    /// The Prometheus text of every metric, with what is read rather than maintained
    /// sampled from the parts now.
    pub fn scrape(&self) -> String {
        let queued = [self.sessions.queued()]
            .into_iter()
            .chain(self.plain.iter().map(|socket| socket.outbox.queued()))
            .sum();
        let mut sample = Sample {
            queued,
            ..Sample::default()
        };
        if let Bus::Redis(bus) = &self.bus {
            sample.bus_healthy = Some(bus.is_healthy());
            let status = bus.pool().status();
            sample.redis_pool = Some(PoolSample {
                in_use: status.size.saturating_sub(status.available),
                idle: status.available,
                max: status.max_size,
            });
        }
        if let Some(database) = &self.database {
            let pool = database.pool().status();
            sample.database_pool = Some(PoolSample {
                in_use: pool.in_use,
                idle: pool.idle,
                max: database.max_connections(),
            });
        }
        self.metrics.scrape(&sample)
    }

    /// Ready for traffic: the bus is reachable and the node is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.bus.is_healthy() && !self.is_draining()
    }

    /// How queued frames reach this node's websockets.
    pub fn writes(&self) -> crate::transport::Writes {
        crate::transport::Writes {
            delay: self.config.limits.write_delay,
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
        address_key(client_ip(
            peer,
            headers,
            &self.config.limits.trusted_proxies,
        ))
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
        } else if self.connection_count() >= self.config.limits.max_connections {
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

    /// Closes every socket of `user` on every node.
    pub async fn disconnect_user(&self, user: &str) -> Result<(), BusError> {
        let data = serde_json::value::to_raw_value(&serde_json::json!({"userId": user}))
            .map_err(|e| BusError(e.to_string()))?;
        self.publish(CONTROL_CHANNEL, "disconnect_user", &data, None)
            .await
    }

    /// Adds (`subscribe`) or removes every socket of `user` to or from `channel` on every
    /// node, for the back-end: the channel's policy is not asked.
    pub async fn subscribe_user(
        &self,
        user: &str,
        channel: &str,
        subscribe: bool,
    ) -> Result<(), BusError> {
        let data = serde_json::value::to_raw_value(&serde_json::json!({
            "userId": user,
            "channel": channel,
        }))
        .map_err(|e| BusError(e.to_string()))?;
        let command = if subscribe {
            "subscribe_user"
        } else {
            "unsubscribe_user"
        };
        self.publish(CONTROL_CHANNEL, command, &data, None).await
    }

    /// Puts a socket in every room and group of its user's index, each checked by the policy
    /// as a subscribe is; an entry the policy refuses (the back-end removed the member with a
    /// plain `SREM`) is dropped from the index.
    pub async fn join_memberships(&self, socket: &Arc<Member>) {
        if !self.memberships.enabled() {
            return;
        }
        let user = &socket.principal.user_id;
        let channels = match self.memberships.of_user(user).await {
            Ok(channels) => channels,
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "could not read the user's rooms and groups");
                return;
            }
        };
        for channel in channels {
            let request = Request {
                principal: &socket.principal,
                channel: &channel,
                socket_id: &socket.id,
                auth: None,
            };
            let joined = match self.policy.authorize(&request).await {
                Ok(grant) => self.join_granted(socket, &channel, grant.member).await,
                Err(Refusal::Forbidden) => {
                    // Best effort: a failure leaves the entry to be refused again next time.
                    let _ = self.memberships.forget(user, &channel).await;
                    continue;
                }
                Err(refusal) => Err(refusal),
            };
            if let Err(refusal) = joined {
                tracing::warn!(user = %user, channel, %refusal, "could not join a member's room");
            }
        }
    }

    /// Carries out a command from the control channel on this node's sockets of the user
    /// (those on `/` and the JSON endpoint: every one of them is in its user channel).
    async fn on_command(&self, command: Command) {
        let (Command::Subscribe { user, channel } | Command::Unsubscribe { user, channel }) =
            &command;
        let sockets = self.hub.members(&channel::user_channel(user));
        for socket in &sockets {
            if matches!(command, Command::Unsubscribe { .. }) {
                self.leave(socket, channel);
                continue;
            }
            if let Err(refusal) = self.join_granted(socket, channel, None).await {
                tracing::warn!(user, channel, %refusal, "the back-end's subscription not made");
            }
        }
        if !sockets.is_empty() {
            tracing::debug!(
                ?command,
                sockets = sockets.len(),
                "back-end subscription applied"
            );
        }
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
        let (Some(node), Some(backend)) = (self.this.upgrade(), self.backend.clone()) else {
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
                    &node.config.server.node_id,
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
            let joined = self.hub.join(
                member,
                channel,
                self.config.limits.max_subscriptions,
                |name| {
                    self.metrics.channels.inc();
                    if !self.cluster.is_shared() {
                        // This node is the whole cluster; with Redis, its writer decides.
                        self.webhooks.channel(name, true);
                    }
                    self.bus.subscribe(name.clone())
                },
            )?;
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

    /// Verifies a client's token (`None`: it sent none); a refusal is counted by its reason.
    pub async fn verify_token(
        &self,
        token: Option<String>,
    ) -> Result<crate::auth::Principal, crate::auth::TokenError> {
        self.jwt.verify_found(token).await.inspect_err(|e| {
            self.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
        })
    }

    /// A client's token refresh: verifies `token` and, when it is the same user's, takes its
    /// expiry for each of `sockets` (a Socket.IO session's `/` and `/notifications` sockets).
    /// Returns the new expiry (seconds since the Unix epoch; `None`: never), or why it was refused.
    pub async fn refresh_token(
        &self,
        sockets: &[&Member],
        token: Option<String>,
    ) -> Result<Option<u64>, String> {
        let principal = self.verify_token(token).await.map_err(|e| e.to_string())?;
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
        if !socket
            .subscribe_limit
            .take(self.config.limits.subscribe_rate)
        {
            self.metrics.rate_limited(Limit::Subscribe);
            return Err(Refusal::RateLimited);
        }
        channel::validate(channel, self.config.limits.max_channel_length)
            .map_err(Refusal::InvalidName)?;
        let request = Request {
            principal: &socket.principal,
            channel,
            socket_id: &socket.id,
            auth,
        };
        let grant = self.policy.authorize(&request).await?;
        self.join_granted(socket, channel, grant.member).await
    }

    /// Joins a socket the policy let in (or the back-end put in): hub, block list, presence
    /// (as `member`, else as the token describes the user). Returns the presence members.
    async fn join_granted(
        &self,
        socket: &Arc<Member>,
        channel: &str,
        member: Option<serde_json::Value>,
    ) -> Result<Option<Vec<Box<RawValue>>>, Refusal> {
        let (name, _) = self.join(socket, channel).await?;
        if channel::allows_whispers(&name) {
            // Users reach each other here (chat, whispers, typing): the member's block list
            // must be known before their messages arrive.
            self.blocks.ensure(&socket.principal.user_id).await;
        }
        if !channel::has_presence(&name) {
            return Ok(None);
        }
        let member = member.unwrap_or_else(|| self.policy.member_from_token(&socket.principal));
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
        tracing::info!(sessions = open, drain_time = ?self.config.limits.drain_time, "draining: asking clients to reconnect");
        self.sessions.close_all(CloseReason::ShuttingDown);
        for socket in self.plain.iter() {
            socket.outbox.close(CloseReason::ShuttingDown);
        }
        let deadline = tokio::time::Instant::now() + self.config.limits.drain_time;
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
        let departure = self.cluster.shutdown().await;
        for channel in &departure.vacated {
            self.webhooks.channel(channel, false);
        }
        for (channel, member) in departure.left {
            if let Ok(member) = RawValue::from_string(member) {
                self.announce_presence(&channel, "presence:leaving", &member, None)
                    .await;
            }
        }
        // The clients' `disconnected` and the channels' `vacated` events leave before the node.
        self.webhooks.flush(WEBHOOK_FLUSH).await;
    }
}

impl Census for Node {
    fn connections(&self) -> usize {
        self.connection_count()
    }

    fn channel_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.hub.channel_counts()
    }
}

/// Carries out node-to-node commands the dispatch hands up, one at a time, in order.
async fn on_commands(node: Weak<Node>, mut commands: mpsc::UnboundedReceiver<Command>) {
    while let Some(command) = commands.recv().await {
        let Some(node) = node.upgrade() else { return };
        node.on_command(command).await;
    }
}

/// Turns what the shared state reports into webhooks, metrics and presence broadcasts, in
/// the order Redis confirmed them (a member's `leaving` never overtakes their `joining`).
async fn on_cluster_events(
    node: Weak<Node>,
    mut events: mpsc::UnboundedReceiver<cluster_state::Event>,
) {
    use cluster_state::Event;
    while let Some(event) = events.recv().await {
        let Some(node) = node.upgrade() else { return };
        match event {
            Event::Occupancy { channel, occupied } => node.webhooks.channel(&channel, occupied),
            Event::Presence {
                channel,
                joined,
                member,
            } => {
                let event = if joined {
                    "presence:joining"
                } else {
                    "presence:leaving"
                };
                node.announce_presence(&channel, event, &member, None).await;
            }
            Event::NodeLost {
                node: lost,
                user,
                sockets,
            } => node.webhooks.node_lost(&lost, &user, sockets),
            Event::LiveNodes(live) => node.metrics.cluster_nodes.set(live),
        }
    }
}
