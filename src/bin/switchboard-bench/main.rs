//! `switchboard-bench`: the load generator of Switchboard.
//!
//! It speaks Socket.IO v4 over websocket, or with `--protocol json` the plain JSON protocol of
//! `/ws`, itself (no client library), so one process holds tens of thousands of clients
//! cheaply. Each scenario prints progress on stderr and exactly one JSON summary line on stdout:
//!
//! - `fanout`: subscribed clients, messages published at a fixed rate (Redis or HTTP API),
//!   delivery counts and publish-to-receive latency;
//! - `connect`: handshake rate, failures by kind and handshake latency;
//! - `idle`: clients held open, drops, and the server's memory per connection;
//! - `soak`: a long run of mixed clients (Socket.IO over websocket and long-polling, JSON) with
//!   churn, presence, subscription traffic and steady deliveries; the node's memory, fds,
//!   tasks, queue and latency sampled every minute, loss counted, and a pass/fail verdict.
//!
//! With `--server-pid` it also reports the server's CPU and memory from /proc, beside its own.

mod cli;
mod client;
mod connect;
mod fanout;
mod fleet;
mod http1;
mod idle;
mod polling;
mod publish;
mod setup;
mod soak;
mod stats;
mod target;
mod wire;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Scenario};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.scenario) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one scenario and returns its JSON summary line.
fn run(scenario: Scenario) -> Result<String> {
    let common = scenario.common();
    setup::raise_file_limit(scenario.sockets())?;
    let threads = common.threads as usize;
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let line = match scenario {
            Scenario::Fanout(args) => serde_json::to_string(&fanout::run(args).await?),
            Scenario::Connect(args) => serde_json::to_string(&connect::run(args).await?),
            Scenario::Idle(args) => serde_json::to_string(&idle::run(args).await?),
            Scenario::Soak(args) => serde_json::to_string(&soak::run(args).await?),
        };
        line.context("cannot encode the summary")
    })
}
