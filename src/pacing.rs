//! Whether a fan-out writes its frame straight to the sockets or through their tasks.
//!
//! A direct write is one `send` from the delivering task with no wake-up of the socket's
//! task: the cheapest delivery while the node keeps up. But a direct fan-out does not yield,
//! and it writes one frame per `send` however fast messages come. Through the sockets' tasks,
//! frames that pile up while a node is busy leave in one write per socket, which is what lets a
//! loaded node catch up. So fan-outs write directly while the direct writes, at the current
//! delivery rate and their measured cost, would take less than a set share of one thread, and
//! a single direct fan-out stops writing directly once it has run for its time budget. While
//! writes are queued, the cost is measured again every other window by writing the first few
//! recipients of one fan-out directly, so that a cost measured at a bad moment does not rule
//! direct writes out for good.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long deliveries are counted before the rate is updated.
const WINDOW: Duration = Duration::from_millis(250);

/// Recipients a fan-out writes directly to measure the cost again while writes are queued.
const PROBE: usize = 256;

/// A window with fewer direct writes than this does not measure the cost (timer noise).
const COST_SAMPLE_MIN: usize = 16;

/// Chooses direct or queued writes fan-out by fan-out, from the node's delivery rate.
#[derive(Debug)]
pub struct Pacing {
    /// The share of one thread's time direct writes may take; 0 = never write directly.
    share: f64,
    /// The longest one fan-out writes directly; its other recipients are queued.
    budget: Duration,
    load: Mutex<Load>,
}

#[derive(Debug)]
struct Load {
    /// The current window's start, its deliveries, and its direct writes with their time.
    since: Instant,
    count: usize,
    written: usize,
    took: Duration,
    /// Deliveries per second, smoothed over windows.
    rate: f64,
    /// Seconds one direct write takes, smoothed over windows; 0 until measured.
    cost: f64,
    /// Whether the last window measured no cost (fan-outs probe, and the next measurement
    /// replaces `cost`).
    stale: bool,
}

impl Default for Pacing {
    /// Direct writes up to 90% of a thread, 100 ms per fan-out (the settings' defaults).
    fn default() -> Self {
        Self::new(0.9, Duration::from_millis(100))
    }
}

impl Pacing {
    /// Direct writes while they take less than `share` of a thread, at most `budget` per fan-out.
    pub fn new(share: f64, budget: Duration) -> Self {
        Self {
            share,
            budget,
            load: Mutex::new(Load {
                since: Instant::now(),
                count: 0,
                written: 0,
                took: Duration::ZERO,
                rate: 0.0,
                cost: 0.0,
                stale: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Load> {
        // Plain numbers: whatever a panic left is still usable.
        self.load.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether direct writes are on at all (off, sockets never hand their stream over).
    pub fn enabled(&self) -> bool {
        self.share > 0.0
    }

    /// How many of the next fan-out's recipients may be written directly: all of them, a
    /// probe's worth, or none.
    pub fn direct_quota(&self) -> usize {
        if !self.enabled() {
            return 0;
        }
        let load = self.lock();
        if load.rate * load.cost < self.share {
            usize::MAX
        } else if load.stale && load.written < COST_SAMPLE_MIN {
            // One probe per window: enough to measure, and it costs a node that is behind
            // as little as can be.
            PROBE
        } else {
            0
        }
    }

    /// Whether a direct fan-out that started at `start` has used up its time.
    pub fn spent(&self, start: Instant) -> bool {
        start.elapsed() >= self.budget
    }

    /// Records a fan-out that ended at `now`: `deliveries` in all, `written` of them written
    /// by the pushes themselves in `took`. (Pushes that found their socket busy queued instead;
    /// they are cheap, so the time is the direct writes'.)
    pub fn record(&self, deliveries: usize, written: usize, took: Duration, now: Instant) {
        let mut load = self.lock();
        load.count += deliveries;
        load.written += written;
        load.took += took;
        let elapsed = now.saturating_duration_since(load.since);
        if elapsed < WINDOW {
            // A burst from idle shows half-way through its first window: a node that keeps
            // writing directly into it for the whole window falls behind.
            if elapsed >= WINDOW / 2 {
                load.rate = load.rate.max(load.count as f64 / elapsed.as_secs_f64());
            }
            return;
        }
        let rate = load.count as f64 / elapsed.as_secs_f64();
        // A rise counts at once (a node that starts writing directly into a burst falls
        // behind); a fall by halves, so one quiet window does not undo the estimate.
        load.rate = rate.max((load.rate + rate) / 2.0);
        if load.written >= COST_SAMPLE_MIN {
            let cost = load.took.as_secs_f64() / load.written as f64;
            load.cost = if load.cost == 0.0 || load.stale {
                cost
            } else {
                (load.cost + cost) / 2.0
            };
            load.stale = false;
        } else {
            load.stale = true;
        }
        (load.since, load.count, load.written, load.took) = (now, 0, 0, Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `per_window` deliveries, all written directly at `cost` each, for `windows` windows.
    fn feed(pacing: &Pacing, start: Instant, windows: u32, per_window: usize, cost: Duration) {
        for w in 1..=windows {
            pacing.record(
                per_window,
                per_window,
                cost * per_window as u32,
                start + WINDOW * w,
            );
        }
    }

    #[test]
    fn writes_directly_until_the_writes_would_take_the_share() {
        let pacing = Pacing::new(0.8, Duration::from_millis(50));
        assert_eq!(pacing.direct_quota(), usize::MAX, "nothing measured yet");
        let start = Instant::now();
        // 50,000 deliveries/s at 6 µs each: 30% of a thread.
        feed(&pacing, start, 8, 12_500, Duration::from_micros(6));
        assert_eq!(pacing.direct_quota(), usize::MAX);
        // 200,000/s: 120% of a thread; the sockets' tasks batch instead.
        feed(
            &pacing,
            start + WINDOW * 8,
            8,
            50_000,
            Duration::from_micros(6),
        );
        assert_eq!(pacing.direct_quota(), 0);
        // Still 200,000/s, all queued: after a window with no measurement, a fan-out probes.
        let later = start + WINDOW * 16;
        pacing.record(50_000, 0, Duration::ZERO, later + WINDOW);
        assert_eq!(pacing.direct_quota(), PROBE);
        let probe = Duration::from_micros(3) * PROBE as u32;
        pacing.record(10_000, PROBE, probe, later + WINDOW + WINDOW / 10);
        assert_eq!(pacing.direct_quota(), 0, "one probe per window");
        // The probe found writes cheaper now (3 µs: 60% of a thread): all direct again.
        pacing.record(40_000, 0, Duration::ZERO, later + WINDOW * 2);
        assert_eq!(pacing.direct_quota(), usize::MAX);
    }

    #[test]
    fn small_fan_outs_add_up_to_a_measurement() {
        let pacing = Pacing::new(0.8, Duration::from_millis(50));
        let start = Instant::now();
        // One recipient per fan-out, 10 µs each, 100,000 a second: a whole thread.
        let window = |w: u32| {
            for i in 1..=25_000u32 {
                let at = start + WINDOW * w + WINDOW * i / 25_000;
                pacing.record(1, 1, Duration::from_micros(10), at);
            }
        };
        window(0);
        assert_eq!(pacing.direct_quota(), 0, "a rise counts at once");
        // A quiet window halves the rate: 50% of a thread.
        pacing.record(0, 0, Duration::ZERO, start + WINDOW * 2);
        assert_eq!(pacing.direct_quota(), usize::MAX);
    }

    #[test]
    fn a_burst_from_idle_counts_before_its_window_ends() {
        let pacing = Pacing::new(0.9, Duration::from_millis(100));
        let start = Instant::now();
        // Idle since the node started: the first fan-out closes an empty window.
        pacing.record(
            10_000,
            10_000,
            Duration::from_millis(80),
            start + WINDOW * 40,
        );
        assert_eq!(pacing.direct_quota(), usize::MAX);
        // 10,000 recipients every 50 ms at 8 µs each: 1.6 threads, seen half-way.
        for i in 1..=3 {
            let at = start + WINDOW * 40 + Duration::from_millis(50) * i;
            pacing.record(10_000, 0, Duration::ZERO, at);
        }
        assert_eq!(pacing.direct_quota(), 0);
    }

    #[test]
    fn a_zero_share_never_writes_directly() {
        let pacing = Pacing::new(0.0, Duration::from_millis(50));
        assert!(!pacing.enabled());
        assert_eq!(pacing.direct_quota(), 0);
    }

    #[test]
    fn a_fan_out_stops_writing_directly_after_its_budget() {
        let pacing = Pacing::new(0.8, Duration::from_millis(50));
        let now = Instant::now();
        assert!(!pacing.spent(now));
        assert!(pacing.spent(now - Duration::from_millis(60)));
    }
}
