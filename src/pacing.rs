//! Whether a fan-out writes its frame straight to the sockets or through their tasks.
//!
//! A direct write is one `send` from the delivering task with no wake-up of the socket's
//! task: the cheapest delivery while the node keeps up. But a direct fan-out does not yield,
//! and it writes one frame per `send` however fast messages come. Through the sockets' tasks,
//! frames that pile up while a node is busy leave in one write per socket, which is what lets a
//! loaded node catch up. So fan-outs write directly while the direct writes, at the current
//! delivery rate and their measured cost, would take less than a set share of one thread, and
//! a single direct fan-out stops writing directly once it has run for its time budget.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long deliveries are counted before the rate is updated.
const WINDOW: Duration = Duration::from_millis(250);

/// How much of the measured cost is kept after a window with no direct write.
const COST_DECAY: f64 = 0.8;

/// Direct fan-outs smaller than this do not update the measured cost (timer noise).
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
    /// Deliveries since `since`.
    count: usize,
    since: Instant,
    /// Deliveries per second, smoothed over windows.
    rate: f64,
    /// Seconds one direct write takes, smoothed; 0 until measured.
    cost: f64,
    /// Whether `cost` was measured in the current window.
    sampled: bool,
    /// Whether `cost` has decayed since it was last measured (the next sample replaces it).
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
                count: 0,
                since: Instant::now(),
                rate: 0.0,
                cost: 0.0,
                sampled: false,
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

    /// Whether the next fan-out may write directly.
    pub fn direct(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        let load = self.lock();
        load.rate * load.cost < self.share
    }

    /// Whether a direct fan-out that started at `start` has used up its time.
    pub fn spent(&self, start: Instant) -> bool {
        start.elapsed() >= self.budget
    }

    /// Records a fan-out that ended at `now`: `deliveries` in all, `direct` of them written
    /// by the pushes themselves in `took`. (Pushes that found their socket busy queued instead;
    /// they are cheap, so the time is the direct writes'.)
    pub fn record(&self, deliveries: usize, direct: usize, took: Duration, now: Instant) {
        let mut load = self.lock();
        load.count += deliveries;
        let elapsed = now.saturating_duration_since(load.since);
        if elapsed >= WINDOW {
            let rate = load.count as f64 / elapsed.as_secs_f64();
            // Half the last window, half the history: a burst shows within one window, and a
            // quiet spell clears it as fast.
            load.rate = (load.rate + rate) / 2.0;
            load.count = 0;
            load.since = now;
            if !std::mem::take(&mut load.sampled) {
                // Not measured while writes were queued: let the estimate fall, so that a
                // cost measured on a bad moment does not rule direct writes out for good; a
                // direct fan-out then measures it again.
                load.cost *= COST_DECAY;
                load.stale = true;
            }
        }
        if direct >= COST_SAMPLE_MIN {
            let cost = took.as_secs_f64() / direct as f64;
            load.sampled = true;
            load.cost = if load.cost == 0.0 || std::mem::take(&mut load.stale) {
                cost
            } else {
                0.75 * load.cost + 0.25 * cost
            };
        }
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
        assert!(pacing.direct(), "nothing measured yet");
        let start = Instant::now();
        // 50,000 deliveries/s at 6 µs each: 30% of a thread.
        feed(&pacing, start, 8, 12_500, Duration::from_micros(6));
        assert!(pacing.direct());
        // 200,000/s: 120% of a thread; the sockets' tasks batch instead.
        feed(
            &pacing,
            start + WINDOW * 8,
            8,
            50_000,
            Duration::from_micros(6),
        );
        assert!(!pacing.direct());
        // Still 200,000/s, all queued: the unmeasured cost decays until a direct fan-out
        // measures it again, and the real cost sends writes back to the queues.
        let later = start + WINDOW * 16;
        let mut windows = 0;
        while !pacing.direct() {
            windows += 1;
            pacing.record(50_000, 0, Duration::ZERO, later + WINDOW * windows);
        }
        assert!((2..=4).contains(&windows), "probed after {windows} windows");
        pacing.record(
            10_000,
            10_000,
            Duration::from_millis(60),
            later + WINDOW * windows,
        );
        assert!(!pacing.direct());
        // Quiet again: direct within a few windows.
        let quiet = later + WINDOW * (windows + 1);
        for w in 1..=8 {
            pacing.record(1000, 0, Duration::ZERO, quiet + WINDOW * w);
        }
        assert!(pacing.direct());
    }

    #[test]
    fn small_fan_outs_do_not_move_the_cost() {
        let pacing = Pacing::new(0.8, Duration::from_millis(50));
        let now = Instant::now();
        pacing.record(2, 2, Duration::from_millis(10), now);
        assert_eq!(pacing.lock().cost, 0.0);
    }

    #[test]
    fn a_zero_share_never_writes_directly() {
        let pacing = Pacing::new(0.0, Duration::from_millis(50));
        assert!(!pacing.enabled());
        assert!(!pacing.direct());
    }

    #[test]
    fn a_fan_out_stops_writing_directly_after_its_budget() {
        let pacing = Pacing::new(0.8, Duration::from_millis(50));
        let now = Instant::now();
        assert!(!pacing.spent(now));
        assert!(pacing.spent(now - Duration::from_millis(60)));
    }
}
