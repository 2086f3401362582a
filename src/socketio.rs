//! The Socket.IO layer: namespace connects with JWT authentication, and the events of
//! Laravel Echo's socket.io conventions (`subscribe`, `unsubscribe`, `client event`, `ping`).
//!
//! It is the node's Engine.IO [`Handler`] ([`SocketIo`]): it admits sessions, and each
//! connected namespace (`/`, and `/notifications`,
//! whose events live in [`crate::notifications::namespace`]) is a socket, which is a hub
//! [`Member`]. Answers are queued on the session's outbox like any broadcast.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Query;
use axum::http::header;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::auth::bearer;
use crate::channel::{self, Refusal};
use crate::engine::{self, Engine, Handler, Opening};
use crate::hub::{Codec, Member};
use crate::limit::{Rate, SocketLimit};
use crate::metrics::{Limit, Protocol};
use crate::node::{Admission, Node};
use crate::notifications::namespace::{self as notifications, Socket as NotificationSocket};
use crate::notifications::store::{MAX_PENDING, User};
use crate::outbox::{CloseReason, Frame};
use crate::protocol::engineio;
use crate::protocol::socketio::{self as codec, Kind as PacketKind, Packet};

/// The default namespace.
pub const ROOT: &str = "/";

/// Largest websocket message or polling payload a session takes before it has connected to a
/// namespace. What it may send until then is small: a CONNECT packet with a token and auth
/// payload (a JWT is rarely over 2 KiB), pings and the upgrade probe. A larger frame is refused
/// from its header (close 1009), so a session without a token cannot make the node buffer a
/// large message.
const PRE_CONNECT_MAX_MESSAGE: usize = 8 * 1024;

/// An Engine.IO session of the node: its Socket.IO sockets ride on it.
pub type Session = engine::Session<Sockets>;

/// A namespace's socket on a session: none, one being connected, or one connected.
#[derive(Debug)]
enum State<T> {
    Free,
    Connecting,
    Open(Arc<T>),
}

/// The slot of one namespace. A connect claims it before its first await, so two connects
/// racing on one session cannot both take a per-user connection slot.
#[derive(Debug)]
struct Slot<T>(Mutex<State<T>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(Mutex::new(State::Free))
    }
}

impl<T> Slot<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connected socket, if any.
    fn get(&self) -> Option<Arc<T>> {
        match &*self.lock() {
            State::Open(socket) => Some(socket.clone()),
            _ => None,
        }
    }

    /// Whether no socket is connected or being connected.
    fn is_free(&self) -> bool {
        matches!(*self.lock(), State::Free)
    }

    /// Marks a free slot as being connected; `None` when it is taken or being taken already.
    fn claim(&self) -> Option<Claim<'_, T>> {
        let mut state = self.lock();
        if !matches!(*state, State::Free) {
            return None;
        }
        *state = State::Connecting;
        Some(Claim {
            slot: self,
            filled: false,
        })
    }

    /// Empties the slot, returning its connected socket (a connect in progress keeps its claim).
    fn take(&self) -> Option<Arc<T>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Free) {
            State::Open(socket) => Some(socket),
            other => {
                *state = other;
                None
            }
        }
    }
}

/// A slot claimed by a connect in progress; dropped unfilled (refused, or the connect's future
/// dropped), it frees the slot again.
struct Claim<'a, T> {
    slot: &'a Slot<T>,
    filled: bool,
}

impl<T> Claim<'_, T> {
    /// Installs the connected socket.
    fn fill(mut self, socket: Arc<T>) {
        *self.slot.lock() = State::Open(socket);
        self.filled = true;
    }
}

impl<T> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        if !self.filled {
            let mut state = self.slot.lock();
            if matches!(*state, State::Connecting) {
                *state = State::Free;
            }
        }
    }
}

/// The Socket.IO state of one Engine.IO session: a slot per namespace it may connect, and the
/// limits on what its client sends.
#[derive(Debug, Default)]
pub struct Sockets {
    /// The token of the handshake request: `Authorization: Bearer`, else `?token=`.
    token: Option<String>,
    /// The client address this session counts against in `Node::unauthenticated`, until it
    /// connects a namespace or ends.
    unauthenticated: Mutex<Option<IpAddr>>,
    root: Slot<Member>,
    notifications: Slot<NotificationSocket>,
    ever_connected: AtomicBool,
    /// Binary attachments still to discard after a refused binary packet.
    discard: AtomicUsize,
    /// Packets sent, against `SWITCHBOARD_EVENT_RATE`.
    events: SocketLimit,
    /// Acknowledgements sent (each one a database write on `/notifications`).
    acks: SocketLimit,
    /// Connects refused while another namespace stays connected.
    failed_connects: SocketLimit,
    /// Packets refused for their rate; [`MAX_REFUSED`] of them close the session.
    refused: AtomicU32,
}

impl Sockets {
    fn root(&self) -> Option<Arc<Member>> {
        self.root.get()
    }

    fn notifications(&self) -> Option<Arc<NotificationSocket>> {
        self.notifications.get()
    }

    /// Empties the `/notifications` slot, returning its socket.
    pub fn take_notifications(&self) -> Option<Arc<NotificationSocket>> {
        self.notifications.take()
    }

    /// Whether any namespace was ever connected (the connect timeout stops then).
    pub fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Acquire)
    }

    /// Gives back the session's place among its address's unauthenticated sessions, once.
    fn authenticated(&self, node: &Node) {
        let key = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(key) = key {
            node.unauthenticated.remove(key);
        }
    }
}

/// The query of a handshake request, for its token.
#[derive(Debug, Deserialize)]
struct HandshakeQuery {
    token: Option<String>,
}

/// Socket.IO over the node's Engine.IO sessions.
pub struct SocketIo {
    node: Arc<Node>,
}

impl SocketIo {
    /// The node's Engine.IO server, with Socket.IO on it, serving `sessions` (which the node
    /// counts and drains).
    pub fn engine(node: &Arc<Node>, sessions: Arc<engine::Sessions<Sockets>>) -> Engine<SocketIo> {
        let config = &node.config;
        let settings = engine::Settings {
            ping_interval: config.engine.ping_interval,
            ping_timeout: config.engine.ping_timeout,
            max_payload: config.limits.max_message_size,
            pre_connect_max_payload: PRE_CONNECT_MAX_MESSAGE,
            connect_timeout: config.engine.connect_timeout,
            message_timeout: config.limits.message_timeout,
            send_queue_bytes: config.limits.send_queue_bytes,
            writes: node.writes(),
            allowed_origins: config.auth.allowed_origins.clone(),
            // A poll that went away is not taken for a client that did; its ping times out.
            close_abandoned_polls: false,
        };
        let handler = SocketIo { node: node.clone() };
        Engine::new(handler, settings, sessions, node.metrics.clone())
    }
}

impl From<Admission> for engine::Refusal {
    fn from(admission: Admission) -> Self {
        Self {
            status: admission.status(),
            message: admission.message(),
        }
    }
}

impl Handler for SocketIo {
    type Sockets = Sockets;

    /// Checks the node's admission (shutdown, connect rate, connection limit) and the client
    /// address's unauthenticated sessions, and keeps the handshake's token.
    fn open(&self, opening: &Opening<'_>) -> Result<Sockets, engine::Refusal> {
        let node = &self.node;
        let key = node.admit(opening.remote, opening.headers)?;
        // Until it connects a namespace a session is a stranger's: each address may hold only a
        // few, so strangers cannot take the places of users who sign in.
        if !node.unauthenticated.try_add(key) {
            node.metrics
                .errors
                .with_label_values(&["unauthenticated_limit"])
                .inc();
            return Err(Admission::Unauthenticated.into());
        }
        let token = opening
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .map(str::to_owned)
            .or_else(|| {
                Query::<HandshakeQuery>::try_from_uri(opening.uri)
                    .ok()
                    .and_then(|Query(query)| query.token)
                    .filter(|t| !t.is_empty())
            });
        Ok(Sockets {
            token,
            unauthenticated: Mutex::new(Some(key)),
            ..Sockets::default()
        })
    }

    fn connected(&self, sockets: &Sockets) -> bool {
        sockets.ever_connected()
    }

    async fn on_message(&self, session: &Session, text: &str) -> Result<(), CloseReason> {
        let result = on_message(&self.node, session, text).await;
        if session.sockets.ever_connected() {
            session.sockets.authenticated(&self.node);
        }
        result
    }

    fn on_binary(&self, session: &Session, _data: Vec<u8>) -> Result<(), CloseReason> {
        on_binary(&self.node, session)
    }

    fn on_close(&self, session: &Session) {
        session.sockets.authenticated(&self.node);
        on_close(&self.node, session);
    }
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
async fn on_message(node: &Node, session: &Session, text: &str) -> Result<(), CloseReason> {
    if session.outbox.close_reason().is_some() {
        // Read before the close took effect (a websocket's next frames): not for a closed session.
        return Ok(());
    }
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
    if !within_rate(node, session, packet.kind) {
        return refuse_over_rate(node, session, &packet);
    }
    match packet.kind {
        PacketKind::Connect => {
            let span = tracing::debug_span!(
                "socketio.connect",
                switchboard.namespace = packet.namespace,
                enduser.id = tracing::field::Empty,
                switchboard.refusal = tracing::field::Empty,
            );
            connect(node, session, &packet).instrument(span).await
        }
        PacketKind::Disconnect => {
            if packet.namespace == ROOT
                && let Some(socket) = session.sockets.root.take()
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
fn on_binary(node: &Node, session: &Session) -> Result<(), CloseReason> {
    let discard = &session.sockets.discard;
    if discard
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        return Ok(());
    }
    protocol_error(node, session, "unexpected binary message")
}

/// What a client is told for a packet over its rate.
const RATE_LIMITED: &str = "too many events, slow down";

/// Packets a session may have refused for their rate before it is closed.
const MAX_REFUSED: u32 = 20;

/// Connects a session may have refused while another of its namespaces is connected: three,
/// then one a minute. (With none connected, socket.io-client closes the session itself.)
const FAILED_CONNECTS: Rate = Rate {
    per_second: 1.0 / 60.0,
    burst: 3.0,
};

/// Whether a packet of `kind` is within the session's rate. Acknowledgements have their own
/// bucket, large enough for the notifications a `/notifications` connect sends at once.
fn within_rate(node: &Node, session: &Session, kind: PacketKind) -> bool {
    let rate = node.config.limits.event_rate;
    match kind {
        PacketKind::Connect | PacketKind::Event => session.sockets.events.take(rate),
        PacketKind::Ack => session.sockets.acks.take(Rate {
            burst: rate.burst.max(MAX_PENDING as f64),
            ..rate
        }),
        // Cheap, and answered at most once each: a disconnect, a refused binary packet or
        // a client's CONNECT_ERROR (a protocol error).
        _ => true,
    }
}

/// Refuses a packet over the rate: an error acknowledgement or `error` event for an event, a
/// CONNECT_ERROR for a connect, nothing for an ack. Too many refusals close the session.
fn refuse_over_rate(
    node: &Node,
    session: &Session,
    packet: &Packet<'_>,
) -> Result<(), CloseReason> {
    node.metrics.rate_limited(Limit::Event);
    let refused = session.sockets.refused.fetch_add(1, Ordering::AcqRel) + 1;
    if refused > MAX_REFUSED {
        // Packets read before the close takes effect land here too: one line is enough.
        if refused == MAX_REFUSED + 1 {
            tracing::info!(sid = %session.sid, remote = %session.remote, "closing session: too many packets over the rate");
        }
        return Err(CloseReason::ProtocolError);
    }
    let namespace = packet.namespace;
    match (packet.kind, packet.ack) {
        (PacketKind::Connect, _) => return refused_connect(session, namespace, RATE_LIMITED),
        (PacketKind::Event, Some(id)) => send(session, |out| {
            codec::write_ack(out, namespace, id, &json!({"error": RATE_LIMITED}))
        }),
        (PacketKind::Event, None) => {
            let event = packet.event().ok().map(|event| event.name);
            emit_in(
                session,
                namespace,
                "error",
                &json!({"event": event, "error": RATE_LIMITED}),
            );
        }
        _ => {}
    }
    Ok(())
}

fn protocol_error(node: &Node, session: &Session, problem: &str) -> Result<(), CloseReason> {
    node.metrics.errors.with_label_values(&["protocol"]).inc();
    tracing::info!(sid = %session.sid, remote = %session.remote, problem, "closing session: malformed Socket.IO packet");
    Err(CloseReason::ProtocolError)
}

/// The handshake auth object: `{token}`, or Laravel Echo's `{headers: {Authorization}}`.
#[derive(Debug, Default, Deserialize)]
struct ConnectAuth {
    token: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
    /// The client's choice of broadcast arguments on `/`, over the node's setting.
    #[serde(rename = "broadcastArgs")]
    broadcast_args: Option<crate::config::BroadcastArgs>,
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
        .or_else(|| session.sockets.token.clone())
}

async fn connect(node: &Node, session: &Session, packet: &Packet<'_>) -> Result<(), CloseReason> {
    match attempt(node, session, packet).await {
        Ok(()) => Ok(()),
        Err(message) => refused_connect(session, packet.namespace, &message),
    }
}

/// Tells the client its connect was refused. The session is closed when no other namespace is
/// connected or being connected (socket.io-client closes it itself then, and a client
/// retrying on it is not one), or after a few refusals.
fn refused_connect(session: &Session, namespace: &str, message: &str) -> Result<(), CloseReason> {
    tracing::Span::current().record("switchboard.refusal", message);
    send(session, |out| {
        // MechaMap's client shows every refused connect as this; the reason tells them apart.
        codec::write_connect_error(
            out,
            namespace,
            "Authentication failed",
            Some(&json!({"reason": message})),
        )
    });
    let sockets = &session.sockets;
    let alone = sockets.root.is_free() && sockets.notifications.is_free();
    if alone || !sockets.failed_connects.take(FAILED_CONNECTS) {
        return Err(CloseReason::ConnectRefused);
    }
    Ok(())
}

/// Connects a namespace; the error is what the client is told. A connect of a namespace that
/// is connected, or being connected, is ignored.
async fn attempt(node: &Node, session: &Session, packet: &Packet<'_>) -> Result<(), String> {
    match packet.namespace {
        ROOT => {
            // Claimed before the first await: a second connect racing this one finds it taken.
            let Some(claim) = session.sockets.root.claim() else {
                return Ok(());
            };
            let (principal, args) = authenticate(node, session, packet).await?;
            let codec = match args.unwrap_or(node.config.server.broadcast_args) {
                crate::config::BroadcastArgs::ChannelData => Codec::SocketIo,
                crate::config::BroadcastArgs::Data => Codec::SocketIoData,
            };
            let id = take_slot(node, session, &principal).await?;
            connect_root(node, session, claim, id, principal, codec).await;
        }
        crate::notifications::NAMESPACE => {
            let Some(claim) = session.sockets.notifications.claim() else {
                return Ok(());
            };
            let (principal, _) = authenticate(node, session, packet).await?;
            // The user of a `/notifications` socket must exist and be active in the application.
            let user = match notifications::admit(node, &principal).await {
                Ok(user) => user,
                Err(refusal) => {
                    node.metrics
                        .auth_failures
                        .with_label_values(&["notification_user"])
                        .inc();
                    if node.connect_refusals.admit() {
                        tracing::info!(sid = %session.sid, user = %principal.user_id, refusal, "notifications connection refused");
                    }
                    return Err(refusal.to_owned());
                }
            };
            let id = take_slot(node, session, &principal).await?;
            connect_notifications(node, session, claim, id, principal, user).await;
        }
        _ => return Err("Invalid namespace".to_owned()),
    }
    Ok(())
}

/// The principal of a connect's token, and the broadcast arguments the client asked for.
async fn authenticate(
    node: &Node,
    session: &Session,
    packet: &Packet<'_>,
) -> Result<(crate::auth::Principal, Option<crate::config::BroadcastArgs>), String> {
    if node.is_draining() {
        return Err("server shutting down".to_owned());
    }
    let auth: ConnectAuth = match packet.data.map(serde_json::from_str).transpose() {
        Ok(auth) => auth.unwrap_or_default(),
        Err(_) => {
            node.metrics
                .auth_failures
                .with_label_values(&["malformed"])
                .inc();
            return Err("invalid auth payload".to_owned());
        }
    };
    match node.verify_token(find_token(&auth, session)).await {
        Ok(principal) => {
            tracing::Span::current().record("enduser.id", &*principal.user_id);
            Ok((principal, auth.broadcast_args))
        }
        Err(e) => {
            if node.connect_refusals.admit() {
                tracing::info!(sid = %session.sid, remote = %session.remote, reason = e.reason(), "connection refused: bad token");
            }
            Err(e.to_string())
        }
    }
}

/// A new socket id and the user's connection slot; whoever gets them must install the socket
/// or give the slot back.
async fn take_slot(
    node: &Node,
    session: &Session,
    principal: &crate::auth::Principal,
) -> Result<Arc<str>, String> {
    let Ok(id) = crate::id::random_id() else {
        return Err("server error".to_owned());
    };
    if let Err(refusal) = node.cluster.connect(&principal.user_id).await {
        node.metrics
            .errors
            .with_label_values(&[refusal.label()])
            .inc();
        if node.connect_refusals.admit() {
            tracing::info!(sid = %session.sid, user = %principal.user_id, error = %refusal, "connection refused");
        }
        return Err(refusal.client_message().to_owned());
    }
    Ok(id)
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
    claim: Claim<'_, Member>,
    id: Arc<str>,
    principal: crate::auth::Principal,
    codec: Codec,
) {
    let socket = Arc::new(Member::new(id, principal, codec, session.outbox.clone()));
    claim.fill(socket.clone());
    node.connected(&socket);
    let open = still_open(node, session, || {
        if let Some(socket) = session.sockets.root.take() {
            node.disconnect(&socket);
        }
    });
    if !open {
        return;
    }
    send(session, |out| codec::write_connect(out, ROOT, &socket.id));
    if let Some(welcome) = &node.config.server.welcome {
        send(session, |out| {
            codec::write_event(out, ROOT, "welcome", &[welcome])
        });
    }
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
            &subscription_error(&own, &e.into()),
        ),
    }
}

async fn connect_notifications(
    node: &Node,
    session: &Session,
    claim: Claim<'_, NotificationSocket>,
    id: Arc<str>,
    principal: crate::auth::Principal,
    user: User,
) {
    let member = Arc::new(Member::new(
        id,
        principal,
        Codec::Namespace(&crate::notifications::CODEC),
        session.outbox.clone(),
    ));
    node.connected(&member);
    let socket = Arc::new(NotificationSocket { member, user });
    claim.fill(socket.clone());
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
        crate::notifications::READ_EVENT => "notification_read",
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
        crate::notifications::READ_EVENT => {
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
        _ => match &node.backend {
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
                &subscription_error(&channel, &refusal),
            );
        }
    }
}

/// `subscription_error`'s payload as MechaMap's client reads it: `error` is `Internal error`
/// when the check could not be made (try again later), `Unauthorized` for any other refusal;
/// `details` is the refusal itself.
fn subscription_error(channel: &str, refusal: &Refusal) -> Value {
    let error = match refusal {
        Refusal::Unavailable(_) => "Internal error",
        _ => "Unauthorized",
    };
    json!({"channel": channel, "error": error, "details": refusal.to_string()})
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
fn on_close(node: &Node, session: &Session) {
    if let Some(socket) = session.sockets.root.take() {
        node.disconnect(&socket);
        tracing::debug!(socket = %socket.id, "socket disconnected");
    }
    if let Some(socket) = session.sockets.take_notifications() {
        node.disconnect(&socket.member);
        tracing::debug!(socket = %socket.member.id, "notifications socket disconnected");
    }
}
