//! `set` rules: the user is a member of a Redis set the back-end keeps, e.g.
//! `<prefix>members:room:{id}`. Asked on every subscribe (SISMEMBER is cheap), so a member the
//! back-end removes cannot join again.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::channel::Refusal;

/// The Redis the sets live in, connected on first use.
pub struct Sets {
    client: redis::Client,
    prefix: String,
    conn: OnceCell<ConnectionManager>,
}

impl Sets {
    /// Sets read from `client`, their keys under `prefix`.
    pub fn new(client: redis::Client, prefix: String) -> Self {
        Self {
            client,
            prefix,
            conn: OnceCell::new(),
        }
    }

    /// Whether `user` is in the set named by `key` (with `{id}` replaced by the channel's id).
    pub async fn contains(
        &self,
        key: &str,
        id: Option<&str>,
        user: &str,
        timeout: Duration,
        label: &str,
    ) -> Result<bool, Refusal> {
        let Some(key) = expand(key, id) else {
            return Ok(false);
        };
        let key = format!("{}{key}", self.prefix);
        let ask = async {
            let conn = self
                .conn
                .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
                .await?;
            redis::cmd("SISMEMBER")
                .arg(&key)
                .arg(user)
                .query_async::<bool>(&mut conn.clone())
                .await
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(member)) => Ok(member),
            Ok(Err(e)) => {
                tracing::warn!(rule = label, error = %e, "membership set check failed");
                Err(Refusal::Unavailable("membership check failed".into()))
            }
            Err(_) => {
                tracing::warn!(rule = label, "membership set check timed out");
                Err(Refusal::Unavailable("membership check timed out".into()))
            }
        }
    }
}

/// The key with its `{…}` placeholder replaced by the channel's id; `None` when the id holds
/// the key separator `:`, which would let a channel name address another key (`room:1:admins`
/// would ask `members:room:1:admins`, a set the rule never meant).
pub fn expand(key: &str, id: Option<&str>) -> Option<String> {
    match (key.find('{'), key.find('}'), id) {
        (Some(_), Some(_), Some(id)) if id.contains(':') => None,
        (Some(open), Some(close), Some(id)) if open < close => {
            Some(format!("{}{id}{}", &key[..open], &key[close + 1..]))
        }
        _ => Some(key.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_the_channel_id() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            expand("members:room:{id}", Some("42")),
            some("members:room:42")
        );
        assert_eq!(expand("m:{room}:users", Some("7")), some("m:7:users"));
        assert_eq!(expand("admins", Some("7")), some("admins"));
        assert_eq!(expand("members:{id}", None), some("members:{id}"));
    }

    #[test]
    fn an_id_cannot_address_another_key() {
        // `room:{id}` matches `room:1:admins` with the id `1:admins`.
        assert_eq!(expand("members:room:{id}", Some("1:admins")), None);
        assert_eq!(expand("m:{id}:users", Some("x:y")), None);
        assert_eq!(
            expand("members:room:{id}", Some("a.b-c_d")),
            Some("members:room:a.b-c_d".to_owned())
        );
    }
}
