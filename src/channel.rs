//! Channel names: what is a valid name, what kind of channel it is, and why a subscription
//! was refused. Who may join which channel is the [`crate::policy`]'s business.
//!
//! Names follow Laravel's conventions: `private-…` and `presence-…` need authorization,
//! anything else is public. Names are limited in length and to a charset that cannot break
//! a Redis channel name or a glob pattern.

/// The kinds of channel, by name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anyone may subscribe.
    Public,
    /// `private-…`: only authorized users.
    Private,
    /// `presence-…`: authorized users, whose membership is shared.
    Presence,
}

/// The kind of a channel name.
pub fn kind(name: &str) -> Kind {
    if name.starts_with("private-") {
        Kind::Private
    } else if name.starts_with("presence-") {
        Kind::Presence
    } else {
        Kind::Public
    }
}

/// The channel every socket of a user joins at connect.
pub fn user_channel(user_id: &str) -> String {
    format!("private-user.{user_id}")
}

/// The prefix of the node's own bus channels (node-to-node commands, block-list changes). The
/// back-end may publish on them through Redis; no client and no HTTP API call may name one, or
/// a user could read that traffic and, by leaving, unsubscribe the node from it.
pub const RESERVED_PREFIX: &str = "switchboard.";

/// Checks a channel name; the error says what is wrong with it.
pub fn validate(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".into());
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "channel names starting with {RESERVED_PREFIX:?} are reserved"
        ));
    }
    if name.len() > max_len {
        return Err(format!("channel name is longer than {max_len} bytes"));
    }
    if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(format!(
            "channel name contains {bad:?}; allowed are letters, digits and - _ . : = @ , ; # + /"
        ));
    }
    Ok(())
}

/// Whether a channel keeps presence members: `presence-…`, and the chat rooms and groups of the
/// plain WebSocket protocol (`room:{id}`, `group:{id}`).
pub fn has_presence(name: &str) -> bool {
    kind(name) == Kind::Presence || name.starts_with("room:") || name.starts_with("group:")
}

/// Whether clients may whisper on a channel: only where every member was authorized.
pub fn allows_whispers(name: &str) -> bool {
    kind(name) != Kind::Public || has_presence(name)
}

/// Whether a hub channel is the node's own (a `/notifications` room, `notifications|…`):
/// no client can name one, so the API and webhooks do not show them.
pub fn is_internal(name: &str) -> bool {
    name.contains('|')
}

/// Whether a character may appear in a channel name.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.:=@,;#+/".contains(c)
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The name is not acceptable.
    #[error("{0}")]
    InvalidName(String),
    /// The user may not join this channel.
    #[error("forbidden")]
    Forbidden,
    /// The socket is at its subscription limit.
    #[error(transparent)]
    Limit(#[from] crate::hub::JoinError),
    /// The back-end that decides (auth callback, database) did not answer; never an allow.
    #[error("authorization unavailable: {0}")]
    Unavailable(String),
    /// The socket sends subscribe requests faster than its rate.
    #[error("too many subscribe requests, slow down")]
    RateLimited,
}

/// Why a whisper (client event) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WhisperRefusal {
    /// Whisper names start with `client-`.
    #[error("client events must be named client-*")]
    Name,
    /// Public channels take no whispers.
    #[error("client events are only allowed on private, presence, room and group channels")]
    Public,
    /// The sender is not in the channel.
    #[error("not subscribed to this channel")]
    NotSubscribed,
    /// The bus did not take it.
    #[error("bus unavailable, try again")]
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind("news"), Kind::Public);
        assert_eq!(kind("public.news"), Kind::Public);
        assert_eq!(kind("private-user.1"), Kind::Private);
        assert_eq!(kind("presence-chat.1"), Kind::Presence);
    }

    #[test]
    fn names() {
        assert!(validate("private-App.Models.User.1", 200).is_ok());
        assert!(validate("room:42", 200).is_ok());
        assert!(validate("", 200).is_err());
        assert!(validate("a b", 200).is_err());
        assert!(validate("news*", 200).is_err());
        assert!(validate("news\n", 200).is_err());
        assert!(validate(&"a".repeat(201), 200).is_err());
    }

    #[test]
    fn the_nodes_own_channels_cannot_be_named() {
        for internal in [
            crate::dispatch::CONTROL_CHANNEL,
            crate::blocks::CHANGED_CHANNEL,
        ] {
            assert!(internal.starts_with(RESERVED_PREFIX), "{internal}");
            assert!(validate(internal, 200).is_err(), "{internal}");
        }
        assert!(validate("switchboard.anything", 200).is_err());
        assert!(validate("public.switchboard.news", 200).is_ok());
    }
}
