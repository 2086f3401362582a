//! Rate limits and the client address they are keyed by.
//!
//! A token bucket per key: `rate` tokens a second up to `burst`. Connection attempts are
//! limited per client IP on each node (nginx hashes a client to one node, so a per-node
//! bucket is the client's bucket), subscribe requests per socket.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;

/// Wrong API keys, admin keys or admin tokens one client address may present: a burst of 10,
/// then one a second. An honest client with a stale key notices long before; a guesser gets
/// 86,400 tries a day, nothing against a key of 128 bits or more.
pub const FAILED_ATTEMPTS: Rate = Rate {
    per_second: 1.0,
    burst: 10.0,
};

/// A rate and a burst; a rate of 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens held.
    pub burst: f64,
}

impl Rate {
    /// Whether the limit is off.
    pub fn unlimited(self) -> bool {
        self.per_second <= 0.0
    }
}

/// One token bucket.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Refills `tokens` for `elapsed` seconds at `rate` (up to the burst) and spends one if there
/// is one; returns whether it was spent and the tokens left.
fn spend(tokens: f64, elapsed: f64, rate: Rate) -> (bool, f64) {
    let refilled = (tokens + elapsed * rate.per_second).min(rate.burst);
    if refilled >= 1.0 {
        (true, refilled - 1.0)
    } else {
        (false, refilled)
    }
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        if rate.unlimited() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let (allowed, left) = spend(self.tokens, elapsed, rate);
        self.tokens = left;
        self.last = now;
        allowed
    }

    /// How long until a token is there; `None` when one is there now. Takes nothing.
    fn wait(&self, rate: Rate, now: Instant) -> Option<Duration> {
        if rate.unlimited() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / rate.per_second))
    }

    /// Whether the bucket has refilled completely, so forgetting it changes nothing.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate.per_second >= rate.burst
    }
}

/// A token bucket for one socket in 8 bytes (every socket holds one): the tokens as an `f32`
/// and the last refill in milliseconds since the process started, updated lock-free. The
/// tokens are never negative, so the `f32` sign bit marks a bucket in use; zero means "never
/// used" and the bucket is full on first use.
#[derive(Debug, Default)]
pub struct SocketLimit(AtomicU64);

/// The `f32` sign bit, set on every stored bucket.
const IN_USE: u32 = 1 << 31;

/// Milliseconds since the first call, wrapping after 49 days (a wrapped interval only
/// under-refills one bucket once).
fn millis() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u32
}

impl SocketLimit {
    /// Takes a token if there is one.
    pub fn take(&self, rate: Rate) -> bool {
        if rate.unlimited() {
            return true;
        }
        let now = millis();
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let (tokens, last) = if current == 0 {
                (rate.burst as f32, now)
            } else {
                (
                    f32::from_bits((current >> 32) as u32 & !IN_USE),
                    current as u32,
                )
            };
            let elapsed = f64::from(now.wrapping_sub(last)) / 1000.0;
            let (allowed, left) = spend(f64::from(tokens), elapsed, rate);
            let next = (u64::from((left as f32).to_bits() | IN_USE) << 32) | u64::from(now);
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return allowed,
                Err(actual) => current = actual,
            }
        }
    }
}

/// One log line per interval for a kind of event a client can repeat at will (refused
/// connects): the first since the last [`LogBudget::summary`] is logged, the rest counted.
#[derive(Debug, Default)]
pub struct LogBudget {
    logged: AtomicBool,
    suppressed: AtomicU64,
}

impl LogBudget {
    /// Whether to log this occurrence; when not, it is counted for the summary.
    pub fn admit(&self) -> bool {
        if self.logged.swap(true, Ordering::AcqRel) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    }

    /// The occurrences not logged since the last call; the next one is logged again.
    pub fn summary(&self) -> u64 {
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        self.logged.store(false, Ordering::Release);
        suppressed
    }
}

/// How often [`AddressLimits::sweep`] runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Buckets per key: client addresses for connects, API keys for API calls.
#[derive(Debug)]
pub struct KeyedLimits<K: Eq + Hash> {
    rate: Rate,
    buckets: DashMap<K, Bucket>,
}

/// Buckets per client address.
pub type AddressLimits = KeyedLimits<IpAddr>;

impl<K: Eq + Hash + Clone> KeyedLimits<K> {
    /// Limits at `rate` per key.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: DashMap::new(),
        }
    }

    /// Takes a token for `key`; false when it is over its rate.
    pub fn take<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.rate.unlimited() {
            return true;
        }
        let now = Instant::now();
        if let Some(mut bucket) = self.buckets.get_mut(key) {
            return bucket.take(self.rate, now);
        }
        self.buckets
            .entry(key.to_owned())
            .or_insert_with(|| Bucket::new(self.rate, now))
            .take(self.rate, now)
    }

    /// How long until `key` has a token again; `None` when it has one now. Takes nothing and
    /// stores nothing, so a key that is never over its rate costs no memory.
    pub fn wait<Q>(&self, key: &Q) -> Option<Duration>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.buckets
            .get(key)
            .and_then(|bucket| bucket.wait(self.rate, Instant::now()))
    }

    /// Forgets full buckets, so the map holds only recently active addresses.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.buckets
            .retain(|_, bucket| !bucket.is_full(self.rate, now));
    }
}

/// Things open at once (connections, sessions) counted per client address, each address up
/// to a cap; unlike a rate, a count goes down only when its holder gives it back.
#[derive(Debug)]
pub struct AddressCounts {
    cap: usize,
    open: DashMap<IpAddr, usize>,
}

impl AddressCounts {
    /// Counts of at most `cap` per address.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            open: DashMap::new(),
        }
    }

    /// Counts one more for `key`; false (and nothing counted) when it already holds the cap.
    pub fn try_add(&self, key: IpAddr) -> bool {
        let mut count = self.open.entry(key).or_insert(0);
        if *count >= self.cap {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives back one that [`Self::try_add`] counted; an address holding none is forgotten.
    pub fn remove(&self, key: IpAddr) {
        self.open.remove_if_mut(&key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }

    /// How many `key` holds.
    pub fn count(&self, key: IpAddr) -> usize {
        self.open.get(&key).map_or(0, |count| *count)
    }
}

/// An address or a network (`10.0.0.0/8`), for trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or network"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0..={max}"))?,
        };
        Ok(Self { address, prefix })
    }
}

impl Network {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 peers of a dual-stack listener arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client address is limited by: an IPv4 address, or the /64 network of an IPv6
/// one (a single host commonly holds a whole /64, so its addresses are one client).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the last address
/// in `X-Forwarded-For` that is not a trusted proxy itself, else `X-Real-IP`.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect::<Vec<_>>();
    // Proxies append, so walking from the right skips our own proxies and stops at the first
    // address a client could not have forged.
    if let Some(ip) = forwarded.iter().rev().find(|ip| !is_trusted(**ip)) {
        return *ip;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 3.0,
    };

    #[test]
    fn bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(RATE, start);
        assert!((0..3).all(|_| bucket.take(RATE, start)));
        assert!(!bucket.take(RATE, start));
        // 100 ms at 10/s is one token.
        assert!(bucket.take(RATE, start + Duration::from_millis(100)));
        assert!(!bucket.take(RATE, start + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(RATE, later)));
        assert!(!bucket.take(RATE, later));
    }

    #[test]
    fn socket_limit_allows_burst_then_refills() {
        let limit = SocketLimit::default();
        let rate = Rate {
            per_second: 2.0,
            burst: 3.0,
        };
        assert!((0..3).all(|_| limit.take(rate)));
        assert!(!limit.take(rate));
        // 2 per second: one token every 500 ms; a second would take 1,000, so a busy machine
        // may oversleep by 400 ms without failing the test.
        std::thread::sleep(Duration::from_millis(600));
        assert!(limit.take(rate));
        assert!(!limit.take(rate));
        let off = Rate {
            per_second: 0.0,
            burst: 0.0,
        };
        assert!((0..100).all(|_| limit.take(off)));
    }

    #[test]
    fn log_budget_lets_one_line_through_per_interval() {
        let budget = LogBudget::default();
        assert!(budget.admit());
        assert!((0..1000).all(|_| !budget.admit()));
        assert_eq!(budget.summary(), 1000);
        assert_eq!(budget.summary(), 0);
        assert!(budget.admit());
        assert!(!budget.admit());
        assert_eq!(budget.summary(), 1);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let off = Rate {
            per_second: 0.0,
            burst: 0.0,
        };
        let now = Instant::now();
        let mut bucket = Bucket::new(off, now);
        assert!((0..1000).all(|_| bucket.take(off, now)));
        let limits = AddressLimits::new(off);
        assert!((0..1000).all(|_| limits.take(&"10.0.0.1".parse::<IpAddr>().unwrap())));
    }

    #[test]
    fn addresses_have_their_own_buckets() {
        let limits = AddressLimits::new(RATE);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limits.take(&a)));
        assert!(!limits.take(&a));
        assert!(limits.take(&b));
        // A bucket still below its burst is kept by a sweep.
        limits.sweep();
        assert!(!limits.take(&a));
    }

    #[test]
    fn wait_says_when_a_token_returns_without_taking_one() {
        let limits = AddressLimits::new(RATE);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(limits.wait(&a), None, "an unseen key has its whole burst");
        assert!((0..3).all(|_| limits.take(&a)));
        // 10 per second: the next token is at most 100 ms away.
        let wait = limits.wait(&a).expect("the burst is spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limits.wait(&a).is_some(), "waiting takes nothing");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert_eq!(limits.wait(&a), None);
        assert!(limits.take(&a));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let key = |text: &str| address_key(text.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::7"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        // IPv4 addresses stay whole, whether plain or mapped by a dual-stack listener.
        assert_eq!(key("10.0.0.1"), key("::ffff:10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        let limits = AddressLimits::new(RATE);
        assert!((0..3).all(|_| limits.take(&key("2001:db8::1"))));
        assert!(!limits.take(&key("2001:db8::2")));
        assert!(limits.take(&key("2001:db8:0:1::1")));
    }

    #[test]
    fn address_counts_cap_each_address() {
        let counts = AddressCounts::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(counts.try_add(a) && counts.try_add(a));
        assert!(!counts.try_add(a), "a third one is over the cap");
        assert!(counts.try_add(b), "another address has its own count");
        counts.remove(a);
        assert_eq!(counts.count(a), 1);
        assert!(counts.try_add(a));
        counts.remove(a);
        counts.remove(a);
        counts.remove(b);
        assert!(
            counts.open.is_empty(),
            "addresses holding none are forgotten"
        );
    }

    #[test]
    fn networks() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Network = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nope".parse::<Network>().is_err());
    }

    #[test]
    fn client_address_from_trusted_proxies_only() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.2.3.4, 5.6.7.8, 10.0.0.7".parse().unwrap(),
        );
        headers.insert("x-real-ip", "9.9.9.9".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "5.5.5.5:4000".parse().unwrap();
        // The rightmost untrusted hop: 1.2.3.4 could be forged by the client, 5.6.7.8 cannot.
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        // A peer that is not a proxy cannot choose its address.
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &headers, &[]),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        headers.remove("x-forwarded-for");
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
        headers.remove("x-real-ip");
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }
}
