//! Answers of `callback` and `sql` rules, per (user, channel), for a while: a client that
//! re-subscribes on every reconnect should not cost the application a request each time.
//!
//! Bounded in total and per user: a user's new answer beyond their share replaces their own
//! oldest one, so one user subscribing to junk channel names evicts only their own answers,
//! never another user's. When the whole cache is full of live answers a new user's answer is
//! simply not cached. Outages are never cached.
//!
//! Every answer lives for the same TTL, so the order answers are stored is the order they
//! expire: a queue of them drops the expired ones from its front, and no store ever scans the
//! whole map (our own map and not a cache crate, because the per-user share needs the answers
//! grouped by user anyway).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Grant;
use crate::channel::Refusal;

/// Most answers one user holds, however large the cache (the node's default channel cap per
/// socket is 100; an honest user rarely asks about more channels within a TTL).
const PER_USER_MAX: usize = 256;

/// Cached authorization answers.
pub struct Cache {
    ttl: Duration,
    capacity: usize,
    /// Most answers one user holds: a quarter of the cache, at most [`PER_USER_MAX`].
    per_user: usize,
    // A std Mutex: held only for a few map operations, never across an await.
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// User → channel → answer.
    users: HashMap<Box<str>, HashMap<Box<str>, Entry>>,
    /// Answers held, over all users.
    len: usize,
    /// (expiry, user, channel) of every store, oldest first; an item whose answer was replaced
    /// or evicted since is stale and skipped.
    expiry: VecDeque<(Instant, Box<str>, Box<str>)>,
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
            per_user: (capacity / 4).clamp(1, PER_USER_MAX),
            entries: Mutex::new(Entries::default()),
        })
    }

    /// The answer stored for `user` and `channel`, unless it expired.
    pub fn get(&self, user: &str, channel: &str, now: Instant) -> Option<Result<Grant, Refusal>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.drop_expired(now);
        let entry = entries.users.get(user)?.get(channel)?;
        (entry.expires > now).then(|| entry.answer.clone())
    }

    /// Stores an allow or a deny; an `Unavailable` answer is not stored.
    pub fn put(&self, user: &str, channel: &str, answer: &Result<Grant, Refusal>, now: Instant) {
        if matches!(answer, Err(Refusal::Unavailable(_))) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.drop_expired(now);
        let held = entries.users.get(user);
        let present = held.is_some_and(|own| own.contains_key(channel));
        if !present {
            if held.map_or(0, HashMap::len) >= self.per_user {
                entries.evict_oldest_of(user);
            } else if entries.len >= self.capacity {
                return;
            }
        }
        let expires = now + self.ttl;
        let own = entries.users.entry(user.into()).or_default();
        let replaced = own.insert(
            channel.into(),
            Entry {
                expires,
                answer: answer.clone(),
            },
        );
        if replaced.is_none() {
            entries.len += 1;
        }
        entries
            .expiry
            .push_back((expires, user.into(), channel.into()));
        // Stale items pile up only through replacements and evictions; drop them now and then,
        // at a cost spread over at least `capacity` stores.
        if entries.expiry.len() > 2 * self.capacity {
            entries.drop_stale();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len
    }
}

impl Entries {
    /// Removes the answers that expired by `now`, from the front of the queue.
    fn drop_expired(&mut self, now: Instant) {
        while let Some((expires, _, _)) = self.expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, user, channel)) = self.expiry.pop_front() {
                self.remove_if(&user, &channel, |entry| entry.expires == expires);
            }
        }
    }

    /// Removes `user`'s answer that expires first (the per-user share is small, so the scan is short).
    fn evict_oldest_of(&mut self, user: &str) {
        let oldest = self.users.get(user).and_then(|own| {
            own.iter()
                .min_by_key(|(_, entry)| entry.expires)
                .map(|(channel, _)| channel.clone())
        });
        if let Some(channel) = oldest {
            self.remove_if(user, &channel, |_| true);
        }
    }

    /// Removes `user`'s answer for `channel` when `which` says so; forgets a user left with none.
    fn remove_if(&mut self, user: &str, channel: &str, which: impl FnOnce(&Entry) -> bool) {
        let Some(own) = self.users.get_mut(user) else {
            return;
        };
        if own.get(channel).is_some_and(which) {
            own.remove(channel);
            self.len -= 1;
            if own.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Drops the queue items whose answer was replaced or evicted.
    fn drop_stale(&mut self) {
        let users = &self.users;
        self.expiry.retain(|(expires, user, channel)| {
            users
                .get(user)
                .and_then(|own| own.get(channel))
                .is_some_and(|entry| entry.expires == *expires)
        });
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
        cache.put("1", "a", &allow(), t0);
        cache.put("1", "b", &Err(Refusal::Forbidden), t0 + SECOND);
        assert_eq!(cache.get("1", "a", t0 + SECOND), Some(allow()));
        assert_eq!(
            cache.get("1", "b", t0 + SECOND),
            Some(Err(Refusal::Forbidden))
        );
        assert_eq!(cache.get("2", "a", t0), None, "per user");
        assert_eq!(cache.get("1", "a", t0 + 60 * SECOND), None);
        assert_eq!(cache.len(), 1, "the expired entry was dropped");
    }

    #[test]
    fn outages_are_not_cached() {
        let cache = Cache::new(60 * SECOND, 10).expect("enabled");
        let t0 = Instant::now();
        cache.put("1", "a", &Err(Refusal::Unavailable("db".into())), t0);
        assert_eq!(cache.get("1", "a", t0), None);
    }

    #[test]
    fn bounded() {
        let cache = Cache::new(10 * SECOND, 2).expect("enabled");
        let t0 = Instant::now();
        cache.put("1", "a", &allow(), t0);
        cache.put("2", "a", &allow(), t0 + SECOND);
        // Full of live entries: a new user's answer is not cached.
        cache.put("3", "a", &allow(), t0 + 2 * SECOND);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("3", "a", t0 + 2 * SECOND), None);
        // Replacing a present key is always possible.
        cache.put("1", "a", &Err(Refusal::Forbidden), t0 + 3 * SECOND);
        assert_eq!(
            cache.get("1", "a", t0 + 3 * SECOND),
            Some(Err(Refusal::Forbidden))
        );
        // Once user 2's answer (the oldest now) expired, there is room.
        cache.put("3", "a", &allow(), t0 + 11 * SECOND);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("2", "a", t0 + 11 * SECOND), None);
        assert_eq!(cache.get("3", "a", t0 + 11 * SECOND), Some(allow()));
    }

    #[test]
    fn one_users_junk_evicts_only_their_own_answers() {
        let cache = Cache::new(60 * SECOND, 8).expect("enabled");
        assert_eq!(cache.per_user, 2);
        let t0 = Instant::now();
        cache.put("7", "private-orders.1", &allow(), t0);
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(i);
            cache.put(
                "6",
                &format!("private-junk.{i}"),
                &Err(Refusal::Forbidden),
                at,
            );
        }
        let t1 = t0 + SECOND;
        assert_eq!(cache.len(), 3, "user 6 holds their share only");
        assert_eq!(cache.get("7", "private-orders.1", t1), Some(allow()));
        cache.put("8", "private-orders.1", &allow(), t1);
        assert_eq!(cache.get("8", "private-orders.1", t1), Some(allow()));
        // The junk user's newest answers are the ones kept.
        assert!(cache.get("6", "private-junk.999", t1).is_some());
        assert_eq!(cache.get("6", "private-junk.0", t1), None);
        // Evictions leave stale queue items; they are dropped before they outnumber the cache.
        let queued = cache
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expiry
            .len();
        assert!(queued <= 2 * 8 + 1, "{queued} queued");
    }
}
