//! The Socket.IO layer: namespace connects with JWT authentication, and the events of
//! Laravel Echo's socket.io conventions (`subscribe`, `unsubscribe`, `client event`, `ping`).
//!
//! It sits on an Engine.IO [`Session`]; each connected namespace (`/`, and `/notifications`,
//! whose events live in [`crate::notifications::namespace`]) is a socket, which is a hub
//! [`Member`]. Answers are queued on the session's outbox like any broadcast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::auth::bearer;
use crate::channel::{self, Refusal};
use crate::engine::Session;
use crate::hub::{Codec, Member};
use crate::metrics::Protocol;
use crate::node::Node;
use crate::notifications::namespace::{self as notifications, Socket as NotificationSocket};
use crate::notifications::store::User;
use crate::outbox::{CloseReason, Frame};
use crate::protocol::engineio;
use crate::protocol::socketio::{self as codec, Kind as PacketKind, Packet};

/// The default namespace.
pub const ROOT: &str = "/";

/// The Socket.IO state of one Engine.IO session: a slot per namespace it may connect.
#[derive(Debug, Default)]
pub struct Sockets {
    root: Mutex<Option<Arc<Member>>>,
    notifications: Mutex<Option<Arc<NotificationSocket>>>,
    ever_connected: AtomicBool,
    /// Binary attachments still to discard after a refused binary packet.
    discard: AtomicUsize,
}

impl Sockets {
    fn root(&self) -> Option<Arc<Member>> {
        self.root.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_root(&self, socket: Option<Arc<Member>>) -> Option<Arc<Member>> {
        std::mem::replace(
            &mut *self.root.lock().unwrap_or_else(|p| p.into_inner()),
            socket,
        )
    }

    fn notifications(&self) -> Option<Arc<NotificationSocket>> {
        self.notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_notifications(
        &self,
        socket: Option<Arc<NotificationSocket>>,
    ) -> Option<Arc<NotificationSocket>> {
        std::mem::replace(
            &mut *self.notifications.lock().unwrap_or_else(|p| p.into_inner()),
            socket,
        )
    }

    /// Empties the `/notifications` slot, returning its socket.
    pub fn take_notifications(&self) -> Option<Arc<NotificationSocket>> {
        self.set_notifications(None)
    }

    /// Whether any namespace was ever connected (the connect timeout stops then).
    pub fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Acquire)
    }
}

/// A random id: 120 bits, URL-safe.
pub fn random_id() -> Result<Arc<str>, getrandom::Error> {
    let mut bytes = [0u8; 15];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(bytes)
        .into())
}

/// Queues a Socket.IO packet built by `write`.
pub(crate) fn send(session: &Session, write: impl FnOnce(&mut String)) {
    let mut out = engineio::message(64);
    write(&mut out);
    session.send(Frame::from(out));
}

/// Emits `event` with one argument on the root namespace.
fn emit(session: &Session, event: &str, value: &Value) {
    emit_in(session, ROOT, event, value);
}

/// Emits `event` with one argument on `namespace`.
pub(crate) fn emit_in(session: &Session, namespace: &str, event: &str, value: &Value) {
    send(session, |out| {
        codec::write_event_value(out, namespace, event, value)
    });
}

/// Answers a request: the acknowledgement when the client asked for one, else the event.
fn answer(session: &Session, ack: Option<u64>, event: &str, value: &Value) {
    match ack {
        Some(id) => send(session, |out| codec::write_ack(out, ROOT, id, value)),
        None => emit(session, event, value),
    }
}

/// Handles one Socket.IO packet; an error closes the session.
pub async fn on_message(node: &Node, session: &Session, text: &str) -> Result<(), CloseReason> {
    if session.sockets.discard.load(Ordering::Acquire) > 0 {
        return protocol_error(
            node,
            session,
            "text packet while binary attachments were expected",
        );
    }
    let packet = match codec::decode(text) {
        Ok(packet) => packet,
        Err(e) => return protocol_error(node, session, &e.to_string()),
    };
    match packet.kind {
        PacketKind::Connect => {
            let span = tracing::debug_span!(
                "socketio.connect",
                switchboard.namespace = packet.namespace,
                enduser.id = tracing::field::Empty,
                switchboard.refusal = tracing::field::Empty,
            );
            connect(node, session, &packet).instrument(span).await;
            Ok(())
        }
        PacketKind::Disconnect => {
            if packet.namespace == ROOT
                && let Some(socket) = session.sockets.set_root(None)
            {
                node.disconnect(&socket);
            }
            if packet.namespace == crate::notifications::NAMESPACE
                && let Some(socket) = session.sockets.take_notifications()
            {
                node.disconnect(&socket.member);
            }
            Ok(())
        }
        PacketKind::Event => {
            // Socket.IO ignores packets for namespaces the client has not joined.
            if packet.namespace == crate::notifications::NAMESPACE {
                let Some(socket) = session.sockets.notifications() else {
                    return Ok(());
                };
                let event = match packet.event() {
                    Ok(event) => event,
                    Err(e) => return protocol_error(node, session, &e.to_string()),
                };
                notifications::on_event(
                    node,
                    session,
                    &socket,
                    &event.name,
                    &event.args,
                    packet.ack,
                )
                .await;
                return Ok(());
            }
            let Some(socket) = session.sockets.root().filter(|_| packet.namespace == ROOT) else {
                return Ok(());
            };
            let event = match packet.event() {
                Ok(event) => event,
                Err(e) => return protocol_error(node, session, &e.to_string()),
            };
            on_event(node, session, &socket, &event.name, &event.args, packet.ack).await;
            Ok(())
        }
        // Only `/notifications` asks for acknowledgements: of `notification:new`, whose ack id
        // is the notification's id.
        PacketKind::Ack => {
            if packet.namespace == crate::notifications::NAMESPACE
                && let (Some(socket), Some(id)) = (session.sockets.notifications(), packet.ack)
            {
                notifications::on_ack(node, &socket, id).await;
            }
            Ok(())
        }
        PacketKind::BinaryEvent | PacketKind::BinaryAck => {
            node.metrics
                .errors
                .with_label_values(&["binary_refused"])
                .inc();
            session
                .sockets
                .discard
                .store(packet.attachments, Ordering::Release);
            if let (PacketKind::BinaryEvent, Some(id)) = (packet.kind, packet.ack) {
                let error = json!({"error": "binary attachments are not supported"});
                send(session, |out| {
                    codec::write_ack(out, packet.namespace, id, &error)
                });
            }
            Ok(())
        }
        PacketKind::ConnectError => {
            protocol_error(node, session, "clients may not send CONNECT_ERROR")
        }
    }
}

/// Discards the attachments of a refused binary packet; any other binary is a protocol error.
pub fn on_binary(node: &Node, session: &Session, _data: &[u8]) -> Result<(), CloseReason> {
    let discard = &session.sockets.discard;
    if discard
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        return Ok(());
    }
    protocol_error(node, session, "unexpected binary message")
}

fn protocol_error(node: &Node, session: &Session, problem: &str) -> Result<(), CloseReason> {
    node.metrics.errors.with_label_values(&["protocol"]).inc();
    tracing::info!(sid = %session.sid, remote = %session.handshake.remote, problem, "closing session: malformed Socket.IO packet");
    Err(CloseReason::ProtocolError)
}

/// The handshake auth object: `{token}`, or Laravel Echo's `{headers: {Authorization}}`.
#[derive(Debug, Default, Deserialize)]
struct ConnectAuth {
    token: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

/// The token of a connect: `auth.token`, else `auth.headers.Authorization`, else the handshake's.
fn find_token(auth: &ConnectAuth, session: &Session) -> Option<String> {
    auth.token
        .as_deref()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            auth.headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, value)| bearer(value))
        })
        .map(str::to_owned)
        .or_else(|| session.handshake.token())
}

/// The namespaces a client may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Root,
    Notifications,
}

async fn connect(node: &Node, session: &Session, packet: &Packet<'_>) {
    let namespace = packet.namespace;
    let refuse = |message: &str| {
        tracing::Span::current().record("switchboard.refusal", message);
        send(session, |out| {
            codec::write_connect_error(out, namespace, message)
        });
    };
    let which = match namespace {
        ROOT => Namespace::Root,
        crate::notifications::NAMESPACE => Namespace::Notifications,
        _ => return refuse("Invalid namespace"),
    };
    let connected = match which {
        Namespace::Root => session.sockets.root().is_some(),
        Namespace::Notifications => session.sockets.notifications().is_some(),
    };
    if connected {
        return;
    }
    if node.is_draining() {
        return refuse("server shutting down");
    }
    let auth: ConnectAuth = match packet.data.map(serde_json::from_str).transpose() {
        Ok(auth) => auth.unwrap_or_default(),
        Err(_) => {
            node.metrics
                .auth_failures
                .with_label_values(&["malformed"])
                .inc();
            return refuse("invalid auth payload");
        }
    };
    let principal = match node
        .config
        .jwt
        .verify_found(find_token(&auth, session))
        .await
    {
        Ok(principal) => {
            tracing::Span::current().record("enduser.id", &*principal.user_id);
            principal
        }
        Err(e) => {
            node.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            tracing::info!(sid = %session.sid, remote = %session.handshake.remote, reason = e.reason(), "connection refused: bad token");
            return refuse(&e.to_string());
        }
    };
    // The user of a `/notifications` socket must exist and be active in the application.
    let user = match which {
        Namespace::Root => None,
        Namespace::Notifications => match notifications::admit(node, &principal).await {
            Ok(user) => Some(user),
            Err(refusal) => {
                node.metrics
                    .auth_failures
                    .with_label_values(&["notification_user"])
                    .inc();
                tracing::info!(sid = %session.sid, user = %principal.user_id, refusal, "notifications connection refused");
                return refuse(refusal);
            }
        },
    };
    let Ok(id) = random_id() else {
        return refuse("server error");
    };
    if let Err(refusal) = node.cluster.connect(&principal.user_id).await {
        node.metrics
            .errors
            .with_label_values(&[refusal.label()])
            .inc();
        tracing::info!(sid = %session.sid, user = %principal.user_id, error = %refusal, "connection refused");
        return refuse(refusal.client_message());
    }
    match (which, user) {
        (Namespace::Notifications, Some(user)) => {
            connect_notifications(node, session, id, principal, user).await
        }
        _ => connect_root(node, session, id, principal).await,
    }
}

/// Whether the session is still open after a socket took its slot; if it closed meanwhile,
/// its cleanup may have missed the socket, so `release` gives the slot back.
fn still_open(node: &Node, session: &Session, release: impl FnOnce()) -> bool {
    if node.sessions.contains(&session.sid) {
        let first = !session.sockets.ever_connected.swap(true, Ordering::AcqRel);
        if first {
            node.metrics.handshake(Protocol::SocketIo, session.age());
        }
        true
    } else {
        release();
        false
    }
}

async fn connect_root(
    node: &Node,
    session: &Session,
    id: Arc<str>,
    principal: crate::auth::Principal,
) {
    let socket = Arc::new(Member::new(
        id,
        principal,
        Codec::SocketIo,
        session.outbox.clone(),
    ));
    session.sockets.set_root(Some(socket.clone()));
    node.connected(&socket);
    let open = still_open(node, session, || {
        if let Some(socket) = session.sockets.set_root(None) {
            node.disconnect(&socket);
        }
    });
    if !open {
        return;
    }
    send(session, |out| codec::write_connect(out, ROOT, &socket.id));
    tracing::debug!(sid = %session.sid, socket = %socket.id, user = %socket.principal.user_id, "socket connected");

    let own = channel::user_channel(&socket.principal.user_id);
    match node.join(&socket, &own).await {
        Ok(_) => emit(
            session,
            "subscribed",
            &json!({"channel": own, "status": "auto"}),
        ),
        Err(e) => emit(
            session,
            "subscription_error",
            &json!({"channel": own, "error": e.to_string()}),
        ),
    }
}

async fn connect_notifications(
    node: &Node,
    session: &Session,
    id: Arc<str>,
    principal: crate::auth::Principal,
    user: User,
) {
    let member = Arc::new(Member::new(
        id,
        principal,
        Codec::Notifications,
        session.outbox.clone(),
    ));
    node.connected(&member);
    let socket = Arc::new(NotificationSocket { member, user });
    session.sockets.set_notifications(Some(socket.clone()));
    let open = still_open(node, session, || {
        if let Some(socket) = session.sockets.take_notifications() {
            node.disconnect(&socket.member);
        }
    });
    if !open {
        return;
    }
    send(session, |out| {
        codec::write_connect(out, crate::notifications::NAMESPACE, &socket.member.id)
    });
    tracing::debug!(sid = %session.sid, socket = %socket.member.id, user = %socket.user.id, "notifications socket connected");
    notifications::on_connect(node, session, &socket).await;
}

#[derive(Debug, Deserialize)]
struct ChannelRequest {
    channel: Option<String>,
}

/// `auth:refresh`'s payload: `{token}`.
#[derive(Debug, Deserialize)]
struct TokenRequest {
    token: Option<String>,
}

/// Laravel Echo's subscribe payload: `{channel, auth: {headers: {…}}}`.
#[derive(Debug, Deserialize)]
struct SubscribeRequest {
    channel: Option<String>,
    /// Kept whole: the policy forwards its `headers` to an auth callback.
    auth: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Whisper<'a> {
    channel: Option<String>,
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn first_arg<'a, T: Deserialize<'a>>(args: &[&'a RawValue]) -> Option<T> {
    args.first()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
}

async fn on_event(
    node: &Node,
    session: &Session,
    socket: &Arc<Member>,
    name: &str,
    args: &[&RawValue],
    ack: Option<u64>,
) {
    let kind = match name {
        "subscribe" => "subscribe",
        "unsubscribe" => "unsubscribe",
        "client event" => "client_event",
        "ping" => "ping",
        "register" => "register",
        "notification_read" => "notification_read",
        _ => "other",
    };
    node.metrics.messages_in.inc(Protocol::SocketIo, kind);
    match name {
        "subscribe" => subscribe(node, session, socket, args, ack).await,
        "unsubscribe" => {
            let Some(channel) = first_arg::<ChannelRequest>(args).and_then(|r| r.channel) else {
                let error = json!({"channel": null, "error": "expected {channel}"});
                return answer(session, ack, "subscription_error", &error);
            };
            node.leave(socket, &channel);
            answer(session, ack, "unsubscribed", &json!({"channel": channel}));
        }
        "client event" => whisper(node, session, socket, args, ack).await,
        "notification_read" => {
            notifications::read_from_root(node, session, socket, args, ack).await
        }
        "auth:refresh" => {
            let token = first_arg::<TokenRequest>(args).and_then(|r| r.token);
            let notifications = session.sockets.notifications();
            let mut sockets: Vec<&Member> = vec![socket];
            sockets.extend(notifications.as_deref().map(|n| &*n.member));
            let value = match node.refresh_token(&sockets, token).await {
                Ok(expires) => json!({"status": "success", "expires": expires}),
                Err(error) => json!({"error": error}),
            };
            answer(session, ack, "auth:refreshed", &value);
        }
        "ping" => match ack {
            Some(id) => send(session, |out| codec::write_ack(out, ROOT, id, &"pong")),
            None => send(session, |out| codec::write_event(out, ROOT, "pong", &[])),
        },
        "register" => {
            // The Go server's flow: the client names its user, which must be the token's.
            let claimed = args
                .first()
                .and_then(|raw| crate::protocol::id_field(raw, "userId"));
            let answer_value = if claimed.as_deref() == Some(&*socket.principal.user_id) {
                json!({"success": true, "room": channel::user_channel(&socket.principal.user_id)})
            } else {
                json!({"success": false, "error": "userId does not match the token"})
            };
            answer(session, ack, "registered", &answer_value);
        }
        _ => match &node.config.backend {
            Some(_) => forward(node, socket, name, args, ack),
            None => {
                node.metrics
                    .errors
                    .with_label_values(&["unknown_event"])
                    .inc();
                let error = json!({"error": format!("unknown event `{name}`")});
                match ack {
                    Some(id) => send(session, |out| codec::write_ack(out, ROOT, id, &error)),
                    // Never silence: without an ack the error comes as an event.
                    None => emit(
                        session,
                        "error",
                        &json!({"event": name, "error": error["error"]}),
                    ),
                }
            }
        },
    }
}

/// Forwards an event to the back-end; its answer is the acknowledgement (or, without one, an
/// `error` event when it failed).
fn forward(node: &Node, socket: &Arc<Member>, name: &str, args: &[&RawValue], ack: Option<u64>) {
    // One argument is the data; several go as an array.
    let data = match args {
        [one] => Some((*one).to_owned()),
        [] => RawValue::from_string("null".into()).ok(),
        many => serde_json::value::to_raw_value(many).ok(),
    };
    let Some(data) = data else { return };
    let outbox = socket.outbox.clone();
    let event = name.to_owned();
    node.forward(socket, name.to_owned(), data, move |answer| {
        let mut out = engineio::message(64);
        match (answer, ack) {
            (Ok(answer), Some(id)) => codec::write_ack(&mut out, ROOT, id, &answer),
            (Ok(_), None) => return,
            (Err(e), Some(id)) => {
                codec::write_ack(&mut out, ROOT, id, &json!({"error": e.to_string()}))
            }
            (Err(e), None) => codec::write_event_value(
                &mut out,
                ROOT,
                "error",
                &json!({"event": event, "error": e.to_string()}),
            ),
        }
        let _ = outbox.push(Frame::from(out));
    });
}

async fn subscribe(
    node: &Node,
    session: &Session,
    socket: &Arc<Member>,
    args: &[&RawValue],
    ack: Option<u64>,
) {
    let Some(SubscribeRequest {
        channel: Some(channel),
        auth,
    }) = first_arg::<SubscribeRequest>(args)
    else {
        let error = json!({"channel": null, "error": "expected {channel, auth?}"});
        return answer(session, ack, "subscription_error", &error);
    };
    let result = node.subscribe(socket, &channel, auth.as_ref()).await;
    match result {
        Ok(members) => {
            if let Some(members) = members {
                let members = serde_json::to_string(&members)
                    .ok()
                    .and_then(|text| RawValue::from_string(text).ok());
                if let Some(members) = members {
                    send(session, |out| {
                        codec::write_broadcast(out, ROOT, "presence:subscribed", &channel, &members)
                    });
                }
            }
            answer(
                session,
                ack,
                "subscribed",
                &json!({"channel": channel, "status": "success"}),
            );
        }
        Err(refusal) => {
            // Rate-limit refusals are counted by the limit, in `rate_limited_total`.
            if !matches!(refusal, Refusal::RateLimited) {
                node.metrics
                    .errors
                    .with_label_values(&["subscription_refused"])
                    .inc();
            }
            answer(
                session,
                ack,
                "subscription_error",
                &json!({"channel": channel, "error": refusal.to_string()}),
            );
        }
    }
}

async fn whisper(
    node: &Node,
    session: &Session,
    socket: &Arc<Member>,
    args: &[&RawValue],
    ack: Option<u64>,
) {
    let refuse = |channel: Option<&str>, message: &str| {
        let error = json!({"event": "client event", "channel": channel, "error": message});
        answer(session, ack, "error", &error);
    };
    let Some(Whisper {
        channel: Some(channel),
        event: Some(event),
        data,
    }) = first_arg::<Whisper>(args)
    else {
        return refuse(None, "expected {channel, event, data}");
    };
    let data = data.unwrap_or(RawValue::NULL);
    match node.whisper(socket, &channel, &event, data).await {
        Ok(()) => {
            if let Some(id) = ack {
                send(session, |out| {
                    codec::write_ack(out, ROOT, id, &json!({"ok": true}))
                });
            }
        }
        Err(refusal) => refuse(Some(&channel), &refusal.to_string()),
    }
}

/// Releases the session's sockets when the session ends.
pub fn on_close(node: &Node, session: &Session) {
    if let Some(socket) = session.sockets.set_root(None) {
        node.disconnect(&socket);
        tracing::debug!(socket = %socket.id, "socket disconnected");
    }
    if let Some(socket) = session.sockets.take_notifications() {
        node.disconnect(&socket.member);
        tracing::debug!(socket = %socket.member.id, "notifications socket disconnected");
    }
}
