//! The `/notifications` namespace: who may connect (a token and an active user in the
//! application's table), the rooms a socket joins, what it is sent on connect, and its events
//! `mark.read` (or MechaMap's `notification_read`) and `mark.delivered`, plus the
//! acknowledgements of `notification:new`.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::store::{StoreError, User};
use super::{NAMESPACE, NEW_EVENT, READ_EVENT, parse_id, publish_read, room, user_room};
use crate::auth::Principal;
use crate::hub::Member;
use crate::metrics::Protocol;
use crate::node::Node;
use crate::protocol::socketio as codec;

/// A connected `/notifications` socket and the user it was accepted for, kept for its life.
#[derive(Debug)]
pub struct Socket {
    /// The hub member (codec [`crate::notifications::CODEC`]).
    pub member: Arc<Member>,
    /// The user as the user query returned them at connect.
    pub user: User,
}

/// What the client is told when the connection is refused.
pub type Refusal = &'static str;

use crate::socketio::{Session, send};

fn emit(session: &Session, event: &str, value: &Value) {
    crate::socketio::emit_in(session, NAMESPACE, event, value);
}

/// Loads and checks the user of a token before the socket is accepted.
pub async fn admit(node: &Node, principal: &Principal) -> Result<User, Refusal> {
    let Some(store) = &node.notifications else {
        return Err("notifications are not enabled on this server");
    };
    match store.user(&principal.user_id).await {
        Ok(Some(user)) if user.active => Ok(user),
        Ok(Some(_)) => Err("user is inactive"),
        Ok(None) => Err("user not found"),
        Err(_) => Err("service unavailable, try again"),
    }
}

/// Runs once the socket is accepted: joins its rooms, then sends every undelivered
/// notification, the unread count and `connection:success`, in that order.
pub async fn on_connect(node: &Node, session: &Session, socket: &Socket) {
    let Some(store) = &node.notifications else {
        return;
    };
    let user = &socket.user;
    let mut rooms = vec![user_room(&user.id)];
    if let Some(sector) = user.sector_id.as_deref().filter(|s| !s.is_empty()) {
        rooms.push(room(&format!("sector:{sector}")));
    }
    let admin = user
        .role
        .as_deref()
        .is_some_and(|role| store.settings().is_admin(role));
    if admin {
        rooms.push(room("admin"));
    }
    // Joined before the pending ones are read: one created meanwhile comes live, or pending,
    // or both (clients de-duplicate by id), never neither.
    for name in &rooms {
        if let Err(e) = node.join(&socket.member, name).await {
            tracing::warn!(room = %name, error = %e, "notification socket cannot join its room");
        }
    }
    let loaded = match store.pending(&user.id).await {
        Ok(pending) => store
            .unread_count(&user.id)
            .await
            .map(|count| (pending, count)),
        Err(e) => Err(e),
    };
    let (pending, unread) = match loaded {
        Ok(loaded) => loaded,
        Err(_) => {
            // Accepted, then the database went: leave the namespace so the client connects
            // again later and gets everything then.
            emit(
                session,
                "notification:error",
                &json!({"message": "service unavailable, try again"}),
            );
            send(session, |out| codec::write_disconnect(out, NAMESPACE));
            if let Some(socket) = session.sockets.take_notifications() {
                node.disconnect(&socket.member);
            }
            return;
        }
    };
    for notification in &pending {
        let Ok(data) = serde_json::to_string(notification).and_then(RawValue::from_string) else {
            continue;
        };
        send(session, |out| {
            codec::write_event_ack(out, NAMESPACE, Some(notification.id), NEW_EVENT, &data)
        });
    }
    emit(session, "notification:count", &json!({"count": unread}));
    emit(
        session,
        "connection:success",
        &json!({
            "userId": user.id,
            "userName": user.name,
            "timestamp": now_millis(),
            "unreadCount": unread,
        }),
    );
    node.metrics
        .messages_out
        .inc_by(Protocol::SocketIo, "notification", pending.len() as u64);
}

/// A client's acknowledgement of `notification:new`: its id is the notification's.
pub async fn on_ack(node: &Node, socket: &Socket, id: u64) {
    if let Some(store) = &node.notifications {
        // Not found (someone else's id) or a database failure: it stays pending and is sent
        // again on the next connect.
        let _ = store.delivered(&socket.user.id, id).await;
    }
}

/// Handles an event on `/notifications`.
pub async fn on_event(
    node: &Node,
    session: &Session,
    socket: &Socket,
    name: &str,
    args: &[&RawValue],
    ack: Option<u64>,
) {
    node.metrics
        .messages_in
        .inc(Protocol::SocketIo, "notification");
    let answer = |value: Value| {
        if let Some(id) = ack {
            send(session, |out| codec::write_ack(out, NAMESPACE, id, &value));
        }
    };
    let requested = args
        .first()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .and_then(|v| v.get("notificationId").and_then(parse_id));
    let (Some(store), Some(id)) = (&node.notifications, requested) else {
        let error = match name {
            "mark.read" | READ_EVENT | "mark.delivered" => "expected {notificationId}".to_owned(),
            _ => format!("unknown event `{name}`"),
        };
        return answer(json!({"success": false, "error": error}));
    };
    let user = socket.user.id.as_str();
    let result = match name {
        "mark.read" | READ_EVENT => store.read(user, id).await.map(|read| {
            let answer = json!({"success": true, "notificationId": id, "readAt": read.read_at});
            (answer, Some(read))
        }),
        "mark.delivered" => store
            .delivered(user, id)
            .await
            .map(|_| (json!({"success": true, "notificationId": id}), None)),
        _ => {
            let error = format!("unknown event `{name}`");
            return answer(json!({"success": false, "error": error}));
        }
    };
    match result {
        Ok((value, read)) => {
            answer(value);
            if let Some(read) = read.filter(|r| r.changed) {
                publish_read(node, user, id, &read, Some(&socket.member.id)).await;
            }
        }
        Err(e) => answer(failure(id, &e)),
    }
}

/// `notification_read {notificationId}` on the default namespace (the MechaMap flow): marks it
/// read and tells the user's other devices.
pub async fn read_from_root(
    node: &Node,
    session: &Session,
    socket: &Member,
    args: &[&RawValue],
    ack: Option<u64>,
) {
    let answer = |value: Value| match ack {
        Some(id) => send(session, |out| codec::write_ack(out, "/", id, &value)),
        None if value["success"] == false => send(session, |out| {
            codec::write_event_value(out, "/", "notification_error", &value)
        }),
        None => {}
    };
    let Some(store) = &node.notifications else {
        return answer(
            json!({"success": false, "error": "notifications are not enabled on this server"}),
        );
    };
    let requested = args
        .first()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .and_then(|v| v.get("notificationId").and_then(parse_id));
    let Some(id) = requested else {
        return answer(json!({"success": false, "error": "expected {notificationId}"}));
    };
    let user = &*socket.principal.user_id;
    match store.read(user, id).await {
        Ok(read) => {
            answer(json!({"success": true, "notificationId": id, "readAt": read.read_at}));
            if read.changed {
                publish_read(node, user, id, &read, Some(&socket.id)).await;
            }
        }
        Err(e) => answer(failure(id, &e)),
    }
}

fn failure(id: u64, error: &StoreError) -> Value {
    json!({"success": false, "notificationId": id, "error": error.to_string()})
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
