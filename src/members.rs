//! Chat room and group membership that the back-end manages through the API: the member sets
//! the built-in `set` rules read (`<prefix>members:room:{id}`, `<prefix>members:group:{id}`) and,
//! beside them, each user's index (`<prefix>members:user:{userId}`: the channels the user is a
//! member of). A JSON socket is put in every channel of its user's index when it connects, so a
//! client that never subscribes (VELONX's) still hears its rooms and groups.

use std::time::Duration;

use deadpool_redis::Pool;

/// How long one membership read or write may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The channel kinds whose membership is kept here; the member set of `room:42` is
/// `members:room:42`, the key the policy's built-in `set` rules read.
pub const KINDS: [&str; 2] = ["room:", "group:"];

/// Membership could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// No Redis is configured: membership lives in Redis.
    #[error("memberships need SWITCHBOARD_REDIS_URL")]
    Disabled,
    /// Redis failed or was too slow.
    #[error("membership store unavailable: {0}")]
    Unavailable(String),
}

/// The member sets and the per-user index in Redis.
pub struct Memberships {
    redis: Option<Pool>,
    prefix: String,
}

/// Whether `channel` is a room or group whose membership is kept here: `room:{id}` or
/// `group:{id}` with a non-empty id without `:` (as the `set` rules require).
pub fn is_membership_channel(channel: &str) -> bool {
    KINDS.iter().any(|kind| {
        channel
            .strip_prefix(kind)
            .is_some_and(|id| !id.is_empty() && !id.contains(':'))
    })
}

impl Memberships {
    /// Memberships in Redis under `prefix`; `None` (a node without Redis) keeps none.
    pub fn new(redis: Option<Pool>, prefix: String) -> Self {
        Self { redis, prefix }
    }

    /// Whether memberships are kept (Redis is configured).
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Makes `user` a member of `channel` (a room or group): its member set and the user's
    /// index, in one transaction.
    pub async fn add(&self, channel: &str, user: &str) -> Result<(), MembershipError> {
        self.change(channel, user, "SADD").await
    }

    /// Removes `user` from `channel`'s member set and from the user's index.
    pub async fn remove(&self, channel: &str, user: &str) -> Result<(), MembershipError> {
        self.change(channel, user, "SREM").await
    }

    async fn change(&self, channel: &str, user: &str, op: &str) -> Result<(), MembershipError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd(op)
            .arg(format!("{}members:{channel}", self.prefix))
            .arg(user)
            .ignore()
            .cmd(op)
            .arg(self.index_key(user))
            .arg(channel)
            .ignore();
        self.query::<()>(&pipe).await
    }

    /// The rooms and groups in `user`'s index.
    pub async fn of_user(&self, user: &str) -> Result<Vec<String>, MembershipError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(self.index_key(user));
        let (channels,): (Vec<String>,) = self.query(&pipe).await?;
        Ok(channels
            .into_iter()
            .filter(|c| is_membership_channel(c))
            .collect())
    }

    /// Drops `channel` from `user`'s index (the member set no longer has the user: the back-end
    /// removed them with a plain `SREM`).
    pub async fn forget(&self, user: &str, channel: &str) -> Result<(), MembershipError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SREM")
            .arg(self.index_key(user))
            .arg(channel)
            .ignore();
        self.query::<()>(&pipe).await
    }

    fn index_key(&self, user: &str) -> String {
        format!("{}members:user:{user}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, MembershipError> {
        let pool = self.redis.as_ref().ok_or(MembershipError::Disabled)?;
        let run = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            pipe.query_async::<T>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(TIMEOUT, run).await {
            Ok(result) => result.map_err(MembershipError::Unavailable),
            Err(_) => Err(MembershipError::Unavailable("timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rooms_and_groups_with_plain_ids() {
        for yes in ["room:1", "group:abc-9"] {
            assert!(is_membership_channel(yes), "{yes}");
        }
        for no in [
            "room:",
            "room:1:admins",
            "presence-room.1",
            "news",
            "groups:1",
        ] {
            assert!(!is_membership_channel(no), "{no}");
        }
    }
}
