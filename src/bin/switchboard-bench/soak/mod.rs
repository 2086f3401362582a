//! The `soak` scenario: a node under a long, realistic load, sampled every minute.
//!
//! 19,000 clients by default, mixed Socket.IO over websocket, Socket.IO over long-polling and
//! plain JSON; each subscribes to a main channel `bench.{i % channels}`, a share also to a
//! presence channel. Once all are connected, for `--duration`: messages are published to the
//! main channels through Redis at the rate that gives `--deliveries` per second; each second
//! `--churn` of the connected clients close and reconnect and `--resubscribe` of them move to a
//! new extra channel. Every `--sample-interval` the node's RSS and open fds (/proc), its tasks,
//! outgoing queue and connections (/metrics), and the window's deliveries, loss and latency are
//! recorded. The verdict (`verdict.rs`) says whether the node stayed flat and lost nothing.

mod client;
mod node;
mod plan;
mod track;
mod verdict;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use self::client::{Counters, Identity, RECONNECT, RESUBSCRIBE, STOP, Shared, Slot};
use self::node::{NodeMetrics, Resources};
pub use self::plan::Mix;
use self::plan::{Counts, Plan};
use self::verdict::{Evidence, Point, Verdict};
use crate::cli::{SoakArgs, seconds};
use crate::client::Failures;
use crate::publish::{Outgoing, Publisher, RedisPublisher};
use crate::setup::{CommonParams, Setup};
use crate::stats::{self, BenchStats, Percentiles};

/// Interval of the publishing timer; each tick publishes what is due.
const TICK: Duration = Duration::from_millis(5);
/// Most messages sent in one tick when the publisher is behind.
const MAX_BATCH: u64 = 10_000;
/// Source addresses used by default against 127.0.0.1: churn leaves closed connections in
/// TIME_WAIT, so the port range of one address would not hold them beside the live ones.
const DEFAULT_SOURCES: u32 = 4;
/// When, within each second of the load, clients are told to reconnect or resubscribe.
const STEER_PHASE: Duration = Duration::from_millis(500);
/// How often the connect ramp prints progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Client sockets a soak opens at most (polling clients hold two).
pub fn sockets(args: &SoakArgs) -> usize {
    Counts::split(args.common.connections, args.mix).sockets()
}

/// The parameters echoed in the summary.
#[derive(Debug, Serialize)]
struct Params {
    #[serde(flatten)]
    common: CommonParams,
    mix: [f64; 3],
    duration_s: f64,
    warmup_s: f64,
    sample_interval_s: f64,
    churn: f64,
    resubscribe: f64,
    presence: f64,
    presence_channels: u32,
    deliveries: f64,
    size: usize,
    grace_s: f64,
    tolerance: f64,
    /// Messages per second over all channels, from `deliveries`.
    publish_rate: f64,
}

/// The clients of the run.
#[derive(Debug, Serialize)]
struct Clients {
    #[serde(flatten)]
    counts: Counts,
    presence_members: usize,
}

/// The connect ramp before the load.
#[derive(Debug, Serialize)]
struct Ramp {
    connected: i64,
    failures: Failures,
    elapsed_s: f64,
}

/// One sample: the node's state at `t_s`, and what the clients saw since the previous one.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    t_s: f64,
    rss_bytes: u64,
    /// Of `rss_bytes`: anonymous memory and mapped files.
    rss_anon_bytes: u64,
    rss_file_bytes: u64,
    fds: u64,
    tasks: Option<u64>,
    queue_bytes: Option<u64>,
    queue_frames: Option<u64>,
    node_connections: Option<u64>,
    /// The node's CPU time over the window, in cores (1.0 = one core busy).
    node_cpu: Option<f64>,
    /// Softirq time on the node's cores over the window, in cores, when the bench runs on
    /// other cores: the kernel's network work Linux charges to no process.
    node_softirq: Option<f64>,
    /// Clients with a session, as the bench sees them.
    clients_connected: i64,
    delivered: u64,
    /// `None` for the first sample, which closes no window.
    deliveries_per_sec: Option<f64>,
    lost: i64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    reconnects: u64,
    handshake_failures: u64,
    subscribes: u64,
    unsubscribes: u64,
    presence_events: u64,
    dropped: u64,
}

/// Totals over the whole load phase.
#[derive(Debug, Serialize)]
struct Totals {
    published: u64,
    publish_errors: u64,
    publish_rate: f64,
    delivered: u64,
    deliveries_per_sec: f64,
    /// Deliveries lost to connected clients, `lost_at_join` and `lost_at_end` included.
    lost: i64,
    lost_at_join: u64,
    lost_at_end: u64,
    duplicated: u64,
    reordered: u64,
    misrouted: u64,
    handshakes: u64,
    reconnects: u64,
    handshake_failures: Failures,
    subscribes: u64,
    subscribed: u64,
    unsubscribes: u64,
    unsubscribed: u64,
    refused: u64,
    presence_events: u64,
    dropped: u64,
    latency_ms: Percentiles,
    /// Growth of `switchboard_errors_total` by kind, from before the first client to the end.
    node_errors: BTreeMap<String, u64>,
    slow_consumer_disconnects: u64,
}

/// The summary line of `soak`.
#[derive(Debug, Serialize)]
pub struct Summary {
    scenario: &'static str,
    label: String,
    params: Params,
    clients: Clients,
    ramp: Ramp,
    samples: Vec<Sample>,
    totals: Totals,
    verdict: Verdict,
    bench: BenchStats,
}

/// Counter values at one moment, to take differences of.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    delivered: u64,
    lost: i64,
    reconnects: u64,
    failures: u64,
    subscribes: u64,
    unsubscribes: u64,
    presence_events: u64,
    dropped: u64,
}

impl Snapshot {
    fn of(c: &Counters) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            delivered: get(&c.delivered),
            lost: c.lost.load(Ordering::Relaxed),
            reconnects: get(&c.reconnects),
            failures: c.failures.snapshot().total(),
            subscribes: get(&c.subscribes),
            unsubscribes: get(&c.unsubscribes),
            presence_events: get(&c.presence_events),
            dropped: get(&c.dropped),
        }
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    messages: u64,
    errors: u64,
    elapsed: Duration,
}

/// A small xorshift generator: picking clients at random needs no more.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Checks a share given on the command line.
fn share(flag: &str, value: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        bail!("--{flag} must be between 0 and 1");
    }
    Ok(value)
}

/// Runs the scenario.
pub async fn run(args: SoakArgs) -> Result<Summary> {
    let duration = seconds("duration", args.duration)?;
    let warmup = seconds("warmup", args.warmup)?;
    let interval = seconds("sample-interval", args.sample_interval)?;
    let grace = seconds("grace", args.grace)?;
    if interval.is_zero() {
        bail!("--sample-interval must be positive");
    }
    let churn = share("churn", args.churn)?;
    let resubscribe = share("resubscribe", args.resubscribe)?;
    let presence = share("presence", args.presence)?;
    if !(args.deliveries.is_finite() && args.deliveries > 0.0) {
        bail!("--deliveries must be a positive number per second");
    }
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        bail!("--tolerance must be a non-negative fraction");
    }
    if args.common.server_pid.is_empty() {
        bail!("--server-pid is needed: the soak samples the node's memory and open files");
    }
    let mut common = args.common.clone();
    let local = common
        .url
        .iter()
        .all(|u| u.contains("://127.0.0.1:") || u.contains("://127.0.0.1/"));
    if common.source_addresses.is_none() && local {
        common.source_addresses = Some(DEFAULT_SOURCES);
    }
    let setup = Setup::prepare(&common, args.size).await?;
    let total = common.connections;
    let plan = Plan::new(total, args.mix, presence);
    let subscribers = plan::subscribers_per_channel(total, common.channels);
    let rate = plan::publish_rate(args.deliveries, &subscribers);
    let pids = common.server_pid.clone();
    let metrics_target = setup.targets[0].clone();
    let publisher = Publisher::Redis(
        RedisPublisher::connect(&args.redis_url, args.redis_prefix.clone()).await?,
    );
    let metrics_before = node::scrape(&metrics_target)
        .await
        .context("the soak reads the node's /metrics on the first --url (no admin listener)")?;

    let shared = Arc::new(Shared {
        context: setup.context.clone(),
        epoch: Instant::now(),
        next_seq: (0..common.channels).map(|_| AtomicU64::new(0)).collect(),
        counters: Counters::default(),
        latency: Mutex::new(stats::histogram()),
        slots: (0..total).map(|_| Slot::default()).collect(),
        handshakes: Semaphore::new(common.concurrency.max(1)),
        next_extra: AtomicU64::new(0),
        first_problems: Mutex::new(Vec::new()),
    });
    let counts = plan.counts();
    eprintln!(
        "switchboard-bench: soak: connecting {total} clients ({} Socket.IO websocket, {} JSON, {} Socket.IO polling; {} in presence channels)",
        counts.socketio_websocket,
        counts.json,
        counts.socketio_polling,
        plan.presence_members()
    );
    let mut clients = JoinSet::new();
    for index in 0..total {
        let who = Identity {
            index,
            kind: plan.kind(index),
            channel: (index % common.channels as usize) as u32,
            presence: plan
                .presence_channel(index, args.presence_channels)
                .map(|k| format!("presence-soak.{k}")),
        };
        clients.spawn(client::run(shared.clone(), who));
    }
    let ramp = ramp_up(&shared, total).await;

    let bench_before = stats::sample_self()?;
    let load_started = tokio::time::Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(publish(
        shared.clone(),
        publisher,
        rate,
        common.channels,
        args.size,
        stop_rx.clone(),
    ));
    let steering = tokio::spawn(steer(shared.clone(), churn, resubscribe, stop_rx));

    let mut samples = Vec::new();
    let mut latency_total = stats::histogram();
    let mut previous = Snapshot::of(&shared.counters);
    let mut previous_at = load_started;
    let mut last_metrics = metrics_before.clone();
    let mut previous_cpu: Option<stats::Sample> = None;
    let steps = (duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u32;
    for step in 0..=steps {
        let at = load_started + (interval * step).min(duration);
        tokio::time::sleep_until(at).await;
        let resources = tokio::task::spawn_blocking({
            let pids = pids.clone();
            move || node::resources(&pids)
        })
        .await
        .context("the /proc reader panicked")??;
        let metrics = match node::scrape(&metrics_target).await {
            Ok(metrics) => {
                last_metrics = metrics.clone();
                metrics
            }
            Err(e) => {
                eprintln!("switchboard-bench: soak: {e:#}");
                NodeMetrics::default()
            }
        };
        let window = {
            let mut latency = shared
                .latency
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *latency, stats::histogram())
        };
        latency_total
            .add(&window)
            .context("merge latency histograms")?;
        let now = Snapshot::of(&shared.counters);
        let elapsed = at.duration_since(previous_at);
        let sample = sample(
            at.duration_since(load_started),
            elapsed,
            resources,
            previous_cpu.as_ref(),
            &metrics,
            &window,
            &previous,
            &now,
            shared.counters.connected.load(Ordering::Relaxed),
        );
        previous_cpu = Some(resources.cpu);
        eprintln!("switchboard-bench: soak: {}", progress(&sample));
        samples.push(sample);
        previous = now;
        previous_at = at;
    }

    let _ = stop_tx.send(true);
    let published = publishing.await.context("the publisher panicked")?;
    steering.await.context("the churn task panicked")?;
    eprintln!(
        "switchboard-bench: soak: published {} messages; waiting {:.1} s for the last deliveries",
        published.messages,
        grace.as_secs_f64()
    );
    tokio::time::sleep(grace).await;
    for slot in &shared.slots {
        slot.command(STOP);
    }
    while let Some(joined) = clients.join_next().await {
        joined.context("a client task panicked")?;
    }
    let bench = BenchStats::since(&bench_before, common.threads)?;
    let late = {
        let latency = shared
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latency.clone()
    };
    latency_total
        .add(&late)
        .context("merge latency histograms")?;

    let c = &shared.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let node_errors = node::growth(&metrics_before.errors, &last_metrics.errors);
    let slow_consumer_disconnects = last_metrics
        .slow_consumer_disconnects
        .unwrap_or(0)
        .saturating_sub(metrics_before.slow_consumer_disconnects.unwrap_or(0));
    let failures = c.failures.snapshot();
    let totals = Totals {
        published: published.messages,
        publish_errors: published.errors,
        publish_rate: stats::per_sec(published.messages, published.elapsed),
        delivered: get(&c.delivered),
        deliveries_per_sec: stats::per_sec(get(&c.delivered), duration),
        lost: c.lost.load(Ordering::Relaxed),
        lost_at_join: get(&c.lost_at_join),
        lost_at_end: get(&c.lost_at_end),
        duplicated: get(&c.duplicated),
        reordered: get(&c.reordered),
        misrouted: get(&c.misrouted),
        handshakes: get(&c.handshakes),
        reconnects: get(&c.reconnects),
        handshake_failures: failures,
        subscribes: get(&c.subscribes),
        subscribed: get(&c.subscribed),
        unsubscribes: get(&c.unsubscribes),
        unsubscribed: get(&c.unsubscribed),
        refused: get(&c.refused),
        presence_events: get(&c.presence_events),
        dropped: get(&c.dropped),
        latency_ms: Percentiles::from(&latency_total),
        node_errors: node_errors.clone(),
        slow_consumer_disconnects,
    };
    let verdict = verdict::judge(&Evidence {
        points: samples
            .iter()
            .map(|s| Point {
                t_s: s.t_s,
                rss_bytes: s.rss_bytes,
                fds: s.fds,
            })
            .collect(),
        warmup_s: warmup.as_secs_f64(),
        tolerance: args.tolerance,
        lost: totals.lost,
        handshake_failures: client::failures_by_name(&failures),
        duplicated: totals.duplicated,
        misrouted: totals.misrouted,
        refused_requests: totals.refused,
        dropped: totals.dropped,
        publish_errors: totals.publish_errors,
        node_errors,
        slow_consumer_disconnects,
    });
    if verdict.pass {
        eprintln!("switchboard-bench: soak: PASS");
    } else {
        for failure in &verdict.failures {
            eprintln!("switchboard-bench: soak: FAIL: {failure}");
        }
    }
    Ok(Summary {
        scenario: "soak",
        label: common.label.clone(),
        params: Params {
            common: setup.params,
            mix: [args.mix.websocket, args.mix.json, args.mix.polling],
            duration_s: duration.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            sample_interval_s: interval.as_secs_f64(),
            churn,
            resubscribe,
            presence,
            presence_channels: args.presence_channels,
            deliveries: args.deliveries,
            size: args.size,
            grace_s: grace.as_secs_f64(),
            tolerance: args.tolerance,
            publish_rate: rate,
        },
        clients: Clients {
            counts,
            presence_members: plan.presence_members(),
        },
        ramp,
        samples,
        totals,
        verdict,
        bench,
    })
}

/// Waits until every client has made its first handshake attempt, printing progress.
async fn ramp_up(shared: &Shared, total: usize) -> Ramp {
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let c = &shared.counters;
    loop {
        progress.tick().await;
        let done = c.first_attempts.load(Ordering::Relaxed);
        let connected = c.connected.load(Ordering::Relaxed);
        eprintln!(
            "switchboard-bench: soak: {connected} connected, {} failed, of {total} ({:.0} s)",
            c.failures.snapshot().total(),
            started.elapsed().as_secs_f64()
        );
        if done >= total as u64 {
            return Ramp {
                connected,
                failures: c.failures.snapshot(),
                elapsed_s: started.elapsed().as_secs_f64(),
            };
        }
    }
}

/// Builds one message's data: `{"ch":…,"seq":…,"ts":…,"pad":"xx…"}`, about `size` bytes.
fn message_data(channel: u32, seq: u64, ts: u64, size: usize, pad: &str) -> String {
    let mut data = String::with_capacity(size.max(64));
    let _ = write!(data, r#"{{"ch":{channel},"seq":{seq},"ts":{ts},"pad":""#);
    let room = size.saturating_sub(data.len() + 2).min(pad.len());
    data.push_str(&pad[..room]);
    data.push_str("\"}");
    data
}

/// Publishes to the main channels in turn at `rate` messages per second until stopped.
async fn publish(
    shared: Arc<Shared>,
    mut publisher: Publisher,
    rate: f64,
    channels: u32,
    size: usize,
    mut stop: watch::Receiver<bool>,
) -> Published {
    let pad = "x".repeat(size);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut out = Published::default();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut accepted = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(out.messages + MAX_BATCH);
        if due <= out.messages {
            continue;
        }
        batch.clear();
        for m in out.messages..due {
            let channel = (m % u64::from(channels)) as u32;
            // Taken before the PUBLISH: a session whose handshake ended before this read
            // the channel's next seq as at most this one.
            let seq = shared.next_seq[channel as usize].fetch_add(1, Ordering::AcqRel);
            let ts = shared.epoch.elapsed().as_micros() as u64;
            batch.push(Outgoing {
                channel,
                data: message_data(channel, seq, ts, size, &pad),
            });
        }
        match publisher.publish(&batch, &mut accepted).await {
            Ok(()) => out.errors += accepted.iter().filter(|ok| !**ok).count() as u64,
            Err(e) => {
                if out.errors == 0 {
                    eprintln!("switchboard-bench: soak: publishing failed: {e:#}");
                }
                out.errors += batch.len() as u64;
            }
        }
        out.messages = due;
    }
    out.elapsed = started.elapsed();
    out
}

/// Each second, tells `churn` of the connected clients to reconnect and `resubscribe` of them
/// to move to a new extra channel, picked at random, until stopped.
async fn steer(shared: Arc<Shared>, churn: f64, resubscribe: f64, mut stop: watch::Receiver<bool>) {
    // Half a second out of phase with the samples, which then see the clients between two
    // rounds of reconnects rather than in the middle of one.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + STEER_PHASE,
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut rng = Rng::seeded();
    // Fractions carried over, so small runs churn at the asked rate on average.
    let mut owed = [0.0f64; 2];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let connected = shared.counters.connected.load(Ordering::Relaxed).max(0) as f64;
        for (i, (share, command)) in [(churn, RECONNECT), (resubscribe, RESUBSCRIBE)]
            .into_iter()
            .enumerate()
        {
            owed[i] += share * connected;
            let picks = owed[i].floor() as usize;
            owed[i] -= picks as f64;
            pick(&shared.slots, picks, command, &mut rng);
        }
    }
}

/// Gives `command` to `count` connected clients picked at random (fewer when few are
/// connected).
fn pick(slots: &[Slot], count: usize, command: u8, rng: &mut Rng) {
    let mut given = 0;
    // Bounded: a connected client is found in a few draws unless most are not connected.
    for _ in 0..count.saturating_mul(4) {
        if given == count {
            return;
        }
        let slot = &slots[rng.below(slots.len())];
        if slot.is_connected() {
            slot.command(command);
            given += 1;
        }
    }
}

/// One sample from the node's readings and the counters' movement over `elapsed`.
#[allow(clippy::too_many_arguments)]
fn sample(
    t: Duration,
    elapsed: Duration,
    resources: Resources,
    cpu_before: Option<&stats::Sample>,
    metrics: &NodeMetrics,
    window: &Histogram<u64>,
    before: &Snapshot,
    now: &Snapshot,
    connected: i64,
) -> Sample {
    let ms = |us: u64| us as f64 / 1000.0;
    let seen = !window.is_empty();
    let delivered = now.delivered - before.delivered;
    let secs = elapsed.as_secs_f64();
    let per_core = |seconds: f64| (secs > 0.0).then(|| seconds / secs);
    Sample {
        t_s: t.as_secs_f64(),
        rss_bytes: resources.rss_bytes,
        rss_anon_bytes: resources.rss_anon_bytes,
        rss_file_bytes: resources.rss_file_bytes,
        fds: resources.fds,
        tasks: metrics.tasks,
        queue_bytes: metrics.queue_bytes,
        queue_frames: metrics.queue_frames,
        node_connections: metrics.connections,
        node_cpu: cpu_before.and_then(|b| per_core(resources.cpu.cpu_seconds_since(b))),
        node_softirq: cpu_before
            .and_then(|b| resources.cpu.softirq_seconds_since(b))
            .and_then(per_core),
        clients_connected: connected,
        delivered,
        deliveries_per_sec: (!elapsed.is_zero()).then(|| stats::per_sec(delivered, elapsed)),
        lost: now.lost - before.lost,
        latency_p50_ms: seen.then(|| ms(window.value_at_quantile(0.5))),
        latency_p99_ms: seen.then(|| ms(window.value_at_quantile(0.99))),
        latency_max_ms: seen.then(|| ms(window.max())),
        reconnects: now.reconnects - before.reconnects,
        handshake_failures: now.failures - before.failures,
        subscribes: now.subscribes - before.subscribes,
        unsubscribes: now.unsubscribes - before.unsubscribes,
        presence_events: now.presence_events - before.presence_events,
        dropped: now.dropped - before.dropped,
    }
}

/// The progress line of a sample.
fn progress(s: &Sample) -> String {
    let opt = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ms"));
    let cores = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    format!(
        "{:.1} min: rss {:.1} MiB (anon {:.1}, file {:.1}), fds {}, tasks {}, queue {} B, cpu {} (softirq {}), connections {} (bench {}), {:.0} deliveries/s, p50 {}, p99 {}, lost {}, reconnects {}, failures {}, dropped {}",
        s.t_s / 60.0,
        mib(s.rss_bytes),
        mib(s.rss_anon_bytes),
        mib(s.rss_file_bytes),
        s.fds,
        opt(s.tasks),
        opt(s.queue_bytes),
        cores(s.node_cpu),
        cores(s.node_softirq),
        opt(s.node_connections),
        s.clients_connected,
        s.deliveries_per_sec.unwrap_or(0.0),
        ms(s.latency_p50_ms),
        ms(s.latency_p99_ms),
        s.lost,
        s.reconnects,
        s.handshake_failures,
        s.dropped
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_data_carries_channel_seq_and_time() {
        let data = message_data(3, 7, 42, 100, &"x".repeat(100));
        assert_eq!(data.len(), 100);
        assert!(data.starts_with(r#"{"ch":3,"seq":7,"ts":42,"pad":"xx"#));
        assert_eq!(
            message_data(0, 1, 2, 0, ""),
            r#"{"ch":0,"seq":1,"ts":2,"pad":""}"#
        );
    }
}
