//! The Engine.IO v4 server: sessions over HTTP long-polling and websocket, the upgrade from
//! one to the other, and ping/pong. Text messages go up to [`crate::socketio`].
//!
//! A websocket session is served by one task that reads, writes and keeps the heartbeat.
//! A polling session has a small heartbeat task and is otherwise driven by its HTTP requests;
//! when it upgrades, the websocket task takes over. Whoever ends a session calls [`finish`],
//! which is idempotent.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use serde::Deserialize;
use tokio::time::Instant;

use crate::auth::bearer;
use crate::metrics::Protocol;
use crate::node::{Admission, Node};
use crate::outbox::{CloseReason, Drained, Frame, Outbox};
use crate::protocol::engineio::{self, ErrorCode, Handshake, Packet};
use crate::protocol::websocket::{self as framing, FrameError, Message};
use crate::socketio;
use crate::websocket::{NotAnUpgrade, ReadError, Upgrade, WebSocket};

/// Time a client has to finish the upgrade once it starts probing.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a closed polling session keeps the frames queued before its close for the client's
/// next poll (which a socket.io-client has pending, or sends at once).
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Time given to write the close frame to a leaving websocket.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest websocket message a session takes before it has connected to a namespace. What it
/// may send until then is small: a CONNECT packet with a token and auth payload (a JWT is
/// rarely over 2 KiB), pings and the upgrade probe. A larger frame is refused from its header
/// (close 1009), so a session without a token cannot make the node buffer a large message.
const PRE_CONNECT_MAX_MESSAGE: usize = 8 * 1024;

/// The transport a session currently uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Transport {
    /// HTTP long-polling.
    Polling = 0,
    /// Long-polling, with a websocket probing to take over.
    Upgrading = 1,
    /// Websocket.
    WebSocket = 2,
}

impl Transport {
    /// The metrics label (a session still probing its upgrade counts as polling).
    pub fn label(self) -> &'static str {
        match self {
            Self::Polling | Self::Upgrading => "polling",
            Self::WebSocket => "websocket",
        }
    }
}

/// What the handshake request carried that the Socket.IO connect may need.
#[derive(Debug)]
pub struct HandshakeInfo {
    /// The token of the first request: `Authorization: Bearer`, else `?token=`. Dropped once a
    /// namespace is connected, so idle sessions do not keep it.
    token: std::sync::Mutex<Option<String>>,
    /// The peer address.
    pub remote: SocketAddr,
}

impl HandshakeInfo {
    /// The handshake request's token, if it had one.
    pub fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the token.
    pub fn forget_token(&self) {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// One Engine.IO session.
#[derive(Debug)]
pub struct Session {
    /// The session id.
    pub sid: Arc<str>,
    /// Frames waiting to be sent, whatever the transport.
    pub outbox: Arc<Outbox>,
    /// What the handshake carried.
    pub handshake: HandshakeInfo,
    /// The Socket.IO sockets riding on this session.
    pub sockets: socketio::Sockets,
    /// The client address this session counts against in `Node::unauthenticated`, until it
    /// connects a namespace or ends.
    unauthenticated: std::sync::Mutex<Option<IpAddr>>,
    transport: AtomicU8,
    pong: AtomicBool,
    polling: AtomicBool,
    created: Instant,
}

impl Session {
    /// The current transport.
    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Acquire) {
            0 => Transport::Polling,
            1 => Transport::Upgrading,
            _ => Transport::WebSocket,
        }
    }

    /// Time since the Engine.IO handshake.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    fn set_transport(&self, transport: Transport) {
        self.transport.store(transport as u8, Ordering::Release);
    }

    /// Queues a frame; a full queue closes the session as a slow consumer.
    pub fn send(&self, frame: Frame) {
        // A refused push has already closed the session, which its owner task will notice.
        let _ = self.outbox.push(frame);
    }

    /// Closes the session.
    pub fn close(&self, reason: CloseReason) {
        self.outbox.close(reason);
    }
}

/// The node's live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: DashMap<Arc<str>, Arc<Session>>,
}

impl Sessions {
    /// Whether a session is still open.
    pub fn contains(&self, sid: &str) -> bool {
        self.map.contains_key(sid)
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.map.get(sid).map(|s| s.clone())
    }

    /// Frames waiting in every session's queue.
    pub fn queued_frames(&self) -> usize {
        self.map.iter().map(|s| s.outbox.queued_frames()).sum()
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for session in self.map.iter() {
            session.close(reason);
        }
    }
}

/// The query string of an Engine.IO request.
#[derive(Debug, Deserialize)]
pub struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    token: Option<String>,
}

/// An Engine.IO error answer: `{"code": N, "message": ...}`.
struct EngineError {
    status: StatusCode,
    code: ErrorCode,
    message: Option<String>,
}

impl EngineError {
    fn new(code: ErrorCode) -> Self {
        let status = match code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code,
            message: None,
        }
    }

    fn with(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: Some(message.into()),
        }
    }

    fn response(self, cors: &Cors) -> Response {
        let body = serde_json::json!({
            "code": self.code as u8,
            "message": self.message.as_deref().unwrap_or(self.code.message()),
        });
        cors.apply((self.status, axum::Json(body)).into_response())
    }
}

/// The CORS answer for a request's Origin.
enum Cors {
    /// No Origin header (not a browser): no CORS headers needed.
    None,
    /// An origin named in `SWITCHBOARD_ALLOWED_ORIGINS`, echoed back with credentials.
    Allow(HeaderValue),
    /// Any origin (none configured, or `*`): `*` and no credentials, so a page on another
    /// site can poll (socket.io-client's default, `withCredentials: false`) but never with
    /// the user's cookies.
    Any,
}

/// Whether a request's Origin (if any) may connect; refusals are counted.
pub fn origin_allowed(node: &Node, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let allowed = &node.config.allowed_origins;
    let text = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let ok = allowed.is_empty() || allowed.contains(text) || allowed.contains("*");
    if !ok {
        node.metrics
            .errors
            .with_label_values(&["origin_refused"])
            .inc();
    }
    ok
}

impl Cors {
    fn check(node: &Node, headers: &HeaderMap) -> Result<Self, EngineError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(Self::None);
        };
        let allowed = &node.config.allowed_origins;
        if allowed.is_empty() || allowed.contains("*") {
            Ok(Self::Any)
        } else if origin_allowed(node, headers) {
            Ok(Self::Allow(origin.clone()))
        } else {
            Err(EngineError::with(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "origin not allowed",
            ))
        }
    }

    fn apply(&self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        match self {
            Self::None => {}
            Self::Allow(origin) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
                headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            Self::Any => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
        response
    }
}

fn text_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

/// `OPTIONS /socket.io/`: the CORS preflight of browsers' polling requests.
pub async fn preflight(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let cors = match Cors::check(&node, &headers) {
        Ok(cors) => cors,
        Err(e) => return e.response(&Cors::None),
    };
    let mut response = cors.apply(StatusCode::NO_CONTENT.into_response());
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

fn check_query(
    query: Result<Query<EngineQuery>, QueryRejection>,
) -> Result<EngineQuery, EngineError> {
    let Query(query) = query.map_err(|_| EngineError::new(ErrorCode::BadRequest))?;
    if query.eio.as_deref() != Some("4") {
        return Err(EngineError::new(ErrorCode::UnsupportedProtocolVersion));
    }
    Ok(query)
}

/// Runs `handle` for a request whose Origin is allowed, adding the CORS headers to its answer.
async fn with_cors<F>(node: &Node, headers: &HeaderMap, handle: F) -> Response
where
    F: Future<Output = Result<Response, EngineError>>,
{
    let cors = match Cors::check(node, headers) {
        Ok(cors) => cors,
        Err(e) => return e.response(&Cors::None),
    };
    match handle.await {
        Ok(response) => cors.apply(response),
        Err(e) => e.response(&cors),
    }
}

/// `GET /socket.io/`: a handshake, a poll, or a websocket upgrade.
pub async fn get(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    query: Result<Query<EngineQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<Upgrade, NotAnUpgrade>,
) -> Response {
    let handle = async {
        let query = check_query(query)?;
        match query.transport.as_deref() {
            Some("websocket") => {
                let ws = ws.map_err(|_| {
                    EngineError::with(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        "expected a websocket upgrade",
                    )
                })?;
                websocket(node.clone(), ws, query, &headers, remote)
            }
            Some("polling") => match &query.sid {
                None => handshake_polling(&node, query, &headers, remote),
                Some(sid) => poll(&node, sid).await,
            },
            _ => Err(EngineError::new(ErrorCode::UnknownTransport)),
        }
    };
    with_cors(&node, &headers, handle).await
}

/// `POST /socket.io/`: packets from a polling client.
pub async fn post(
    State(node): State<Arc<Node>>,
    query: Result<Query<EngineQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let handle = async {
        receive_polling(&node, query, body).await?;
        Ok(([(header::CONTENT_TYPE, "text/html")], "ok").into_response())
    };
    with_cors(&node, &headers, handle).await
}

/// Any other method on the Engine.IO path: refused with Engine.IO's error body, as its servers
/// do, rather than the router's bare 405.
pub async fn unsupported_method(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let refuse = async { Err::<Response, _>(EngineError::new(ErrorCode::BadHandshakeMethod)) };
    with_cors(&node, &headers, refuse).await
}

fn random_id() -> Result<Arc<str>, EngineError> {
    crate::id::random_id().map_err(|_| {
        EngineError::with(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BadRequest,
            "no randomness available",
        )
    })
}

/// Registers a new session, enforcing the node's connection limit.
fn open_session(
    node: &Node,
    transport: Transport,
    query: &EngineQuery,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Arc<Session>, EngineError> {
    let span = tracing::debug_span!(
        "engineio.handshake",
        switchboard.transport = transport.label(),
        switchboard.refusal = tracing::field::Empty,
    );
    let _span = span.enter();
    let refuse = |refusal: Admission| {
        span.record("switchboard.refusal", refusal.message());
        EngineError::with(refusal.status(), ErrorCode::Forbidden, refusal.message())
    };
    let key = node.admit(remote, headers).map_err(refuse)?;
    // Until it connects a namespace a session is a stranger's: each address may hold only a
    // few, so strangers cannot take the places of users who sign in.
    if !node.unauthenticated.try_add(key) {
        node.metrics
            .errors
            .with_label_values(&["unauthenticated_limit"])
            .inc();
        return Err(refuse(Admission::Unauthenticated));
    }
    let sid = random_id().inspect_err(|_| node.unauthenticated.remove(key))?;
    let session = Arc::new(Session {
        sid,
        outbox: Arc::new(Outbox::new(node.config.send_queue_bytes)),
        handshake: HandshakeInfo {
            token: std::sync::Mutex::new(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(bearer)
                    .map(str::to_owned)
                    .or_else(|| query.token.clone().filter(|t| !t.is_empty())),
            ),
            remote,
        },
        sockets: socketio::Sockets::default(),
        unauthenticated: std::sync::Mutex::new(Some(key)),
        transport: AtomicU8::new(transport as u8),
        pong: AtomicBool::new(false),
        polling: AtomicBool::new(false),
        created: Instant::now(),
    });
    node.sessions
        .map
        .insert(session.sid.clone(), session.clone());
    node.metrics.opened(Protocol::SocketIo, transport.label());
    Ok(session)
}

/// Gives back the session's place among its address's unauthenticated sessions, once.
fn authenticated(node: &Node, session: &Session) {
    let key = session
        .unauthenticated
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(key) = key {
        node.unauthenticated.remove(key);
    }
}

/// Ends a session once: unregisters it, closes its queue and its sockets.
fn finish(node: &Node, session: &Session, reason: CloseReason) {
    if node.sessions.map.remove(&session.sid).is_none() {
        return;
    }
    authenticated(node, session);
    session.close(reason);
    // The queue may have been closed earlier with a more precise reason (e.g. slow consumer).
    let reason = session.outbox.close_reason().unwrap_or(reason);
    socketio::on_close(node, session);
    node.metrics
        .closed(Protocol::SocketIo, session.transport().label(), reason);
    match reason {
        // A refused connect is logged (once per interval) where it is refused.
        CloseReason::ClientClosed | CloseReason::ShuttingDown | CloseReason::ConnectRefused => {
            tracing::debug!(sid = %session.sid, reason = reason.label(), "session closed");
        }
        _ => {
            tracing::info!(sid = %session.sid, remote = %session.handshake.remote, reason = reason.label(), "session closed")
        }
    }
}

fn handshake_packet(node: &Node, sid: &str, upgrades: &[&str]) -> String {
    Handshake {
        sid,
        upgrades,
        ping_interval: node.config.ping_interval.as_millis() as u64,
        ping_timeout: node.config.ping_timeout.as_millis() as u64,
        max_payload: node.config.max_message_size,
    }
    .encode()
}

fn handshake_polling(
    node: &Arc<Node>,
    query: EngineQuery,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Response, EngineError> {
    let session = open_session(node, Transport::Polling, &query, headers, remote)?;
    let open = handshake_packet(node, &session.sid, &["websocket"]);
    tokio::spawn(polling_heartbeat(node.clone(), session));
    Ok(text_response(open))
}

/// Clears a session's "a GET is in flight" flag even if the request is dropped.
struct PollGuard<'a>(&'a AtomicBool);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The live session a polling request names; a session already on websocket takes no polls.
fn polling_session(node: &Node, sid: &str) -> Result<Arc<Session>, EngineError> {
    let session = node
        .sessions
        .get(sid)
        .ok_or(EngineError::new(ErrorCode::UnknownSid))?;
    if session.transport() == Transport::WebSocket {
        return Err(EngineError::new(ErrorCode::BadRequest));
    }
    Ok(session)
}

async fn poll(node: &Node, sid: &str) -> Result<Response, EngineError> {
    let session = polling_session(node, sid)?;
    if session.polling.swap(true, Ordering::AcqRel) {
        // Two concurrent polls break the protocol's ordering: end the session as Engine.IO does.
        session.close(CloseReason::ProtocolError);
        return Err(EngineError::with(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "overlapping poll",
        ));
    }
    let _guard = PollGuard(&session.polling);
    let mut frames = std::collections::VecDeque::new();
    let body = match session.outbox.drain(&mut frames).await {
        Drained::Frames => {
            // The last frames of a closed session (a CONNECT_ERROR, a kick's farewell) go
            // out with the close packet, and the session ends.
            let closed = session.outbox.close_reason();
            let close = closed.map(|_| engineio::CLOSE);
            let body = engineio::encode_payload(frames.iter().map(Frame::as_str).chain(close));
            if let Some(reason) = closed {
                finish(node, &session, reason);
            }
            body
        }
        Drained::Closed(reason) => {
            finish(node, &session, reason);
            // A client that closed knows; its pending poll is released with a noop, as
            // Engine.IO does. Any other close is announced.
            let packet = match reason {
                CloseReason::ClientClosed => engineio::NOOP,
                _ => engineio::CLOSE,
            };
            packet.to_owned()
        }
    };
    Ok(text_response(body))
}

async fn receive_polling(
    node: &Node,
    query: Result<Query<EngineQuery>, QueryRejection>,
    body: Body,
) -> Result<(), EngineError> {
    let query = check_query(query)?;
    let sid = query
        .sid
        .as_deref()
        .ok_or(EngineError::new(ErrorCode::BadHandshakeMethod))?;
    // The body is read only for a live session: a stranger's upload is refused unread.
    let session = polling_session(node, sid)?;
    let limit = max_message(node, &session);
    // A declared length over the limit is refused before a byte of it is waited for.
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    let read = match usize::try_from(declared) {
        Ok(declared) if declared <= limit => axum::body::to_bytes(body, limit).await,
        _ => Err(axum::Error::new("payload over the size limit")),
    };
    let body = match read {
        Ok(body) => body,
        Err(e) if crate::server::is_body_timeout(&e) => {
            tracing::info!(sid, "closing a polling session: payload not sent in time");
            session.close(CloseReason::TransportError);
            return Err(EngineError::with(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                "payload not sent in time",
            ));
        }
        Err(_) => {
            node.metrics
                .errors
                .with_label_values(&["message_too_large"])
                .inc();
            tracing::info!(
                sid,
                "closing a polling session: payload over the size limit"
            );
            session.close(CloseReason::MessageTooLarge);
            return Err(EngineError::with(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BadRequest,
                "payload too large",
            ));
        }
    };
    let protocol_error = |what: &str| {
        node.metrics.errors.with_label_values(&["protocol"]).inc();
        tracing::info!(
            sid,
            problem = what,
            "closing a polling session: protocol error"
        );
        session.close(CloseReason::ProtocolError);
        EngineError::with(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            what.to_owned(),
        )
    };
    let text = std::str::from_utf8(&body).map_err(|_| protocol_error("payload is not UTF-8"))?;
    for packet in engineio::decode_payload(text) {
        let packet = packet.map_err(|e| protocol_error(&e.to_string()))?;
        match on_packet(node, &session, packet).await {
            // The rest of a payload is not for a closed session (a flood of refused connects).
            Ok(()) if session.outbox.close_reason().is_none() => {}
            Ok(()) => break,
            // Nothing is left to deliver after a close that drops the queue (the client's
            // own close): the session ends now, so its next request answers 400.
            Err(reason) if !reason.flushes() => {
                finish(node, &session, reason);
                break;
            }
            Err(reason) => {
                session.close(reason);
                break;
            }
        }
    }
    Ok(())
}

/// Handles one packet from the client, whatever the transport. An error closes the session.
async fn on_packet(node: &Node, session: &Session, packet: Packet<'_>) -> Result<(), CloseReason> {
    match packet {
        Packet::Pong(_) => {
            session.pong.store(true, Ordering::Release);
            Ok(())
        }
        Packet::Message(text) => {
            let result = socketio::on_message(node, session, text).await;
            if session.sockets.ever_connected() {
                authenticated(node, session);
            }
            result
        }
        Packet::Binary(data) => socketio::on_binary(node, session, &data),
        Packet::Close => Err(CloseReason::ClientClosed),
        Packet::Noop | Packet::Upgrade | Packet::Ping(_) => Ok(()),
        Packet::Open => {
            node.metrics.errors.with_label_values(&["protocol"]).inc();
            tracing::info!(sid = %session.sid, "client sent an open packet");
            Err(CloseReason::ProtocolError)
        }
    }
}

/// What the heartbeat asks for when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping now.
    Ping,
    /// Nothing yet.
    Wait,
    /// The client did not answer the last ping in time.
    TimedOut,
}

/// Engine.IO's server-side heartbeat: a ping every interval, a pong expected within the timeout.
#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    awaiting_since: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat whose first ping is due at `first_ping`.
    pub fn new(first_ping: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            next_ping: first_ping,
            awaiting_since: None,
        }
    }

    /// When the timer should fire next.
    pub fn deadline(&self) -> Instant {
        self.awaiting_since
            .map_or(self.next_ping, |sent| sent + self.timeout)
    }

    /// Advances the heartbeat; `pong` is cleared when a ping is sent.
    pub fn on_timer(&mut self, now: Instant, pong: &AtomicBool) -> Beat {
        if let Some(sent) = self.awaiting_since {
            if now < sent + self.timeout {
                return Beat::Wait;
            }
            if !pong.load(Ordering::Acquire) {
                return Beat::TimedOut;
            }
            self.awaiting_since = None;
            self.next_ping = sent + self.interval;
        }
        if now < self.next_ping {
            return Beat::Wait;
        }
        pong.store(false, Ordering::Release);
        self.awaiting_since = Some(now);
        Beat::Ping
    }
}

/// When a session's timer must fire next: at the heartbeat's deadline, or at the connect
/// deadline while no namespace is connected, whichever comes first.
fn next_wake(node: &Node, session: &Session, heartbeat: &Heartbeat) -> Instant {
    let deadline = heartbeat.deadline();
    if session.sockets.ever_connected() {
        deadline
    } else {
        deadline.min(session.created + node.config.connect_timeout)
    }
}

/// Runs a heartbeat step and the connect timeout; returns a reason to close, if any.
fn beat(node: &Node, session: &Session, heartbeat: &mut Heartbeat) -> Option<CloseReason> {
    let now = Instant::now();
    if !session.sockets.ever_connected()
        && now.duration_since(session.created) >= node.config.connect_timeout
    {
        return Some(CloseReason::ConnectTimeout);
    }
    match heartbeat.on_timer(now, &session.pong) {
        Beat::Ping => {
            session.send(Frame::from(engineio::PING));
            None
        }
        Beat::Wait => None,
        Beat::TimedOut => Some(CloseReason::PingTimeout),
    }
}

/// Keeps a polling session's heartbeat until it closes or a websocket takes it over.
async fn polling_heartbeat(node: Arc<Node>, session: Arc<Session>) {
    let config = &node.config;
    let mut heartbeat = Heartbeat::new(
        Instant::now() + config.ping_interval,
        config.ping_interval,
        config.ping_timeout,
    );
    let reason = loop {
        tokio::select! {
            reason = session.outbox.closed() => break reason,
            () = tokio::time::sleep_until(next_wake(&node, &session, &heartbeat)) => {
                if session.transport() == Transport::WebSocket {
                    return;
                }
                if let Some(reason) = beat(&node, &session, &mut heartbeat) {
                    break reason;
                }
            }
        }
    };
    if session.transport() != Transport::WebSocket {
        // A client that let its ping time out is gone: Engine.IO ends the session at once, so
        // its next poll answers 400 instead of taking the unanswered ping.
        if reason != CloseReason::PingTimeout
            && reason.flushes()
            && session.outbox.queued_frames() > 0
        {
            // Left for the client's next poll, which ends the session when it takes them.
            tokio::time::sleep(CLOSE_FLUSH_TIMEOUT).await;
        }
        finish(&node, &session, reason);
    }
}

/// The largest websocket message or polling payload `session` may send now: small until it
/// has connected a namespace, so a stranger pins kilobytes, not the full message size.
fn max_message(node: &Node, session: &Session) -> usize {
    let max = node.config.max_message_size;
    if session.sockets.ever_connected() {
        max
    } else {
        max.min(PRE_CONNECT_MAX_MESSAGE)
    }
}

fn websocket(
    node: Arc<Node>,
    ws: Upgrade,
    query: EngineQuery,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Response, EngineError> {
    let response = match &query.sid {
        None => {
            let session = open_session(&node, Transport::WebSocket, &query, headers, remote)?;
            ws.accept(max_message(&node, &session), move |socket| async move {
                let mut socket = match socket {
                    // Boxed, and the preamble too: what stays in every connection's task is
                    // then the session loop alone.
                    Ok(socket) => Box::new(socket),
                    Err(e) => {
                        tracing::info!(error = %e, "websocket upgrade failed");
                        return finish(&node, &session, CloseReason::TransportError);
                    }
                };
                if let Some(heartbeat) =
                    Box::pin(open_websocket(&node, &session, &mut socket)).await
                {
                    run_websocket(&node, &session, socket, heartbeat).await;
                }
            })
        }
        Some(sid) => {
            let session = node
                .sessions
                .get(sid)
                .ok_or(EngineError::new(ErrorCode::UnknownSid))?;
            if session.transport() != Transport::Polling {
                // Engine.IO accepts a websocket for a session already upgraded (or upgrading)
                // and closes it at once; the session goes on over its own transport.
                return Ok(ws.accept(PRE_CONNECT_MAX_MESSAGE, |socket| async move {
                    let Ok(mut socket) = socket else { return };
                    let close = socket.close(framing::POLICY_VIOLATION, "session already upgraded");
                    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, close).await;
                }));
            }
            ws.accept(max_message(&node, &session), move |socket| async move {
                // A failed upgrade leaves the session on polling.
                let Ok(socket) = socket else { return };
                let mut socket = Box::new(socket);
                if let Some(heartbeat) = Box::pin(upgrade(&node, &session, &mut socket)).await {
                    run_websocket(&node, &session, socket, heartbeat).await;
                }
            })
        }
    };
    Ok(response)
}

/// A fresh websocket session: sends the open packet; the session loop follows.
async fn open_websocket(
    node: &Node,
    session: &Session,
    socket: &mut WebSocket,
) -> Option<Heartbeat> {
    let open = Frame::from(handshake_packet(node, &session.sid, &[]));
    if socket.send(&open).await.is_err() {
        finish(node, session, CloseReason::TransportError);
        return None;
    }
    let config = &node.config;
    let heartbeat = Heartbeat::new(
        Instant::now() + config.ping_interval,
        config.ping_interval,
        config.ping_timeout,
    );
    Some(heartbeat)
}

/// A polling session moving to a websocket: `2probe` → `3probe`, release the pending poll with
/// a noop, then `5` switches the session over; the session loop follows.
async fn upgrade(node: &Node, session: &Session, socket: &mut WebSocket) -> Option<Heartbeat> {
    session.set_transport(Transport::Upgrading);
    let probe = async {
        let mut probed = false;
        while let Some(Ok(message)) = socket.recv().await {
            let Message::Text(text) = message else {
                continue;
            };
            match engineio::decode(&text) {
                Ok(Packet::Ping("probe")) if !probed => {
                    socket.send(&Frame::from(engineio::PONG_PROBE)).await.ok()?;
                    session.send(Frame::from(engineio::NOOP));
                    probed = true;
                }
                Ok(Packet::Upgrade) if probed => return Some(()),
                _ => return None,
            }
        }
        None
    };
    let upgraded = tokio::select! {
        result = tokio::time::timeout(UPGRADE_TIMEOUT, probe) => matches!(result, Ok(Some(()))),
        _ = session.outbox.closed() => false,
    };
    if !upgraded || session.outbox.close_reason().is_some() {
        session.set_transport(Transport::Polling);
        tracing::debug!(sid = %session.sid, "upgrade abandoned; staying on polling");
        return None;
    }
    session.set_transport(Transport::WebSocket);
    node.metrics.upgraded();
    // The polling heartbeat stops now; ping at once so the client's timer never runs out.
    let config = &node.config;
    let heartbeat = Heartbeat::new(Instant::now(), config.ping_interval, config.ping_timeout);
    Some(heartbeat)
}

/// Writes the drained frames in one vectored write (after the write delay, when set). False when
/// the socket failed, or the outbox was closed while the socket would not take more bytes
/// (a slow consumer is cut off even then).
pub async fn write_queued(
    node: &Node,
    outbox: &Outbox,
    socket: &mut WebSocket,
    batch: &mut VecDeque<Frame>,
) -> bool {
    if !node.config.write_delay.is_zero() {
        // Coalescing: let the frames that follow join this write. Boxed so the timer is not
        // part of every idle connection's task.
        Box::pin(tokio::time::sleep(node.config.write_delay)).await;
        outbox.try_drain(batch);
    }
    let write = socket.write_frames(batch);
    // Only a close that drops the queue (slow consumer) cuts the write short; after one that
    // flushes (protocol error, shutdown) the last frames still go out.
    let cut_off = async {
        if outbox.closed().await.flushes() {
            std::future::pending::<()>().await;
        }
    };
    let written = tokio::select! {
        result = write => result.is_ok(),
        () = cut_off => false,
    };
    outbox.recycle(batch);
    written
}

/// Tells the client why its socket closes, when the reason is one to tell; code 1001 (going
/// away) and 1008/1009 make clients reconnect. A client's own close frame is answered, unless
/// the close cut a frame short: a close frame after a partial one would be read as its payload.
pub async fn close_websocket(socket: &mut WebSocket, outbox: &Outbox, reason: CloseReason) {
    let code = match reason {
        CloseReason::ShuttingDown => framing::GOING_AWAY,
        CloseReason::MessageTooLarge => framing::TOO_BIG,
        _ if reason.flushes() => framing::POLICY_VIOLATION,
        _ if socket.peer_closed() && !outbox.cut() => framing::NORMAL,
        _ => return,
    };
    let close = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, socket.close(code, reason.label()));
    // Boxed: it runs once per connection and would otherwise enlarge every idle task.
    let _ = Box::pin(close).await;
}

/// Why a websocket read ended the session.
pub fn read_failed(error: &ReadError) -> CloseReason {
    match error {
        ReadError::Frame(FrameError::TooLarge(_)) => CloseReason::MessageTooLarge,
        ReadError::Frame(_) | ReadError::Unfinished(_) => CloseReason::ProtocolError,
        ReadError::Io(_) => CloseReason::TransportError,
    }
}

/// The websocket session loop: write what is queued (all of it in one write), read packets,
/// keep the heartbeat. Ends the session when it returns.
async fn run_websocket(
    node: &Node,
    session: &Session,
    mut socket: Box<WebSocket>,
    mut heartbeat: Heartbeat,
) {
    let mut batch = VecDeque::new();
    attach(node, &session.outbox, &socket);
    // The session may have connected over polling before it upgraded.
    socket.set_max_message(max_message(node, session));
    socket.set_message_timeout(node.config.message_timeout);
    // One timer for the whole session, moved only when the heartbeat's deadline does: a timer
    // made per loop turn costs a registration and a removal on every write.
    let timer = tokio::time::sleep_until(next_wake(node, session, &heartbeat));
    tokio::pin!(timer);
    let reason = loop {
        tokio::select! {
            drained = session.outbox.drain(&mut batch) => match drained {
                Drained::Frames => {
                    if !write_queued(node, &session.outbox, &mut socket, &mut batch).await {
                        break session.outbox.close_reason().unwrap_or(CloseReason::TransportError);
                    }
                }
                Drained::Closed(reason) => break reason,
            },
            message = socket.recv() => {
                let result = match message {
                    Some(Ok(Message::Text(text))) => match engineio::decode(&text) {
                        // Boxed: handling a packet (auth, subscribe) is a deep future that
                        // would otherwise sit inline in every idle connection's task.
                        Ok(packet) => Box::pin(on_packet(node, session, packet)).await,
                        Err(e) => {
                            node.metrics.errors.with_label_values(&["protocol"]).inc();
                            tracing::info!(sid = %session.sid, error = %e, "closing a websocket session: bad packet");
                            Err(CloseReason::ProtocolError)
                        }
                    },
                    Some(Ok(Message::Binary(data))) => socketio::on_binary(node, session, &data),
                    // Never read here (this endpoint keeps whole every message under its limit).
                    Some(Ok(Message::Discarded(_))) => Err(CloseReason::MessageTooLarge),
                    Some(Ok(Message::Close(_))) | None => Err(CloseReason::ClientClosed),
                    Some(Ok(Message::Ping(payload))) => session.outbox.push(Frame::pong(&payload)).map_err(|_| CloseReason::SlowConsumer),
                    Some(Ok(Message::Pong)) => Ok(()),
                    Some(Err(e)) => {
                        // Resets are routine on mobile networks.
                        tracing::debug!(sid = %session.sid, error = %e, "closing a websocket session: read failed");
                        Err(read_failed(&e))
                    }
                };
                if let Err(reason) = result {
                    session.close(reason);
                }
                // A CONNECT just accepted lifts the limit from the next frame on.
                socket.set_max_message(max_message(node, session));
            },
            () = &mut timer => {
                if let Some(reason) = beat(node, session, &mut heartbeat) {
                    session.close(reason);
                }
                timer.as_mut().reset(next_wake(node, session, &heartbeat));
            },
        }
    };
    session.outbox.detach();
    close_websocket(&mut socket, &session.outbox, reason).await;
    finish(node, session, reason);
}

/// Lets broadcasts write to the socket directly, unless direct writes are off or writes are
/// to be coalesced (`SWITCHBOARD_WRITE_DELAY`), which only the socket's task can do.
pub fn attach(node: &Node, outbox: &Outbox, socket: &WebSocket) {
    let config = &node.config;
    if config.write_delay.is_zero() && node.hub.pacing().enabled() {
        outbox.attach(socket.stream());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_pings_then_expects_a_pong() {
        let start = Instant::now();
        let (interval, timeout) = (Duration::from_secs(25), Duration::from_secs(20));
        let pong = AtomicBool::new(false);
        let mut hb = Heartbeat::new(start + interval, interval, timeout);
        assert_eq!(hb.deadline(), start + interval);
        assert_eq!(hb.on_timer(start, &pong), Beat::Wait);
        assert_eq!(hb.on_timer(start + interval, &pong), Beat::Ping);
        assert_eq!(hb.deadline(), start + interval + timeout);
        pong.store(true, Ordering::Release);
        // The pong came: the next ping is one interval after the last one.
        assert_eq!(hb.on_timer(start + interval + timeout, &pong), Beat::Wait);
        assert_eq!(hb.deadline(), start + interval * 2);
        assert_eq!(hb.on_timer(start + interval * 2, &pong), Beat::Ping);
        assert!(
            !pong.load(Ordering::Acquire),
            "sending a ping clears the pong"
        );
        assert_eq!(
            hb.on_timer(start + interval * 2 + timeout, &pong),
            Beat::TimedOut
        );
    }

    #[test]
    fn heartbeat_with_timeout_longer_than_interval() {
        let start = Instant::now();
        let pong = AtomicBool::new(false);
        let mut hb = Heartbeat::new(start, Duration::from_secs(1), Duration::from_secs(3));
        assert_eq!(hb.on_timer(start, &pong), Beat::Ping);
        pong.store(true, Ordering::Release);
        assert_eq!(
            hb.on_timer(start + Duration::from_secs(3), &pong),
            Beat::Ping
        );
    }
}
