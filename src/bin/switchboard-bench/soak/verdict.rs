//! The soak's pass or fail, from its samples and totals. Pure, so it is tested here against
//! flat, growing and noisy series.
//!
//! Pass: after the warm-up, the node's RSS and open file descriptors stay flat (the last sample
//! and the highest one within the tolerance above the first sample after the warm-up), no
//! message was lost to a connected client, none came twice or to the wrong client, and nothing
//! failed: no handshake, subscription, publish, dropped client, node error or slow-consumer
//! disconnect.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample as the verdict reads it.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Seconds since the load started.
    pub t_s: f64,
    pub rss_bytes: u64,
    pub fds: u64,
}

/// What the verdict judges.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub points: Vec<Point>,
    pub warmup_s: f64,
    /// Growth allowed, as a fraction (0.05 = 5%).
    pub tolerance: f64,
    /// Deliveries lost to connected clients, end included.
    pub lost: i64,
    /// Handshake failures by kind (only the non-zero ones need be there).
    pub handshake_failures: BTreeMap<&'static str, u64>,
    /// Deliveries a session received twice.
    pub duplicated: u64,
    /// Messages of another channel, or unreadable ones.
    pub misrouted: u64,
    /// Subscribe or unsubscribe requests the node refused after the handshake.
    pub refused_requests: u64,
    /// Clients the node or the network closed.
    pub dropped: u64,
    /// Messages whose PUBLISH failed.
    pub publish_errors: u64,
    /// Growth of the node's `switchboard_errors_total` over the run, by kind.
    pub node_errors: BTreeMap<String, u64>,
    /// Growth of the node's slow-consumer disconnects over the run.
    pub slow_consumer_disconnects: u64,
}

/// How one series moved after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Growth {
    /// The first sample at or after the warm-up.
    pub base: u64,
    pub last: u64,
    pub max: u64,
    /// `last / base − 1`.
    pub last_growth: f64,
    /// `max / base − 1`.
    pub max_growth: f64,
}

impl Growth {
    fn of(values: &[u64]) -> Option<Growth> {
        let (&base, &last) = (values.first()?, values.last()?);
        let max = values.iter().copied().max().unwrap_or(base);
        let rel = |v: u64| {
            if base == 0 {
                if v == 0 { 0.0 } else { f64::INFINITY }
            } else {
                v as f64 / base as f64 - 1.0
            }
        };
        Some(Growth {
            base,
            last,
            max,
            last_growth: rel(last),
            max_growth: rel(max),
        })
    }

    fn within(&self, tolerance: f64) -> bool {
        self.last_growth <= tolerance && self.max_growth <= tolerance
    }
}

/// The soak's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub pass: bool,
    /// What failed, one line each; empty on a pass.
    pub failures: Vec<String>,
    /// Samples at or after the warm-up the growth is judged on.
    pub samples_after_warmup: usize,
    pub rss: Option<Growth>,
    pub fds: Option<Growth>,
}

/// Judges `evidence`.
pub fn judge(evidence: &Evidence) -> Verdict {
    let mut failures = Vec::new();
    let after: Vec<&Point> = evidence
        .points
        .iter()
        .filter(|p| p.t_s >= evidence.warmup_s)
        .collect();
    let rss = Growth::of(&after.iter().map(|p| p.rss_bytes).collect::<Vec<_>>());
    let fds = Growth::of(&after.iter().map(|p| p.fds).collect::<Vec<_>>());
    if after.len() < 2 {
        failures.push(format!(
            "{} sample(s) after the {:.0} s warm-up: at least 2 are needed to judge growth",
            after.len(),
            evidence.warmup_s
        ));
    }
    let pct = |x: f64| x * 100.0;
    for (name, growth) in [("RSS", rss), ("open fds", fds)] {
        let Some(g) = growth.filter(|g| after.len() >= 2 && !g.within(evidence.tolerance)) else {
            continue;
        };
        failures.push(format!(
            "{name} grew after the warm-up: {} → last {} (+{:.1}%), max {} (+{:.1}%), over the {:.1}% allowed",
            g.base,
            g.last,
            pct(g.last_growth),
            g.max,
            pct(g.max_growth),
            pct(evidence.tolerance)
        ));
    }
    if evidence.lost != 0 {
        failures.push(format!(
            "{} deliveries lost to connected clients",
            evidence.lost
        ));
    }
    let failed: Vec<String> = evidence
        .handshake_failures
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if !failed.is_empty() {
        failures.push(format!("handshake failures: {}", failed.join(", ")));
    }
    let counts = [
        (evidence.duplicated, "deliveries received twice"),
        (
            evidence.misrouted,
            "messages of another channel or unreadable",
        ),
        (
            evidence.refused_requests,
            "subscribe/unsubscribe requests refused",
        ),
        (
            evidence.dropped,
            "clients dropped by the node or the network",
        ),
        (
            evidence.publish_errors,
            "messages not published (Redis errors)",
        ),
        (
            evidence.slow_consumer_disconnects,
            "slow-consumer disconnects",
        ),
    ];
    for (n, what) in counts {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    let errors: Vec<String> = evidence
        .node_errors
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if !errors.is_empty() {
        failures.push(format!(
            "node errors (switchboard_errors_total): {}",
            errors.join(", ")
        ));
    }
    Verdict {
        pass: failures.is_empty(),
        failures,
        samples_after_warmup: after.len(),
        rss,
        fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Samples every 60 s of RSS `rss(minute)` MiB and `fds(minute)` descriptors.
    fn series(minutes: u32, rss: impl Fn(u32) -> f64, fds: impl Fn(u32) -> u64) -> Vec<Point> {
        (0..=minutes)
            .map(|m| Point {
                t_s: f64::from(m) * 60.0,
                rss_bytes: (rss(m) * MIB as f64) as u64,
                fds: fds(m),
            })
            .collect()
    }

    fn evidence(points: Vec<Point>) -> Evidence {
        Evidence {
            points,
            warmup_s: 300.0,
            tolerance: 0.05,
            ..Evidence::default()
        }
    }

    #[test]
    fn flat_after_warmup_passes() {
        // Climbs during the warm-up, then wobbles within 2%.
        let points = series(
            30,
            |m| {
                if m < 5 {
                    100.0 + 60.0 * f64::from(m)
                } else {
                    400.0 + f64::from(m % 3) * 3.0
                }
            },
            |m| {
                if m < 5 {
                    10_000 + 2_000 * u64::from(m)
                } else {
                    19_570 - u64::from(m % 2) * 40
                }
            },
        );
        let verdict = judge(&evidence(points));
        assert!(verdict.pass, "{:?}", verdict.failures);
        assert_eq!(verdict.samples_after_warmup, 26);
        // Minute 5, the first after the warm-up: 400 + (5 % 3) × 3.
        assert_eq!(verdict.rss.map(|g| g.base), Some(406 * MIB));
    }

    #[test]
    fn steady_growth_fails() {
        // 0.5% a minute: 12.5% over the 25 minutes after the warm-up.
        let points = series(30, |m| 400.0 * (1.0 + 0.005 * f64::from(m)), |_| 19_570);
        let verdict = judge(&evidence(points));
        assert!(!verdict.pass);
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        assert!(
            verdict.failures[0].starts_with("RSS grew"),
            "{:?}",
            verdict.failures
        );
        let fds = series(30, |_| 400.0, |m| 19_000 + 100 * u64::from(m));
        let verdict = judge(&evidence(fds));
        assert!(
            verdict.failures[0].starts_with("open fds grew"),
            "{:?}",
            verdict.failures
        );
    }

    #[test]
    fn a_peak_that_came_back_still_fails() {
        // The last sample is back at the base, but one minute was 20% up.
        let points = series(30, |m| if m == 20 { 480.0 } else { 400.0 }, |_| 19_570);
        let verdict = judge(&evidence(points));
        assert!(!verdict.pass);
        let rss = verdict.rss.expect("rss growth");
        assert_eq!(rss.last_growth, 0.0);
        assert!((rss.max_growth - 0.2).abs() < 1e-9);
    }

    #[test]
    fn shrinking_is_fine() {
        let points = series(30, |m| 500.0 - f64::from(m), |m| 19_570 - u64::from(m));
        assert!(judge(&evidence(points)).pass);
    }

    #[test]
    fn too_short_a_run_cannot_pass() {
        let verdict = judge(&evidence(series(5, |_| 400.0, |_| 100)));
        assert!(!verdict.pass);
        assert!(verdict.failures[0].contains("1 sample(s) after the 300 s warm-up"));
    }

    #[test]
    fn names_every_other_failure() {
        let mut e = evidence(series(30, |_| 400.0, |_| 19_570));
        e.lost = 3;
        e.handshake_failures = BTreeMap::from([("timeout", 2), ("tcp", 0)]);
        e.duplicated = 8;
        e.refused_requests = 1;
        e.dropped = 4;
        e.publish_errors = 5;
        e.slow_consumer_disconnects = 6;
        e.node_errors = BTreeMap::from([("protocol".to_owned(), 7), ("origin".to_owned(), 0)]);
        let verdict = judge(&e);
        assert_eq!(
            verdict.failures,
            [
                "3 deliveries lost to connected clients",
                "handshake failures: timeout 2",
                "8 deliveries received twice",
                "1 subscribe/unsubscribe requests refused",
                "4 clients dropped by the node or the network",
                "5 messages not published (Redis errors)",
                "6 slow-consumer disconnects",
                "node errors (switchboard_errors_total): protocol 7",
            ]
        );
    }
}
