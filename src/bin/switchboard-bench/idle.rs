//! The `idle` scenario: N subscribed clients held open for a while, answering pings; how many
//! the server drops, and how much memory it spends per connection.

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::{IdleArgs, seconds};
use crate::client::End;
use crate::fleet::{self, ConnectPhase};
use crate::setup::{CommonParams, Setup};
use crate::stats::{self, BenchStats, RssProfile, ServerStats};

/// The parameters echoed in the summary.
#[derive(Debug, Serialize)]
struct Params {
    #[serde(flatten)]
    common: CommonParams,
    duration_s: f64,
}

/// The summary line of `idle`.
#[derive(Debug, Serialize)]
pub struct Summary {
    scenario: &'static str,
    label: String,
    params: Params,
    connect: ConnectPhase,
    /// Seconds the connections were held once all handshakes were done.
    held_s: f64,
    /// Clients the server or the network closed before the end.
    dropped: u64,
    /// Resources of the bench while holding.
    bench: BenchStats,
    /// Resources of the server while holding, and its memory through the run.
    server: Option<ServerStats>,
}

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> Result<Summary> {
    let duration = seconds("duration", args.duration)?;
    let common = &args.common;
    let setup = Setup::prepare(common, 0).await?;
    let server_idle = stats::sample_pids(&common.server_pid)?;
    let (fleet, connect) = fleet::connect_quietly(&setup, common).await?;
    let server_connected = stats::sample_pids(&common.server_pid)?;
    let bench_before = stats::sample_self()?;
    eprintln!(
        "switchboard-bench: holding {} connections for {:.1} s",
        connect.connected,
        duration.as_secs_f64()
    );
    let held_from = Instant::now();
    tokio::time::sleep(duration).await;
    let held = held_from.elapsed();
    let server_end = stats::sample_pids(&common.server_pid)?;
    let bench = BenchStats::since(&bench_before, common.threads)?;
    let ends = fleet.stop().await?;

    let server =
        ServerStats::measure(&common.server_pid, server_connected, server_end).map(|mut server| {
            let before = server_idle.map_or(0, |s| s.rss_bytes);
            let connected = server_connected.map_or(0, |s| s.rss_bytes);
            server.memory = Some(RssProfile {
                rss_before_bytes: before,
                rss_connected_bytes: connected,
                rss_end_bytes: server.rss_bytes,
                rss_per_connection_bytes: (connect.connected > 0)
                    .then(|| connected.saturating_sub(before) / connect.connected),
            });
            server
        });
    Ok(Summary {
        scenario: "idle",
        label: common.label.clone(),
        params: Params {
            common: setup.params,
            duration_s: duration.as_secs_f64(),
        },
        connect,
        held_s: held.as_secs_f64(),
        dropped: ends.iter().filter(|&&end| end == End::Dropped).count() as u64,
        bench,
        server,
    })
}
