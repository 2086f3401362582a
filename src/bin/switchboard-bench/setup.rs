//! What every scenario does first: raise the file limit, resolve the servers, choose source
//! addresses and build the clients' shared context.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::{Common, Protocol, seconds};
use crate::client::{self, ClientContext};
use crate::target::{self, Target};

/// File descriptors kept free beside the client sockets (runtime, publisher, /proc reads).
const FD_HEADROOM: u64 = 64;

/// The shared parameters echoed in every summary (no secrets).
#[derive(Debug, Serialize)]
pub struct CommonParams {
    pub protocol: Protocol,
    pub urls: Vec<String>,
    pub connections: usize,
    pub channels: u32,
    pub concurrency: usize,
    pub timeout_s: f64,
    pub threads: u32,
    pub source_addresses: usize,
    pub read_buffer: usize,
    pub server_pids: Vec<u32>,
}

/// A scenario's resolved targets and client context.
pub struct Setup {
    pub targets: Vec<Target>,
    pub context: Arc<ClientContext>,
    pub params: CommonParams,
}

impl Setup {
    /// Resolves the common settings for clients receiving messages of about `message_size` bytes.
    pub async fn prepare(common: &Common, message_size: usize) -> Result<Setup> {
        if common.url.is_empty() {
            bail!("--url needs at least one server");
        }
        let timeout = seconds("timeout", common.timeout)?;
        let mut targets = Vec::with_capacity(common.url.len());
        for url in &common.url {
            targets.push(Target::resolve(url).await?);
        }
        let sources =
            target::source_addresses(&targets, common.connections, common.source_addresses)?;
        let read_buffer = client::read_buffer_for(message_size);
        let params = CommonParams {
            protocol: common.protocol,
            urls: targets.iter().map(|t| t.base.clone()).collect(),
            connections: common.connections,
            channels: common.channels,
            concurrency: common.concurrency,
            timeout_s: timeout.as_secs_f64(),
            threads: common.threads,
            source_addresses: sources.len().max(1),
            read_buffer,
            server_pids: common.server_pid.clone(),
        };
        let context = ClientContext::new(
            common,
            targets.clone(),
            sources,
            timeout,
            message_size,
            read_buffer,
        );
        Ok(Setup {
            targets,
            context: Arc::new(context),
            params,
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and checks that `connections` fit.
pub fn raise_file_limit(connections: usize) -> Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .context("cannot raise the RLIMIT_NOFILE soft limit")?;
    eprintln!("switchboard-bench: RLIMIT_NOFILE soft limit is {limit}");
    let needed = connections as u64 + FD_HEADROOM;
    if needed > limit {
        bail!(
            "{connections} connections need about {needed} file descriptors but RLIMIT_NOFILE allows {limit}; \
             raise the hard limit (ulimit -Hn) or use fewer --connections"
        );
    }
    Ok(())
}
