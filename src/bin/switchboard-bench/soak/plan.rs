//! Who is who in a soak: how many clients of each kind (`--mix`), which index gets which kind,
//! which ones also hold a presence channel, and the publishing rate that gives the deliveries
//! asked for. Pure, so it is tested here.

use std::str::FromStr;

use serde::Serialize;

/// What a client speaks, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Socket.IO v4 over websocket.
    SocketioWebsocket,
    /// The plain JSON protocol of `/ws`.
    Json,
    /// Socket.IO v4 over HTTP long-polling (two connections each).
    SocketioPolling,
}

/// Shares of the three kinds, as given on the command line (`60,37,3`): websocket, JSON,
/// polling; any scale, they are normalized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub websocket: f64,
    pub json: f64,
    pub polling: f64,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{s:?}: {e}"))?;
        let [websocket, json, polling] = parts[..] else {
            return Err(format!(
                "{s:?}: three shares expected: websocket,json,polling (e.g. 60,37,3)"
            ));
        };
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) || parts.iter().sum::<f64>() <= 0.0 {
            return Err(format!(
                "{s:?}: shares must be non-negative and not all zero"
            ));
        }
        Ok(Mix {
            websocket,
            json,
            polling,
        })
    }
}

/// How many clients of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub socketio_websocket: usize,
    pub json: usize,
    pub socketio_polling: usize,
}

impl Counts {
    /// Splits `total` by `mix`, rounding the first two and giving the rest to polling.
    pub fn split(total: usize, mix: Mix) -> Counts {
        let sum = mix.websocket + mix.json + mix.polling;
        let share = |x: f64| ((total as f64) * x / sum).round() as usize;
        let socketio_websocket = share(mix.websocket).min(total);
        let json = share(mix.json).min(total - socketio_websocket);
        Counts {
            socketio_websocket,
            json,
            socketio_polling: total - socketio_websocket - json,
        }
    }

    /// TCP connections these clients hold at most (a polling client has two).
    pub fn sockets(&self) -> usize {
        self.socketio_websocket + self.json + 2 * self.socketio_polling
    }
}

/// Gives every index a kind and says which hold a presence channel, spreading both evenly over
/// the indexes (and so over the main channels `i % channels`) rather than in blocks.
#[derive(Debug, Clone)]
pub struct Plan {
    total: usize,
    counts: Counts,
    /// A step coprime with `total`: `i → i·stride mod total` is a permutation of the indexes.
    stride: usize,
    /// Clients that also join a presence channel.
    presence: usize,
}

impl Plan {
    /// The plan for `total` clients mixed as `mix`, a `presence` share of them in a presence
    /// channel.
    pub fn new(total: usize, mix: Mix, presence: f64) -> Plan {
        let presence = ((total as f64) * presence.clamp(0.0, 1.0)).round() as usize;
        Plan {
            total,
            counts: Counts::split(total, mix),
            stride: coprime_stride(total),
            presence,
        }
    }

    /// How many clients of each kind.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// How many clients join a presence channel.
    pub fn presence_members(&self) -> usize {
        self.presence
    }

    /// Where index `i` falls in the shuffled order.
    fn rank(&self, i: usize) -> usize {
        ((i as u128 * self.stride as u128) % self.total.max(1) as u128) as usize
    }

    /// The kind of client `i`.
    pub fn kind(&self, i: usize) -> Kind {
        let rank = self.rank(i);
        if rank < self.counts.socketio_websocket {
            Kind::SocketioWebsocket
        } else if rank < self.counts.socketio_websocket + self.counts.json {
            Kind::Json
        } else {
            Kind::SocketioPolling
        }
    }

    /// The presence channel of client `i` among `channels`, if it joins one.
    ///
    /// Members are every (total / members)-th rank, so each kind has its share of them; the
    /// k-th member joins channel `k % channels`, so channels get equal numbers of members.
    pub fn presence_channel(&self, i: usize, channels: u32) -> Option<u32> {
        let total = self.total.max(1) as u128;
        // rank · members / total steps up by one exactly at each member's rank: the quotient
        // is the member's ordinal.
        let scaled = self.rank(i) as u128 * self.presence as u128;
        let member = scaled % total < self.presence as u128;
        let ordinal = (scaled / total) as u64;
        member.then(|| (ordinal % u64::from(channels.max(1))) as u32)
    }
}

/// An odd step near `n`·0.618 that shares no factor with `n` (1 for tiny `n`).
fn coprime_stride(n: usize) -> usize {
    if n < 3 {
        return 1;
    }
    let mut s = ((n as f64) * 0.618_033_988_75) as usize | 1;
    while gcd(s, n) != 1 {
        s += 2;
    }
    s % n
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Messages per second, over all channels, that give `deliveries` per second when each
/// message of channel `c` reaches `subscribers[c]` clients and channels are published to in
/// turn.
pub fn publish_rate(deliveries: f64, subscribers: &[usize]) -> f64 {
    let clients: usize = subscribers.iter().sum();
    if clients == 0 {
        return 0.0;
    }
    // Round-robin: each channel gets rate / channels; deliveries = rate · clients / channels.
    deliveries * subscribers.len() as f64 / clients as f64
}

/// Clients per main channel when client `i` subscribes to `i % channels`.
pub fn subscribers_per_channel(total: usize, channels: u32) -> Vec<usize> {
    let channels = channels.max(1) as usize;
    (0..channels)
        .map(|c| total / channels + usize::from(c < total % channels))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(s: &str) -> Mix {
        s.parse().expect("a valid mix")
    }

    #[test]
    fn parses_the_mix() {
        assert_eq!(
            mix("60,37,3"),
            Mix {
                websocket: 60.0,
                json: 37.0,
                polling: 3.0
            }
        );
        assert!("60,40".parse::<Mix>().is_err());
        assert!("a,b,c".parse::<Mix>().is_err());
        assert!("0,0,0".parse::<Mix>().is_err());
        assert!("-1,1,1".parse::<Mix>().is_err());
    }

    #[test]
    fn splits_exactly() {
        let counts = Counts::split(19_000, mix("60,37,3"));
        assert_eq!(
            counts,
            Counts {
                socketio_websocket: 11_400,
                json: 7_030,
                socketio_polling: 570
            }
        );
        assert_eq!(counts.sockets(), 19_570);
        assert_eq!(
            Counts::split(10, mix("1,0,0")),
            Counts {
                socketio_websocket: 10,
                json: 0,
                socketio_polling: 0
            }
        );
    }

    #[test]
    fn assigns_kinds_and_presence_evenly() {
        for (total, channels) in [(19_000, 100), (3_000, 100), (600, 100)] {
            let plan = Plan::new(total, mix("60,37,3"), 0.1);
            let mut per_kind = [0usize; 3];
            // Every main channel gets JSON clients, not one kind per channel.
            let mut json_per_channel = vec![0usize; 100];
            let mut presence_per_kind = [0usize; 3];
            let mut per_presence_channel = vec![0usize; channels];
            for i in 0..total {
                let k = plan.kind(i) as usize;
                per_kind[k] += 1;
                if plan.kind(i) == Kind::Json {
                    json_per_channel[i % 100] += 1;
                }
                if let Some(c) = plan.presence_channel(i, channels as u32) {
                    presence_per_kind[k] += 1;
                    per_presence_channel[c as usize] += 1;
                }
            }
            let counts = plan.counts();
            assert_eq!(
                per_kind,
                [
                    counts.socketio_websocket,
                    counts.json,
                    counts.socketio_polling
                ]
            );
            let expected_json = counts.json / 100;
            assert!(
                json_per_channel
                    .iter()
                    .all(|&n| n.abs_diff(expected_json) <= expected_json / 2 + 1),
                "{total}: {json_per_channel:?}"
            );
            assert_eq!(presence_per_kind.iter().sum::<usize>(), total / 10);
            assert!(
                presence_per_kind.iter().all(|&n| n > 0),
                "{total}: {presence_per_kind:?}"
            );
            // Members fill the presence channels evenly.
            let (lo, hi) = (
                per_presence_channel.iter().min().copied().unwrap_or(0),
                per_presence_channel.iter().max().copied().unwrap_or(0),
            );
            assert!(hi - lo <= 1, "{total}: {per_presence_channel:?}");
        }
    }

    #[test]
    fn small_plans_hold() {
        for total in [0, 1, 2, 3, 7] {
            let plan = Plan::new(total, mix("1,1,1"), 0.5);
            for i in 0..total {
                let _ = (plan.kind(i), plan.presence_channel(i, 3));
            }
        }
    }

    #[test]
    fn rates_give_the_deliveries() {
        let subscribers = subscribers_per_channel(19_000, 100);
        assert_eq!(subscribers.len(), 100);
        assert_eq!(subscribers.iter().sum::<usize>(), 19_000);
        let rate = publish_rate(50_000.0, &subscribers);
        assert!((rate - 263.157).abs() < 0.01, "{rate}");
        assert_eq!(subscribers_per_channel(5, 3), [2, 2, 1]);
        assert_eq!(publish_rate(1.0, &[]), 0.0);
    }
}
