//! What the soak reads of the node: resident memory and open file descriptors from /proc, and
//! the gauges and counters of its `GET /metrics` page.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::http1;
use crate::stats;
use crate::target::Target;

/// Resident memory, open descriptors and CPU time of the node's processes, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub rss_bytes: u64,
    /// Of `rss_bytes`, anonymous memory (the heap) and mapped files (the binary's pages): a
    /// growth tells which it is.
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    pub fds: u64,
    /// CPU time, and the softirq time of the node's cores when the bench runs on others.
    pub cpu: stats::Sample,
}

/// Reads /proc for `pids` (blocking: the fd directory of a loaded node has ~20,000 entries).
pub fn resources(pids: &[u32]) -> Result<Resources> {
    let cpu = stats::sample_pids(pids)?.context("no --server-pid to measure")?;
    let mut fds = 0;
    let (mut rss_anon_bytes, mut rss_file_bytes) = (0, 0);
    for pid in pids {
        let status_path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_path)
            .with_context(|| format!("--server-pid {pid}: cannot read {status_path}"))?;
        rss_anon_bytes += stats::status_bytes(&status, "RssAnon").unwrap_or(0);
        rss_file_bytes += stats::status_bytes(&status, "RssFile").unwrap_or(0);
        let fd_path = format!("/proc/{pid}/fd");
        fds += std::fs::read_dir(&fd_path)
            .with_context(|| format!("--server-pid {pid}: cannot list {fd_path}"))?
            .count() as u64;
    }
    Ok(Resources {
        rss_bytes: cpu.rss_bytes,
        rss_anon_bytes,
        rss_file_bytes,
        fds,
        cpu,
    })
}

/// The node's metrics the soak records (`None`: not on the page).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeMetrics {
    /// `switchboard_runtime_alive_tasks`.
    pub tasks: Option<u64>,
    /// `switchboard_outgoing_queue_bytes`.
    pub queue_bytes: Option<u64>,
    /// `switchboard_outgoing_queue_frames`.
    pub queue_frames: Option<u64>,
    /// `switchboard_connections`, summed over protocols and transports.
    pub connections: Option<u64>,
    /// `switchboard_slow_consumer_disconnects_total`.
    pub slow_consumer_disconnects: Option<u64>,
    /// `switchboard_errors_total` by `kind`.
    pub errors: BTreeMap<String, u64>,
}

/// Scrapes `GET /metrics` of `target`.
pub async fn scrape(target: &Target) -> Result<NodeMetrics> {
    let path = format!("{}/metrics", target.path);
    let page = http1::get(target.addr, &target.authority, &path)
        .await
        .with_context(|| format!("scrape {}{path}", target.base))?;
    Ok(parse_metrics(&page))
}

/// Reads the soak's metrics from a Prometheus text page.
pub fn parse_metrics(page: &str) -> NodeMetrics {
    let mut metrics = NodeMetrics::default();
    for line in page.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        // Gauges and counters here are whole numbers; a negative gauge would be a bug shown as 0.
        let value = value.max(0.0) as u64;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let add = |slot: &mut Option<u64>| *slot = Some(slot.unwrap_or(0) + value);
        match name {
            "switchboard_runtime_alive_tasks" => add(&mut metrics.tasks),
            "switchboard_outgoing_queue_bytes" => add(&mut metrics.queue_bytes),
            "switchboard_outgoing_queue_frames" => add(&mut metrics.queue_frames),
            "switchboard_connections" => add(&mut metrics.connections),
            "switchboard_slow_consumer_disconnects_total" => {
                add(&mut metrics.slow_consumer_disconnects);
            }
            "switchboard_errors_total" => {
                let kind = label(labels, "kind").unwrap_or("unknown");
                *metrics.errors.entry(kind.to_owned()).or_default() += value;
            }
            _ => {}
        }
    }
    metrics
}

/// The value of label `key` in `a="x",key="y"` (values without escapes, as the node's are).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// How much each counter of `errors` grew from `before` to `after`.
pub fn growth(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(kind, &n)| {
            let was = before.get(kind).copied().unwrap_or(0);
            (kind.clone(), n.saturating_sub(was))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soak_metrics() {
        let page = "\
# HELP switchboard_runtime_alive_tasks Tasks alive
# TYPE switchboard_runtime_alive_tasks gauge
switchboard_runtime_alive_tasks 39012
switchboard_outgoing_queue_bytes 2048
switchboard_outgoing_queue_frames 3
switchboard_connections{protocol=\"socketio\",transport=\"websocket\"} 11400
switchboard_connections{protocol=\"socketio\",transport=\"polling\"} 570
switchboard_connections{protocol=\"json\",transport=\"websocket\"} 7030
switchboard_slow_consumer_disconnects_total 0
switchboard_errors_total{kind=\"protocol\"} 2
switchboard_errors_total{kind=\"origin_denied\"} 0
switchboard_connections_total 1e3
";
        let m = parse_metrics(page);
        assert_eq!(m.tasks, Some(39_012));
        assert_eq!(m.queue_bytes, Some(2048));
        assert_eq!(m.queue_frames, Some(3));
        assert_eq!(m.connections, Some(19_000));
        assert_eq!(m.slow_consumer_disconnects, Some(0));
        assert_eq!(
            m.errors,
            BTreeMap::from([("origin_denied".to_owned(), 0), ("protocol".to_owned(), 2)])
        );
        assert_eq!(parse_metrics("").tasks, None);
        let before = BTreeMap::from([("protocol".to_owned(), 1)]);
        assert_eq!(
            growth(&before, &m.errors),
            BTreeMap::from([("origin_denied".to_owned(), 0), ("protocol".to_owned(), 1)])
        );
    }

    #[test]
    fn reads_its_own_process() {
        let me = resources(&[std::process::id()]).expect("/proc/self");
        assert!(me.rss_bytes > 0 && me.fds > 0);
    }
}
