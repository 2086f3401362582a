//! The `connect` scenario: N full handshakes (TCP, websocket upgrade, Engine.IO open, CONNECT
//! with a JWT, subscribe) with at most C in flight; all stay open until the last is done.

use anyhow::Result;
use serde::Serialize;

use crate::cli::ConnectArgs;
use crate::client::End;
use crate::fleet::{self, ConnectPhase};
use crate::setup::{CommonParams, Setup};
use crate::stats::{self, BenchStats, ServerStats};

/// The parameters echoed in the summary.
#[derive(Debug, Serialize)]
struct Params {
    #[serde(flatten)]
    common: CommonParams,
}

/// The summary line of `connect`.
#[derive(Debug, Serialize)]
pub struct Summary {
    scenario: &'static str,
    label: String,
    params: Params,
    #[serde(flatten)]
    connect: ConnectPhase,
    /// Clients the server or the network closed before all handshakes were done.
    dropped: u64,
    bench: BenchStats,
    server: Option<ServerStats>,
}

/// Runs the scenario.
pub async fn run(args: ConnectArgs) -> Result<Summary> {
    let common = &args.common;
    let setup = Setup::prepare(common, 0).await?;
    let server_before = stats::sample_pids(&common.server_pid)?;
    let bench_before = stats::sample_self()?;
    let (fleet, connect) = fleet::connect_quietly(&setup, common).await?;
    let server_after = stats::sample_pids(&common.server_pid)?;
    let bench = BenchStats::since(&bench_before, common.threads)?;
    let ends = fleet.stop().await?;
    Ok(Summary {
        scenario: "connect",
        label: common.label.clone(),
        params: Params {
            common: setup.params,
        },
        connect,
        dropped: ends.iter().filter(|&&end| end == End::Dropped).count() as u64,
        bench,
        server: ServerStats::measure(&common.server_pid, server_before, server_after),
    })
}
