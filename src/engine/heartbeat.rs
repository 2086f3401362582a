//! Engine.IO's server-side heartbeat: a ping every interval, a pong expected within the timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What the heartbeat asks for when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping now.
    Ping,
    /// Nothing yet.
    Wait,
    /// The client did not answer the last ping in time.
    TimedOut,
}

/// One session's heartbeat.
#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    awaiting_since: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat whose first ping is due at `first_ping`.
    pub fn new(first_ping: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            next_ping: first_ping,
            awaiting_since: None,
        }
    }

    /// When the timer should fire next.
    pub fn deadline(&self) -> Instant {
        self.awaiting_since
            .map_or(self.next_ping, |sent| sent + self.timeout)
    }

    /// Advances the heartbeat; `pong` is cleared when a ping is sent.
    pub fn on_timer(&mut self, now: Instant, pong: &AtomicBool) -> Beat {
        if let Some(sent) = self.awaiting_since {
            if now < sent + self.timeout {
                return Beat::Wait;
            }
            if !pong.load(Ordering::Acquire) {
                return Beat::TimedOut;
            }
            self.awaiting_since = None;
            self.next_ping = sent + self.interval;
        }
        if now < self.next_ping {
            return Beat::Wait;
        }
        pong.store(false, Ordering::Release);
        self.awaiting_since = Some(now);
        Beat::Ping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_pings_then_expects_a_pong() {
        let start = Instant::now();
        let (interval, timeout) = (Duration::from_secs(25), Duration::from_secs(20));
        let pong = AtomicBool::new(false);
        let mut hb = Heartbeat::new(start + interval, interval, timeout);
        assert_eq!(hb.deadline(), start + interval);
        assert_eq!(hb.on_timer(start, &pong), Beat::Wait);
        assert_eq!(hb.on_timer(start + interval, &pong), Beat::Ping);
        assert_eq!(hb.deadline(), start + interval + timeout);
        pong.store(true, Ordering::Release);
        // The pong came: the next ping is one interval after the last one.
        assert_eq!(hb.on_timer(start + interval + timeout, &pong), Beat::Wait);
        assert_eq!(hb.deadline(), start + interval * 2);
        assert_eq!(hb.on_timer(start + interval * 2, &pong), Beat::Ping);
        assert!(
            !pong.load(Ordering::Acquire),
            "sending a ping clears the pong"
        );
        assert_eq!(
            hb.on_timer(start + interval * 2 + timeout, &pong),
            Beat::TimedOut
        );
    }

    #[test]
    fn heartbeat_with_timeout_longer_than_interval() {
        let start = Instant::now();
        let pong = AtomicBool::new(false);
        let mut hb = Heartbeat::new(start, Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(hb.on_timer(start, &pong), Beat::Ping);
        pong.store(true, Ordering::Release);
        assert_eq!(
            hb.on_timer(start + Duration::from_secs(3), &pong),
            Beat::Ping
        );
    }
}
