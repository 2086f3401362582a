//! Answers of `callback` and `sql` rules, per (user, channel), for a while: a client that
//! re-subscribes on every reconnect should not cost the application a request each time.
//!
//! Bounded: when full, expired entries are dropped, and if it is still full the new answer is
//! simply not cached, so no client can grow the map without bound. Outages are never cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Grant;
use crate::channel::Refusal;

/// Cached authorization answers.
pub struct Cache {
    ttl: Duration,
    capacity: usize,
    // A std Mutex: held only for a map operation, never across an await.
    entries: Mutex<Entries>,
}

struct Entries {
    map: HashMap<String, Entry>,
    /// No entry expires before this, so sweeping a full map earlier would find nothing.
    next_sweep: Instant,
}

struct Entry {
    expires: Instant,
    answer: Result<Grant, Refusal>,
}

impl Cache {
    /// A cache keeping answers for `ttl`, at most `capacity` of them; `None` when either is 0.
    pub fn new(ttl: Duration, capacity: usize) -> Option<Self> {
        (!ttl.is_zero() && capacity > 0).then(|| Self {
            ttl,
            capacity,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        })
    }

    /// The key of a user's answer for a channel (neither contains NUL: both are validated).
    pub fn key(user_id: &str, channel: &str) -> String {
        format!("{user_id}\0{channel}")
    }

    /// The answer stored for `key`, unless it expired.
    pub fn get(&self, key: &str, now: Instant) -> Option<Result<Grant, Refusal>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.map.get(key) {
            Some(entry) if entry.expires > now => Some(entry.answer.clone()),
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores an allow or a deny; an `Unavailable` answer is not stored.
    pub fn put(&self, key: String, answer: &Result<Grant, Refusal>, now: Instant) {
        if matches!(answer, Err(Refusal::Unavailable(_))) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.map.len() >= self.capacity && !entries.map.contains_key(&key) {
            if now >= entries.next_sweep {
                let mut earliest = None::<Instant>;
                entries.map.retain(|_, entry| {
                    let live = entry.expires > now;
                    if live {
                        earliest = Some(earliest.map_or(entry.expires, |e| e.min(entry.expires)));
                    }
                    live
                });
                entries.next_sweep = earliest.unwrap_or(now);
            }
            if entries.map.len() >= self.capacity {
                return;
            }
        }
        entries.map.insert(
            key,
            Entry {
                expires: now + self.ttl,
                answer: answer.clone(),
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECOND: Duration = Duration::from_secs(1);

    fn allow() -> Result<Grant, Refusal> {
        Ok(Grant {
            member: Some(json!({"user_id": 1, "user_info": {}})),
        })
    }

    #[test]
    fn disabled_by_zero() {
        assert!(Cache::new(Duration::ZERO, 10).is_none());
        assert!(Cache::new(SECOND, 0).is_none());
    }

    #[test]
    fn answers_expire() {
        let cache = Cache::new(60 * SECOND, 10).expect("enabled");
        let t0 = Instant::now();
        cache.put(Cache::key("1", "a"), &allow(), t0);
        cache.put(Cache::key("1", "b"), &Err(Refusal::Forbidden), t0);
        assert_eq!(cache.get(&Cache::key("1", "a"), t0 + SECOND), Some(allow()));
        assert_eq!(
            cache.get(&Cache::key("1", "b"), t0 + SECOND),
            Some(Err(Refusal::Forbidden))
        );
        assert_eq!(cache.get(&Cache::key("2", "a"), t0), None, "per user");
        assert_eq!(cache.get(&Cache::key("1", "a"), t0 + 60 * SECOND), None);
        assert_eq!(cache.len(), 1, "the expired entry read was dropped");
    }

    #[test]
    fn outages_are_not_cached() {
        let cache = Cache::new(60 * SECOND, 10).expect("enabled");
        let t0 = Instant::now();
        cache.put(
            Cache::key("1", "a"),
            &Err(Refusal::Unavailable("db".into())),
            t0,
        );
        assert_eq!(cache.get(&Cache::key("1", "a"), t0), None);
    }

    #[test]
    fn bounded() {
        let cache = Cache::new(10 * SECOND, 2).expect("enabled");
        let t0 = Instant::now();
        cache.put(Cache::key("1", "a"), &allow(), t0);
        cache.put(Cache::key("1", "b"), &allow(), t0 + SECOND);
        // Full of live entries: the new answer is not cached.
        cache.put(Cache::key("1", "c"), &allow(), t0 + 2 * SECOND);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&Cache::key("1", "c"), t0 + 2 * SECOND), None);
        // Replacing a present key is always possible.
        cache.put(
            Cache::key("1", "a"),
            &Err(Refusal::Forbidden),
            t0 + 3 * SECOND,
        );
        assert_eq!(
            cache.get(&Cache::key("1", "a"), t0 + 3 * SECOND),
            Some(Err(Refusal::Forbidden))
        );
        // Once `b` (the oldest now) expired, the sweep makes room.
        cache.put(Cache::key("1", "c"), &allow(), t0 + 11 * SECOND);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&Cache::key("1", "b"), t0 + 11 * SECOND), None);
        assert_eq!(
            cache.get(&Cache::key("1", "c"), t0 + 11 * SECOND),
            Some(allow())
        );
    }
}
