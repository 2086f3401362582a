//! The `fanout` scenario: N subscribed clients, messages published at a fixed rate to K
//! channels, and per client which ones arrived, how often and how late.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;

use crate::cli::{FanoutArgs, Publish, seconds};
use crate::client::End;
use crate::fleet::{self, ConnectPhase};
use crate::publish::{EVENT, HttpPublisher, Outgoing, Publisher, RedisPublisher};
use crate::setup::{CommonParams, Setup};
use crate::stats::{self, BenchStats, Percentiles, ServerStats};
use crate::wire::Event;

/// Interval of the publishing timer; each tick publishes what is due.
const TICK: Duration = Duration::from_millis(1);
/// Most messages built and sent in one tick when the publisher is behind.
const MAX_BATCH: u64 = 10_000;
/// Latencies a client keeps before adding them to the shared histogram under its lock.
const LATENCY_BUFFER: usize = 32;
/// How often the drain checks whether every delivery arrived.
const DRAIN_POLL: Duration = Duration::from_millis(5);
/// How often progress is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The parameters echoed in the summary.
#[derive(Debug, Serialize)]
struct Params {
    #[serde(flatten)]
    common: CommonParams,
    rate: f64,
    duration_s: f64,
    size: usize,
    publish: Publish,
    grace_s: f64,
}

/// The summary line of `fanout`.
#[derive(Debug, Serialize)]
pub struct Summary {
    scenario: &'static str,
    label: String,
    params: Params,
    connect: ConnectPhase,
    /// Messages the publisher sent.
    published: u64,
    /// Messages the server refused or that were lost with a broken publishing connection.
    publish_errors: u64,
    /// Messages sent per second of publishing.
    publish_rate: f64,
    /// Deliveries due: accepted messages × clients subscribed to their channel.
    expected: u64,
    /// Unique deliveries received.
    delivered: u64,
    /// `expected − delivered`.
    lost: u64,
    /// Deliveries received more than once.
    duplicated: u64,
    /// Deliveries for a channel the client did not subscribe to, or unknown seqs.
    misrouted: u64,
    /// Clients closed by the server or the network before the end.
    dropped: u64,
    /// Unique deliveries per second of `duration`.
    delivered_per_sec: f64,
    /// Seconds from the last publish until every delivery arrived (or the grace ran out).
    drain_s: f64,
    /// Publish-to-receive latency (same monotonic clock on both ends).
    latency_ms: Percentiles,
    bench: BenchStats,
    server: Option<ServerStats>,
}

/// What all clients of a fanout run share.
struct Deliveries {
    /// The bench's clock: `ts` in messages is microseconds since this instant.
    epoch: Instant,
    channels: u64,
    /// Seqs published are below this; anything else is counted as misrouted.
    seq_limit: u64,
    /// Unique deliveries so far, to end the drain as soon as all arrived.
    unique: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Deliveries {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// The part of a broadcast's data a client reads (`pad` is skipped).
#[derive(Deserialize)]
struct Stamp {
    seq: u64,
    ts: u64,
}

/// One client's record of what arrived.
struct Receiver {
    shared: Arc<Deliveries>,
    channel: u64,
    /// Bit `seq / channels` is set once `seq` arrived (only seqs of this client's channel).
    seen: Vec<u64>,
    delivered: u64,
    duplicated: u64,
    misrouted: u64,
    latencies: [u32; LATENCY_BUFFER],
    buffered: usize,
}

/// What one client reports at the end.
struct ReceiverReport {
    delivered: u64,
    duplicated: u64,
    misrouted: u64,
    end: End,
}

impl Receiver {
    fn new(shared: Arc<Deliveries>, channel: u32) -> Self {
        Self {
            shared,
            channel: u64::from(channel),
            seen: Vec::new(),
            delivered: 0,
            duplicated: 0,
            misrouted: 0,
            latencies: [0; LATENCY_BUFFER],
            buffered: 0,
        }
    }

    /// Handles one event from the server, in either protocol.
    fn on_event(&mut self, event: Event<'_>) {
        let Some(data) = event.data::<Stamp>(EVENT) else {
            return;
        };
        let Ok(stamp) = data else {
            self.misrouted += 1;
            return;
        };
        let latency = self.shared.now_us().saturating_sub(stamp.ts);
        if stamp.seq >= self.shared.seq_limit || stamp.seq % self.shared.channels != self.channel {
            self.misrouted += 1;
            return;
        }
        let bit = stamp.seq / self.shared.channels;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & mask != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= mask;
        self.delivered += 1;
        self.shared.unique.fetch_add(1, Ordering::Relaxed);
        self.latencies[self.buffered] = u32::try_from(latency).unwrap_or(u32::MAX);
        self.buffered += 1;
        if self.buffered == LATENCY_BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buffered == 0 {
            return;
        }
        // A poisoned lock only means another client panicked; its counts are still good.
        let mut histogram = self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &us in &self.latencies[..self.buffered] {
            histogram.saturating_record(u64::from(us));
        }
        self.buffered = 0;
    }

    fn finish(mut self, end: End) -> ReceiverReport {
        self.flush();
        ReceiverReport {
            delivered: self.delivered,
            duplicated: self.duplicated,
            misrouted: self.misrouted,
            end,
        }
    }
}

/// Builds the data of message `seq`: `{"seq":…,"ts":…,"pad":"xx…"}`, about `size` bytes.
fn message_data(seq: u64, ts: u64, size: usize, pad: &str) -> String {
    let mut data = String::with_capacity(size.max(48));
    let _ = write!(data, r#"{{"seq":{seq},"ts":{ts},"pad":""#);
    let room = size.saturating_sub(data.len() + 2).min(pad.len());
    data.push_str(&pad[..room]);
    data.push_str("\"}");
    data
}

/// Runs the scenario.
pub async fn run(args: FanoutArgs) -> Result<Summary> {
    let duration = seconds("duration", args.duration)?;
    let grace = seconds("grace", args.grace)?;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of messages per second");
    }
    let api_key = match (args.publish, &args.api_key) {
        (Publish::Http, None) => bail!("--publish http needs --api-key"),
        (_, key) => key.clone().unwrap_or_default(),
    };
    let common = &args.common;
    let setup = Setup::prepare(common, args.size).await?;
    let total = (args.rate * duration.as_secs_f64()).round() as u64;
    let mut publisher = match args.publish {
        Publish::Redis => Publisher::Redis(
            RedisPublisher::connect(&args.redis_url, args.redis_prefix.clone()).await?,
        ),
        Publish::Http => Publisher::Http(HttpPublisher::new(setup.targets[0].clone(), &api_key)),
    };

    let deliveries = Arc::new(Deliveries {
        epoch: Instant::now(),
        channels: u64::from(common.channels),
        seq_limit: total,
        unique: AtomicU64::new(0),
        latency: Mutex::new(stats::histogram()),
    });
    let hold = {
        let deliveries = deliveries.clone();
        move |session: crate::client::Session, stop| {
            let mut receiver = Receiver::new(deliveries.clone(), session.channel());
            async move {
                let end = session.hold(stop, |event| receiver.on_event(event)).await;
                receiver.finish(end)
            }
        }
    };
    let (fleet, connect) = fleet::connect(
        setup.context.clone(),
        common.connections,
        common.concurrency,
        common.channels,
        hold,
    )
    .await?;
    if connect.connected == 0 {
        bail!("no client connected, nothing to measure");
    }

    let server_before = stats::sample_pids(&common.server_pid)?;
    let bench_before = stats::sample_self()?;
    eprintln!(
        "switchboard-bench: publishing {total} messages over {:.1} s via {}",
        duration.as_secs_f64(),
        args.publish.name()
    );
    let pad = "x".repeat(args.size);
    let mut accepted_per_channel = vec![0u64; common.channels as usize];
    let mut publish_errors = 0u64;
    let mut published = 0u64;
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut accepted = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_INTERVAL;
    while published < total {
        tick.tick().await;
        let elapsed = started.elapsed();
        let due = ((elapsed.as_secs_f64() * args.rate) as u64)
            .min(total)
            .min(published + MAX_BATCH);
        if due > published {
            batch.clear();
            batch.extend((published..due).map(|seq| Outgoing {
                channel: (seq % u64::from(common.channels)) as u32,
                data: message_data(seq, deliveries.now_us(), args.size, &pad),
            }));
            match publisher.publish(&batch, &mut accepted).await {
                Ok(()) => {
                    for (message, &ok) in batch.iter().zip(&accepted) {
                        if ok {
                            accepted_per_channel[message.channel as usize] += 1;
                        } else {
                            publish_errors += 1;
                        }
                    }
                }
                Err(e) => {
                    if publish_errors == 0 {
                        eprintln!("switchboard-bench: publishing failed: {e:#}");
                    }
                    publish_errors += batch.len() as u64;
                }
            }
            published = due;
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_INTERVAL;
            eprintln!(
                "switchboard-bench: published {published}, delivered {} ({:.0} s)",
                deliveries.unique.load(Ordering::Relaxed),
                elapsed.as_secs_f64()
            );
        }
    }
    let publish_elapsed = started.elapsed();
    if let Some(refusal) = publisher.first_refusal() {
        eprintln!("switchboard-bench: the server refused messages; the first: {refusal}");
    }

    let expected: u64 = accepted_per_channel
        .iter()
        .zip(&connect.per_channel)
        .map(|(messages, clients)| messages * clients)
        .sum();
    let drain_started = Instant::now();
    while deliveries.unique.load(Ordering::Relaxed) < expected && drain_started.elapsed() < grace {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drain = drain_started.elapsed();
    let server_after = stats::sample_pids(&common.server_pid)?;
    let bench = BenchStats::since(&bench_before, common.threads)?;

    let reports = fleet.stop().await?;
    let delivered: u64 = reports.iter().map(|r| r.delivered).sum();
    let latency = {
        let histogram = deliveries
            .latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Percentiles::from(&*histogram)
    };
    let server = ServerStats::measure(&common.server_pid, server_before, server_after)
        .map(|s| s.per_million_deliveries(delivered));
    let summary = Summary {
        scenario: "fanout",
        label: common.label.clone(),
        params: Params {
            common: setup.params,
            rate: args.rate,
            duration_s: duration.as_secs_f64(),
            size: args.size,
            publish: args.publish,
            grace_s: grace.as_secs_f64(),
        },
        connect,
        published,
        publish_errors,
        publish_rate: stats::per_sec(published, publish_elapsed),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated: reports.iter().map(|r| r.duplicated).sum(),
        misrouted: reports.iter().map(|r| r.misrouted).sum(),
        dropped: reports.iter().filter(|r| r.end == End::Dropped).count() as u64,
        delivered_per_sec: stats::per_sec(delivered, duration),
        drain_s: drain.as_secs_f64(),
        latency_ms: latency,
        bench,
        server,
    };
    if summary.lost > 0 {
        eprintln!(
            "switchboard-bench: {} of {expected} deliveries did not arrive within the {:.1} s grace",
            summary.lost,
            grace.as_secs_f64()
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Protocol;

    fn deliveries(channels: u64) -> Arc<Deliveries> {
        Arc::new(Deliveries {
            epoch: Instant::now(),
            channels,
            seq_limit: 100,
            unique: AtomicU64::new(0),
            latency: Mutex::new(stats::histogram()),
        })
    }

    /// Message `seq` on `bench.1` as `protocol` delivers it.
    fn message(protocol: Protocol, seq: u64) -> String {
        let data = message_data(seq, 0, 60, &"x".repeat(60));
        match protocol {
            Protocol::Socketio => format!(r#"["bench","bench.1",{data}]"#),
            Protocol::Json => format!(r#"{{"type":"bench","channel":"bench.1","payload":{data}}}"#),
        }
    }

    #[test]
    fn pads_data_to_about_the_size() {
        let data = message_data(7, 42, 100, &"x".repeat(100));
        assert_eq!(data.len(), 100);
        assert!(data.starts_with(r#"{"seq":7,"ts":42,"pad":"xxx"#));
        let small = message_data(7, 42, 0, "");
        assert_eq!(small, r#"{"seq":7,"ts":42,"pad":""}"#);
    }

    #[test]
    fn counts_unique_duplicate_and_misrouted_deliveries() {
        let unrelated = [
            (
                Protocol::Socketio,
                r#"["subscribed",{"channel":"x","status":"auto"}]"#,
            ),
            (Protocol::Json, r#"{"type":"PONG","payload":{}}"#),
        ];
        for (protocol, other) in unrelated {
            let shared = deliveries(2);
            let mut receiver = Receiver::new(shared.clone(), 1);
            for seq in [1, 3, 3, 2, 1000] {
                receiver.on_event(Event::new(protocol, &message(protocol, seq)));
            }
            receiver.on_event(Event::new(protocol, other));
            let report = receiver.finish(End::Stopped);
            assert_eq!(
                (report.delivered, report.duplicated, report.misrouted),
                (2, 1, 2),
                "{protocol:?}"
            );
            assert_eq!(shared.unique.load(Ordering::Relaxed), 2);
            let histogram = shared.latency.lock().expect("unpoisoned");
            assert_eq!(histogram.len(), 2);
        }
    }
}
