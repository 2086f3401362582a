//! Measurements: latency histograms and their percentiles, and CPU time and memory of the
//! server processes and of the bench itself, read from /proc.

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Clock ticks per second of /proc/<pid>/stat times: `sysconf(_SC_CLK_TCK)`, 100 on Linux.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
/// Largest latency the histograms hold, in microseconds (an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram in microseconds with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// `count / elapsed`, or 0 for an empty interval.
pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// CPU time and resident memory of a set of processes at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime, in clock ticks, summed.
    pub cpu_ticks: u64,
    /// VmRSS, in bytes, summed.
    pub rss_bytes: u64,
    /// Softirq ticks of the cores the processes are pinned to, when none of those cores is
    /// the bench's own (see [`softirq_ticks`]).
    pub softirq_ticks: Option<u64>,
}

impl Sample {
    /// CPU seconds spent between `earlier` and this sample.
    pub fn cpu_seconds_since(&self, earlier: &Sample) -> f64 {
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / CLOCK_TICKS_PER_SEC
    }

    /// Softirq seconds on the processes' cores between `earlier` and this sample.
    pub fn softirq_seconds_since(&self, earlier: &Sample) -> Option<f64> {
        let ticks = self.softirq_ticks?.saturating_sub(earlier.softirq_ticks?);
        Some(ticks as f64 / CLOCK_TICKS_PER_SEC)
    }
}

/// Samples the processes `pids` (summed); `None` for no pids.
pub fn sample_pids(pids: &[u32]) -> Result<Option<Sample>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = Sample::default();
    let mut cores = Vec::new();
    for pid in pids {
        let pid = pid.to_string();
        let one = sample(&pid).with_context(|| format!("--server-pid {pid}"))?;
        total.cpu_ticks += one.cpu_ticks;
        total.rss_bytes += one.rss_bytes;
        cores.extend(allowed_cores(&pid)?);
    }
    cores.sort_unstable();
    cores.dedup();
    total.softirq_ticks = softirq_ticks(&cores)?;
    Ok(Some(total))
}

/// The cores `/proc/<pid>/status` allows the process to run on (`Cpus_allowed_list`).
fn allowed_cores(pid: &str) -> Result<Vec<u32>> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| parse_core_list(list.trim()))
        .with_context(|| format!("no readable Cpus_allowed_list in {path}"))
}

/// `0-2,5` as `[0, 1, 2, 5]`.
fn parse_core_list(list: &str) -> Option<Vec<u32>> {
    let mut cores = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cores.extend(a.parse::<u32>().ok()?..=b.parse().ok()?),
            None => cores.push(part.parse().ok()?),
        }
    }
    Some(cores)
}

/// Softirq ticks summed over `cores` (from /proc/stat), or `None` when one of them is also a
/// core the bench runs on. Linux (with IRQ time accounting) does not charge the kernel's
/// network work in softirq context to the process that caused it: on loopback most of the
/// receiving side of every send. When the server has its cores to itself, that work is its own.
fn softirq_ticks(cores: &[u32]) -> Result<Option<u64>> {
    let own = allowed_cores("self")?;
    if cores.is_empty() || cores.iter().any(|core| own.contains(core)) {
        return Ok(None);
    }
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    Ok(per_core_softirq(&stat, cores))
}

/// The softirq field (the 7th time) of the `cpuN` lines of /proc/stat for `cores`, summed.
fn per_core_softirq(stat: &str, cores: &[u32]) -> Option<u64> {
    let mut total = 0;
    for core in cores {
        let prefix = format!("cpu{core} ");
        let line = stat.lines().find(|l| l.starts_with(&prefix))?;
        total += line.split_whitespace().nth(7)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Samples the bench's own process.
pub fn sample_self() -> Result<Sample> {
    sample("self").context("the bench's own /proc/self")
}

fn sample(pid: &str) -> Result<Sample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("cannot read {status_path}"))?;
    Ok(Sample {
        cpu_ticks: cpu_ticks(&stat).with_context(|| format!("unexpected {stat_path}"))?,
        rss_bytes: rss_bytes(&status).with_context(|| format!("no VmRSS in {status_path}"))?,
        softirq_ticks: None,
    })
}

/// utime + stime from a /proc/<pid>/stat line (fields 14 and 15).
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in bytes from /proc/<pid>/status.
pub fn rss_bytes(status: &str) -> Option<u64> {
    status_bytes(status, "VmRSS")
}

/// A field of /proc/<pid>/status given in kB (`VmRSS`, `RssAnon`, …), in bytes.
pub fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| {
        l.strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The bench's own CPU and memory over a measured phase.
#[derive(Debug, Serialize)]
pub struct BenchStats {
    /// CPU seconds the bench spent in the measured phase.
    pub cpu_seconds: f64,
    /// The bench's resident memory at the end, in bytes.
    pub rss_bytes: u64,
    /// Tokio worker threads.
    pub threads: u32,
}

impl BenchStats {
    /// Compares the bench's own process now with `before`.
    pub fn since(before: &Sample, threads: u32) -> Result<Self> {
        let now = sample_self()?;
        Ok(BenchStats {
            cpu_seconds: now.cpu_seconds_since(before),
            rss_bytes: now.rss_bytes,
            threads,
        })
    }
}

/// CPU and memory of the server processes over a measured phase.
#[derive(Debug, Serialize)]
pub struct ServerStats {
    /// The processes measured (`--server-pid`).
    pub pids: Vec<u32>,
    /// CPU seconds they spent in the measured phase, summed.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per million unique deliveries (`fanout` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds_per_million_deliveries: Option<f64>,
    /// Softirq seconds on the cores the servers are pinned to, when the bench runs on other
    /// cores: kernel network work their traffic caused that Linux charges to no process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub softirq_seconds: Option<f64>,
    /// `cpu_seconds + softirq_seconds` per million unique deliveries (`fanout` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_with_softirq_seconds_per_million_deliveries: Option<f64>,
    /// Their resident memory at the end of the phase, summed, in bytes.
    pub rss_bytes: u64,
    /// Resident memory through an `idle` run.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub memory: Option<RssProfile>,
}

/// Server memory before connecting, once all are connected and at the end (`idle`).
#[derive(Debug, Serialize)]
pub struct RssProfile {
    pub rss_before_bytes: u64,
    pub rss_connected_bytes: u64,
    pub rss_end_bytes: u64,
    /// `(rss_connected − rss_before) / connected clients`.
    pub rss_per_connection_bytes: Option<u64>,
}

impl ServerStats {
    /// Compares two samples of `pids`; `None` when no pid was given.
    pub fn measure(pids: &[u32], before: Option<Sample>, after: Option<Sample>) -> Option<Self> {
        let (before, after) = (before?, after?);
        Some(ServerStats {
            pids: pids.to_vec(),
            cpu_seconds: after.cpu_seconds_since(&before),
            cpu_seconds_per_million_deliveries: None,
            softirq_seconds: after.softirq_seconds_since(&before),
            cpu_with_softirq_seconds_per_million_deliveries: None,
            rss_bytes: after.rss_bytes,
            memory: None,
        })
    }

    /// Adds the CPU cost per million of `deliveries`.
    pub fn per_million_deliveries(mut self, deliveries: u64) -> Self {
        let per_million =
            |seconds: f64| (deliveries > 0).then(|| seconds * 1e6 / deliveries as f64);
        self.cpu_seconds_per_million_deliveries = per_million(self.cpu_seconds);
        self.cpu_with_softirq_seconds_per_million_deliveries = self
            .softirq_seconds
            .and_then(|softirq| per_million(self.cpu_seconds + softirq));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(
            rss_bytes("Name:\tx\nVmRSS:\t    2048 kB\nThreads: 1\n"),
            Some(2048 * 1024)
        );
        let status = "VmRSS:\t 3 kB\nRssAnon:\t 2 kB\nRssFile:\t 1 kB\n";
        assert_eq!(status_bytes(status, "RssAnon"), Some(2048));
        assert_eq!(status_bytes(status, "RssFile"), Some(1024));
        assert_eq!(status_bytes(status, "Rss"), None);
    }

    #[test]
    fn reads_cores_and_their_softirq() {
        assert_eq!(parse_core_list("1"), Some(vec![1]));
        assert_eq!(parse_core_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_core_list("x"), None);
        let stat =
            "cpu  9 9 9 9 9 9 9 0 0 0\ncpu0 1 2 3 4 5 6 70 0 0 0\ncpu1 1 2 3 4 5 6 30 0 0 0\n";
        assert_eq!(per_core_softirq(stat, &[1]), Some(30));
        assert_eq!(per_core_softirq(stat, &[0, 1]), Some(100));
        assert_eq!(per_core_softirq(stat, &[2]), None);
    }

    #[test]
    fn samples_itself() {
        let sample = sample_self().expect("sample /proc/self");
        assert!(sample.rss_bytes > 0);
    }
}
