//! All the clients of a run: opened with at most `concurrency` handshakes in flight, held open
//! by a scenario-given loop, and stopped together.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{ClientContext, End, Failures, HandshakeError, Session};
use crate::stats::{self, Percentiles};

/// How often connection progress is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Running clients, each returning `T` when its hold loop ends.
pub struct Fleet<T> {
    tasks: JoinSet<T>,
    stop: watch::Sender<bool>,
}

/// What the connect phase measured.
#[derive(Debug, Serialize)]
pub struct ConnectPhase {
    /// Clients that completed the handshake.
    pub connected: u64,
    /// Clients that did not, by kind.
    pub failures: Failures,
    /// From the first handshake to the last result, in seconds.
    pub elapsed_s: f64,
    /// Completed handshakes per second of `elapsed_s`.
    pub connects_per_sec: f64,
    /// Duration of the successful handshakes.
    pub latency_ms: Percentiles,
    /// Connected clients per channel index.
    #[serde(skip)]
    pub per_channel: Vec<u64>,
}

/// Opens `connections` clients; each connected one runs `hold` until the fleet is stopped.
///
/// Returns once every handshake has succeeded or failed.
pub async fn connect<T, H, F>(
    context: Arc<ClientContext>,
    connections: usize,
    concurrency: usize,
    channels: u32,
    hold: H,
) -> Result<(Fleet<Option<T>>, ConnectPhase)>
where
    T: Send + 'static,
    H: Fn(Session, watch::Receiver<bool>) -> F + Send + Sync + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (stop, stop_rx) = watch::channel(false);
    let (results_tx, mut results) = mpsc::unbounded_channel();
    let hold = Arc::new(hold);
    let started = Instant::now();
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    // Handshake tasks are spawned as permits free up, so waiting clients cost nothing.
    let spawner = tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        for index in 0..connections {
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                break;
            };
            let (context, hold, stop, results) = (
                context.clone(),
                hold.clone(),
                stop_rx.clone(),
                results_tx.clone(),
            );
            tasks.spawn(async move {
                let began = Instant::now();
                // Boxed, so the handshake's large state is freed once it is done instead of
                // staying in every held connection's task.
                let opened = Box::pin(context.open(index)).await;
                drop(permit);
                let session = match opened {
                    Ok(session) => session,
                    Err(e) => {
                        let _ = results.send(Err(e));
                        return None;
                    }
                };
                let _ = results.send(Ok((session.channel(), began.elapsed())));
                drop((context, results));
                Some(hold(session, stop).await)
            });
        }
        tasks
    });

    let mut latency = stats::histogram();
    let mut failures = Failures::default();
    let mut per_channel = vec![0u64; channels as usize];
    let mut connected = 0u64;
    let mut first_error: Option<HandshakeError> = None;
    let mut progress = tokio::time::interval_at(started + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    let mut done = 0usize;
    while done < connections {
        tokio::select! {
            result = results.recv() => {
                let Some(result) = result else { break };
                done += 1;
                match result {
                    Ok((channel, took)) => {
                        connected += 1;
                        per_channel[channel as usize] += 1;
                        latency.saturating_record(took.as_micros() as u64);
                    }
                    Err(e) => {
                        failures.add(e.failure);
                        first_error.get_or_insert(e);
                    }
                }
            }
            _ = progress.tick() => {
                eprintln!(
                    "switchboard-bench: {connected} connected, {} failed of {connections} ({:.0} s)",
                    failures.total(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let tasks = spawner
        .await
        .context("the task opening connections panicked")?;
    if let Some(e) = first_error {
        eprintln!(
            "switchboard-bench: {} handshakes failed; the first: {:?}: {}",
            failures.total(),
            e.failure,
            e.detail
        );
    }
    eprintln!(
        "switchboard-bench: {connected} of {connections} connected in {:.2} s",
        elapsed.as_secs_f64()
    );
    let phase = ConnectPhase {
        connected,
        failures,
        elapsed_s: elapsed.as_secs_f64(),
        connects_per_sec: stats::per_sec(connected, elapsed),
        latency_ms: Percentiles::from(&latency),
        per_channel,
    };
    Ok((Fleet { tasks, stop }, phase))
}

impl<T: 'static> Fleet<Option<T>> {
    /// Stops every client, closes its connection and collects what each hold loop returned.
    pub async fn stop(mut self) -> Result<Vec<T>> {
        let _ = self.stop.send(true);
        let mut outcomes = Vec::with_capacity(self.tasks.len());
        while let Some(joined) = self.tasks.join_next().await {
            if let Some(outcome) = joined.context("a client task panicked")? {
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }
}

/// Opens the scenario's clients and holds them quietly until stopped; for `connect` and `idle`.
pub async fn connect_quietly(
    setup: &crate::setup::Setup,
    common: &crate::cli::Common,
) -> Result<(Fleet<Option<End>>, ConnectPhase)> {
    connect(
        setup.context.clone(),
        common.connections,
        common.concurrency,
        common.channels,
        hold_quietly,
    )
    .await
}

/// Holds a session until stopped, ignoring its events.
fn hold_quietly(session: Session, stop: watch::Receiver<bool>) -> impl Future<Output = End> + Send {
    session.hold(stop, |_| {})
}
