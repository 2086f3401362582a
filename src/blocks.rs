//! Block lists for chat: a user never receives chat messages, whispers or typing from someone
//! they blocked, nor from someone who blocked them.
//!
//! The back-end keeps each user's list as the Redis set `<prefix>blocks:{userId}` (the ids that
//! user blocked) and, when a list changes, publishes `{"event": "blocks.changed", "data":
//! {"userId": …}}` on the channel `<prefix>switchboard.blocks`. Each node caches the lists of
//! its connected chat users and of recent authors, reloads a list when told it changed, and
//! checks a message against the cache: no Redis round trip per recipient per message.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use deadpool_redis::Pool;

/// The bus channel on which the back-end announces a changed block list.
pub const CHANGED_CHANNEL: &str = "switchboard.blocks";

/// The back-end's broadcast events filtered by block lists: they carry an `authorId`. What
/// clients send each other is filtered too, by the envelope's `author`.
pub const FILTERED_EVENTS: [&str; 2] = ["CHAT_MESSAGE", "MESSAGE_EDIT"];

/// How long loading one list may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Cached block lists, per user id.
pub struct Blocks {
    redis: Option<Pool>,
    prefix: String,
    lists: DashMap<Arc<str>, Arc<HashSet<String>>>,
}

impl Blocks {
    /// Block lists read from Redis; `None` (single node without Redis) turns filtering off.
    pub fn new(redis: Option<Pool>, prefix: String) -> Self {
        Self {
            redis,
            prefix,
            lists: DashMap::new(),
        }
    }

    /// Whether block lists are in use.
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Loads `user`'s list unless it is cached.
    pub async fn ensure(&self, user: &str) {
        if self.enabled() && !self.lists.contains_key(user) {
            self.reload(user).await;
        }
    }

    /// Whether `user`'s list is cached (a user who blocked no one has an empty one).
    pub fn is_cached(&self, user: &str) -> bool {
        self.lists.contains_key(user)
    }

    /// Reads `user`'s list from Redis; on failure the cached list (if any) stays.
    pub async fn reload(&self, user: &str) {
        let Some(pool) = &self.redis else {
            return;
        };
        let key = format!("{}blocks:{user}", self.prefix);
        let read = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async::<HashSet<String>>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(TIMEOUT, read).await {
            Ok(Ok(list)) => {
                self.lists.insert(user.into(), Arc::new(list));
            }
            Ok(Err(e)) => tracing::warn!(user, error = %e, "could not load a block list"),
            Err(_) => tracing::warn!(user, "loading a block list timed out"),
        }
    }

    /// Reloads a list the back-end says changed, if this node uses it.
    pub async fn changed(&self, user: &str) {
        if self.lists.contains_key(user) {
            self.reload(user).await;
        }
    }

    /// Drops a list this node no longer needs (its user left the node).
    pub fn forget(&self, user: &str) {
        self.lists.remove(user);
    }

    /// Whether either user blocked the other, as far as the cache knows.
    pub fn between(&self, a: &str, b: &str) -> bool {
        let blocked =
            |who: &str, whom: &str| self.lists.get(who).is_some_and(|list| list.contains(whom));
        blocked(a, b) || blocked(b, a)
    }
}

/// The author of a chat message: `authorId` of its data, as a string.
pub fn author(data: &serde_json::value::RawValue) -> Option<String> {
    crate::protocol::id_field(data, "authorId")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn authors_as_strings() {
        let raw = |t: &str| RawValue::from_string(t.to_owned()).expect("json");
        assert_eq!(
            author(&raw(r#"{"authorId":7,"content":"x"}"#)).as_deref(),
            Some("7")
        );
        assert_eq!(
            author(&raw(r#"{"authorId":"u-1"}"#)).as_deref(),
            Some("u-1")
        );
        assert_eq!(author(&raw(r#"{"content":"x"}"#)), None);
        assert_eq!(author(&raw(r#"[1]"#)), None);
    }

    #[test]
    fn blocking_goes_both_ways() {
        let blocks = Blocks::new(None, String::new());
        blocks
            .lists
            .insert("a".into(), Arc::new(HashSet::from(["b".to_owned()])));
        assert!(blocks.between("a", "b"));
        assert!(blocks.between("b", "a"));
        assert!(!blocks.between("a", "c"));
        blocks.forget("a");
        assert!(!blocks.between("b", "a"));
    }
}
