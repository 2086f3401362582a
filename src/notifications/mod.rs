//! Notifications: stored in MySQL/MariaDB or PostgreSQL, delivered at least once over the
//! `/notifications` Socket.IO namespace and the user's `private-user.{id}` channel, with
//! delivery and read state shared by every device of a user on every node.
//!
//! ```text
//! POST /api/notifications ──► store (one transaction) ──► bus, per recipient:
//!     private-user.{id}        notification.sent {notification, unread_count}   (namespace /)
//!     notifications|user:{id}  notification:new {…} (ack id = notification id)  (/notifications)
//!                              notification:count {count}
//! read (mark.read, notification_read) ──► bus, to the user's other devices:
//!     notifications|user:{id}  notification:read {notificationId, readAt}, notification:count
//!     private-user.{id}        notification.read {…, unread_count}, notification_read {notificationId}
//! ```
//!
//! The rooms of the `/notifications` namespace are hub channels whose names (`notifications|…`)
//! no client can subscribe to (`|` is not a channel-name character), so they travel the one
//! delivery path (bus → node → hub → codec) without being reachable from the default namespace.
//! A `notification:new` asks for an acknowledgement whose id is the notification's id: the
//! same bytes serve every device, and the acknowledgement names what it acknowledges.
//!
//! - [`migrate`]: the schema, applied by `switchboard migrate` or `--migrate`.
//! - [`store`]: every query.
//! - [`namespace`]: the `/notifications` sockets.

pub mod migrate;
pub mod namespace;
pub mod rooms;
pub mod store;

pub use rooms::{room, user_room};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::channel;
use crate::node::Node;
use store::Notification;

/// The Socket.IO namespace of notification clients.
pub const NAMESPACE: &str = "/notifications";
/// The event that asks a device to acknowledge a notification.
pub const NEW_EVENT: &str = "notification:new";

/// The hub channel of a room the HTTP API names in `/notifications`: `user:{id}`,
/// `sector:{id}` or `admin`, the rooms its sockets join. Any other name is refused, since no
/// socket is in it and the call would reach nobody unnoticed; so is an internal name, as the
/// id is limited to channel-name characters (no `|`).
pub fn api_room(name: &str, max_len: usize) -> Result<String, String> {
    let id_ok = |id: &str| !id.is_empty() && id.chars().all(channel::is_name_char);
    let known = name == "admin"
        || ["user:", "sector:"]
            .iter()
            .any(|prefix| name.strip_prefix(prefix).is_some_and(id_ok));
    if !known {
        return Err(format!(
            "not a room of {NAMESPACE}: expected user:{{id}}, sector:{{id}} or admin"
        ));
    }
    let room = room(name);
    if room.len() > max_len {
        return Err(format!("longer than {max_len} bytes"));
    }
    Ok(room)
}

/// Whether an event is one `/notifications` sends itself (`notification:…`, `connection:…`):
/// clients read them as stored notifications, counts and read marks, so only the node says them.
pub fn is_own_event(event: &str) -> bool {
    event.starts_with("notification:") || event.starts_with("connection:")
}

/// How the hub encodes broadcasts for `/notifications` sockets.
pub static CODEC: crate::hub::Namespace = crate::hub::Namespace {
    name: NAMESPACE,
    ack_id,
};

/// The acknowledgement id a broadcast to `/notifications` sockets asks for: the id of a
/// `notification:new`, none for other events.
pub fn ack_id(event: &str, data: &RawValue) -> Option<u64> {
    #[derive(Deserialize)]
    struct Id {
        id: u64,
    }
    if event != NEW_EVENT {
        return None;
    }
    serde_json::from_str::<Id>(data.get()).ok().map(|n| n.id)
}

/// A notification id as clients send it: a number or a string of digits.
pub fn parse_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Publishes an event to a channel; a bus failure is counted and logged by [`Node::publish`],
/// and the notification stays pending for the next connect.
async fn publish(node: &Node, channel: &str, event: &str, data: &Value, except: Option<&str>) {
    let Ok(data) = RawValue::from_string(data.to_string()) else {
        return;
    };
    let _ = node.publish(channel, event, &data, except).await;
}

/// Tells every device of the recipient, on every node, about a new notification.
pub async fn publish_new(node: &Node, notification: &Notification, unread: Option<u64>) {
    let user = notification.user_id.as_str();
    let Ok(value) = serde_json::to_value(notification) else {
        return;
    };
    publish(
        node,
        &channel::user_channel(user),
        "notification.sent",
        &json!({"notification": value, "unread_count": unread}),
        None,
    )
    .await;
    let room = user_room(user);
    publish(node, &room, NEW_EVENT, &value, None).await;
    if let Some(count) = unread {
        publish(
            node,
            &room,
            "notification:count",
            &json!({"count": count}),
            None,
        )
        .await;
    }
}

/// The event a MechaMap client emits to mark a notification read (on `/` or `/notifications`),
/// and receives, with `{notificationId}` as its one argument, when another device read one.
pub const READ_EVENT: &str = "notification_read";

/// Tells every device of the user, on every node, that a notification was read: all of them
/// `notification:read`, the others (not the socket `reader`, which read it) `notification.read`
/// and `notification_read`.
pub async fn publish_read(
    node: &Node,
    user: &str,
    id: u64,
    read: &store::Read,
    reader: Option<&str>,
) {
    let room = user_room(user);
    let own = channel::user_channel(user);
    let read_at = json!({"notificationId": id, "readAt": read.read_at});
    publish(node, &room, "notification:read", &read_at, None).await;
    // Unknown when the application's read query marked its own table.
    if let Some(count) = read.unread {
        publish(
            node,
            &room,
            "notification:count",
            &json!({"count": count}),
            None,
        )
        .await;
    }
    let echo = json!({"notificationId": id, "readAt": read.read_at, "unread_count": read.unread});
    publish(node, &own, "notification.read", &echo, reader).await;
    // The name the client emitted, `{notificationId}` its data: the one argument on
    // `/notifications`, for a plain socket.io client on `/` (broadcast arguments `data`) and
    // for an Echo listener.
    let mechamap = json!({"notificationId": id});
    for channel in [&room, &own] {
        publish(node, channel, READ_EVENT, &mechamap, reader).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("json")
    }

    #[test]
    fn only_new_notifications_ask_for_an_ack_by_their_id() {
        assert_eq!(
            ack_id(NEW_EVENT, &raw(r#"{"id":42,"title":"t"}"#)),
            Some(42)
        );
        assert_eq!(ack_id("notification:count", &raw(r#"{"id":42}"#)), None);
        assert_eq!(ack_id(NEW_EVENT, &raw(r#"{"title":"no id"}"#)), None);
        assert_eq!(ack_id(NEW_EVENT, &raw(r#"{"id":-1}"#)), None);
    }

    #[test]
    fn ids_from_clients() {
        assert_eq!(parse_id(&serde_json::json!(7)), Some(7));
        assert_eq!(parse_id(&serde_json::json!(" 8 ")), Some(8));
        assert_eq!(parse_id(&serde_json::json!("x")), None);
        assert_eq!(parse_id(&serde_json::json!(-3)), None);
        assert_eq!(parse_id(&serde_json::json!(null)), None);
    }

    #[test]
    fn the_api_names_the_rooms_sockets_join_and_no_other() {
        for (name, room) in [
            ("admin", "notifications|admin"),
            ("sector:7", "notifications|sector:7"),
            ("user:42", "notifications|user:42"),
            ("user:a.b@c", "notifications|user:a.b@c"),
        ] {
            assert_eq!(api_room(name, 200).as_deref(), Ok(room), "{name}");
        }
        for name in [
            "",
            "admins",
            "sector:",
            "user:",
            "sector",
            "team:1",
            "notifications|admin",
            "sector:7|x",
            "user:1 2",
            "private-user.1",
        ] {
            assert!(api_room(name, 200).is_err(), "{name}");
        }
        let long = format!("user:{}", "1".repeat(200));
        assert!(api_room(&long, 200).is_err());
    }

    #[test]
    fn the_namespaces_own_events() {
        for event in [
            NEW_EVENT,
            "notification:count",
            "notification:read",
            "connection:success",
        ] {
            assert!(is_own_event(event), "{event}");
        }
        for event in ["department.broadcast", "system.alert", "notification.sent"] {
            assert!(!is_own_event(event), "{event}");
        }
    }

    #[test]
    fn rooms_cannot_be_named_by_clients() {
        assert_eq!(user_room("5"), "notifications|user:5");
        // `|` is not a channel-name character: no client can subscribe to these.
        assert!(crate::channel::validate(&user_room("5"), 200).is_err());
    }
}
