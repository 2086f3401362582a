//! The Redis bus: `PUBLISH` through a pooled command connection, and one dedicated pub/sub
//! connection that SUBSCRIBEs to exactly the channels this node's sockets need.
//!
//! When Redis goes away the node keeps serving its sockets: the subscriber reconnects with
//! backoff, re-subscribes every channel still wanted and logs each step. Messages published
//! while it was away are lost, as with any Redis pub/sub consumer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use futures_util::{FutureExt, StreamExt};
use prometheus::IntCounter;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::mpsc;

use super::{BusError, Receiver};
use crate::hub::Ready;
use crate::metrics::Metrics;
use crate::outbox::Write;

/// How long a command may wait for a pooled connection, or to connect.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds: a node is back within about 2 s of Redis.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the pub/sub connection is checked, so a silently dead or stalled one is replaced
/// and `/ready` turns 503 within this plus `COMMAND_TIMEOUT` of Redis no longer answering.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(3);
/// Most channels in one SUBSCRIBE (after a reconnect, or batched from waiting commands).
const BATCH: usize = 500;
/// Messages delivered back to back before the subscriber looks at its commands and liveness.
const BURST: usize = 64;

/// The bus's failure counters, resolved once.
#[derive(Clone)]
struct Failures {
    /// Every failed Redis call (`redis_errors_total{component="bus"}`).
    redis: IntCounter,
    /// The subscriber could not connect, or lost its connection (`bus_errors_total{op="connect"}`).
    connect: IntCounter,
    /// A SUBSCRIBE or UNSUBSCRIBE failed (`bus_errors_total{op="subscribe"}`).
    subscribe: IntCounter,
}

impl Failures {
    fn count(&self, op: &IntCounter) {
        self.redis.inc();
        op.inc();
    }
}

enum Command {
    Subscribe(Arc<str>, Arc<Ready>),
    Unsubscribe(Arc<str>),
}

/// The pool of Redis command connections for a `redis://` URL, shared by the bus's publishes,
/// the cluster state and the block lists; connects on first use.
pub fn pool(url: &str) -> Result<Pool, BusError> {
    let mut config = deadpool_redis::Config::from_url(url);
    config.pool = Some(PoolConfig {
        timeouts: Timeouts {
            wait: Some(COMMAND_TIMEOUT),
            create: Some(COMMAND_TIMEOUT),
            recycle: Some(COMMAND_TIMEOUT),
        },
        ..PoolConfig::default()
    });
    config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| BusError(format!("cannot create the Redis pool: {e}")))
}

/// A bus over Redis pub/sub.
pub struct RedisBus {
    pool: Pool,
    prefix: String,
    commands: mpsc::UnboundedSender<Command>,
    healthy: Arc<AtomicBool>,
    failures: Failures,
}

impl RedisBus {
    /// Starts the subscriber task (which connects in the background); publishes go through
    /// `pool`.
    pub fn start(
        client: redis::Client,
        pool: Pool,
        prefix: String,
        receiver: Arc<dyn Receiver>,
        metrics: &Metrics,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(false));
        let failures = Failures {
            redis: metrics.redis("bus").errors,
            connect: metrics.bus_errors.with_label_values(&["connect"]),
            subscribe: metrics.bus_errors.with_label_values(&["subscribe"]),
        };
        let subscriber = Subscriber {
            client,
            prefix: prefix.clone(),
            receiver,
            healthy: healthy.clone(),
            wanted: BTreeMap::new(),
            failures: failures.clone(),
        };
        tokio::spawn(subscriber.run(rx));
        Self {
            pool,
            prefix,
            commands,
            healthy,
            failures,
        }
    }

    /// Publishes one envelope.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        let result = self.try_publish(channel, payload).await;
        if result.is_err() {
            self.failures.redis.inc();
        }
        result
    }

    async fn try_publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| BusError(format!("no Redis connection: {e}")))?;
        let mut command = redis::cmd("PUBLISH");
        command
            .arg(format!("{}{channel}", self.prefix))
            .arg(&payload[..]);
        let publish = command.query_async::<i64>(&mut conn);
        match tokio::time::timeout(COMMAND_TIMEOUT, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError(format!("PUBLISH failed: {e}"))),
            Err(_) => Err(BusError("PUBLISH timed out".into())),
        }
    }

    /// Asks the subscriber to SUBSCRIBE; the handle resolves once Redis confirms.
    pub fn subscribe(&self, channel: Arc<str>) -> Arc<Ready> {
        let ready = Arc::new(Ready::default());
        // The receiver only goes away with the runtime; then nothing waits on `ready` either.
        let _ = self
            .commands
            .send(Command::Subscribe(channel, ready.clone()));
        ready
    }

    /// Asks the subscriber to UNSUBSCRIBE.
    pub fn unsubscribe(&self, channel: Arc<str>) {
        let _ = self.commands.send(Command::Unsubscribe(channel));
    }

    /// The command pool, shared with the cluster state.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Whether the pub/sub connection is up.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// The task owning the pub/sub connection and the set of channels this node needs.
struct Subscriber {
    client: redis::Client,
    prefix: String,
    receiver: Arc<dyn Receiver>,
    healthy: Arc<AtomicBool>,
    /// Channels wanted, with the handle of the latest subscribe waiting for confirmation. A
    /// B-tree, not a hash table: its memory follows the channels wanted now, where a hash
    /// table under churn doubles long after (see `Hub::keep_sparse`).
    wanted: BTreeMap<Arc<str>, Arc<Ready>>,
    failures: Failures,
}

impl Subscriber {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (mut sink, mut stream) = match self.connect().await {
                Ok(pair) => pair,
                Err(e) => {
                    self.healthy.store(false, Ordering::Release);
                    self.failures.count(&self.failures.connect);
                    tracing::warn!(attempt, retry_in = ?backoff, error = %e, "redis subscriber: cannot connect");
                    // Keep the wanted set current while waiting, so a reconnect subscribes the right channels.
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            command = commands.recv() => match command {
                                Some(command) => self.record(command),
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if let Err(e) = self.resubscribe(&mut sink).await {
                self.failures.count(&self.failures.subscribe);
                tracing::warn!(error = %e, "redis subscriber: re-subscribe failed; reconnecting");
                continue;
            }
            tracing::info!(
                attempt,
                channels = self.wanted.len(),
                "redis subscriber: connected and subscribed"
            );
            self.healthy.store(true, Ordering::Release);
            // Redis may have come back empty: the shared state is checked at once.
            self.receiver.reconnected();
            backoff = BACKOFF_MIN;
            attempt = 0;

            let mut liveness = tokio::time::interval(LIVENESS_INTERVAL);
            liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            liveness.reset();
            loop {
                tokio::select! {
                    _ = liveness.tick() => {
                        let ping = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            self.failures.count(&self.failures.connect);
                            tracing::warn!("redis subscriber: no answer to PING; reconnecting");
                            break;
                        }
                    }
                    command = commands.recv() => {
                        let Some(command) = command else { return };
                        // Take whatever else is waiting too: a connect storm's subscribes then
                        // share one SUBSCRIBE round trip instead of one each.
                        let mut batch = vec![command];
                        while batch.len() < BATCH {
                            match commands.try_recv() {
                                Ok(command) => batch.push(command),
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = self.apply(&mut sink, batch).await {
                            self.failures.count(&self.failures.subscribe);
                            tracing::warn!(error = %e, "redis subscriber: command failed; reconnecting");
                            break;
                        }
                    }
                    message = stream.next() => {
                        if !self.deliver_burst(&*self.receiver, message, &mut stream) {
                            self.failures.count(&self.failures.connect);
                            tracing::warn!("redis subscriber: connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
            self.healthy.store(false, Ordering::Release);
        }
    }

    /// Delivers `message` and every message already waiting behind it (at most `BURST`);
    /// false if the connection is gone. A message with others behind it is queued for the
    /// sockets' tasks rather than written at once: when the node is behind, each socket then
    /// gets several messages per write instead of one system call per message.
    fn deliver_burst(
        &self,
        receiver: &dyn Receiver,
        mut message: Option<redis::Msg>,
        stream: &mut PubSubStream,
    ) -> bool {
        for delivered in 1..=BURST {
            let Some(current) = message else {
                return false;
            };
            // Looked at without waiting; the last of a burst counts as behind, as it is.
            let last = delivered == BURST;
            let next = if last {
                None
            } else {
                stream.next().now_or_never()
            };
            let write = if last || next.is_some() {
                Write::Queued
            } else {
                Write::Direct
            };
            let name = current.get_channel_name();
            let channel = name.strip_prefix(self.prefix.as_str()).unwrap_or(name);
            receiver.message(channel, current.get_payload_bytes(), write);
            match next {
                Some(next) => message = next,
                None => break,
            }
        }
        true
    }

    async fn connect(&self) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        Ok(pubsub.split())
    }

    fn prefixed(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }

    /// Updates the wanted set without touching Redis (while disconnected).
    fn record(&mut self, command: Command) {
        match command {
            Command::Subscribe(channel, ready) => {
                self.wanted.insert(channel, ready);
            }
            Command::Unsubscribe(channel) => {
                self.wanted.remove(&channel);
            }
        }
    }

    /// Applies commands in order; each run of subscribes (or unsubscribes) is one command to Redis.
    async fn apply(
        &mut self,
        sink: &mut PubSubSink,
        batch: Vec<Command>,
    ) -> redis::RedisResult<()> {
        let mut batch = batch.into_iter().peekable();
        while let Some(command) = batch.next() {
            match command {
                Command::Subscribe(channel, ready) => {
                    let mut run = vec![(channel, ready)];
                    while let Some(Command::Subscribe(..)) = batch.peek() {
                        if let Some(Command::Subscribe(channel, ready)) = batch.next() {
                            run.push((channel, ready));
                        }
                    }
                    for (channel, ready) in &run {
                        self.wanted.insert(channel.clone(), ready.clone());
                    }
                    self.subscribe_run(sink, &run).await?;
                }
                Command::Unsubscribe(channel) => {
                    let mut run = vec![channel];
                    while let Some(Command::Unsubscribe(_)) = batch.peek() {
                        if let Some(Command::Unsubscribe(channel)) = batch.next() {
                            run.push(channel);
                        }
                    }
                    for channel in &run {
                        self.wanted.remove(channel);
                    }
                    let names: Vec<String> = run.iter().map(|c| self.prefixed(c)).collect();
                    sink.unsubscribe(names).await?;
                }
            }
        }
        Ok(())
    }

    /// SUBSCRIBEs channels in one command and marks them confirmed.
    async fn subscribe_run(
        &self,
        sink: &mut PubSubSink,
        run: &[(Arc<str>, Arc<Ready>)],
    ) -> redis::RedisResult<()> {
        let names: Vec<String> = run
            .iter()
            .map(|(channel, _)| self.prefixed(channel))
            .collect();
        sink.subscribe(names).await?;
        for (_, ready) in run {
            ready.set();
        }
        Ok(())
    }

    async fn resubscribe(&mut self, sink: &mut PubSubSink) -> redis::RedisResult<()> {
        let wanted: Vec<(Arc<str>, Arc<Ready>)> = self
            .wanted
            .iter()
            .map(|(channel, ready)| (channel.clone(), ready.clone()))
            .collect();
        for run in wanted.chunks(BATCH) {
            self.subscribe_run(sink, run).await?;
        }
        Ok(())
    }
}
