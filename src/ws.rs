//! The plain WebSocket endpoint (`/ws` and its aliases): JSON `{type, payload}` frames on the
//! same hub and channels as Socket.IO, so one broadcast reaches both kinds of client.
//!
//! The token is checked before the upgrade (HTTP 401 with a JSON reason). After it, each
//! socket is one task: queued frames out, client frames in, WebSocket pings, and the typing
//! states it started. A client's mistakes get `ERROR` frames and the socket stays open, up to
//! `SWITCHBOARD_WS_MAX_ERRORS`; then it is closed with code 1008.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::auth::bearer;
use crate::backend::ForwardError;
use crate::channel::Refusal;
use crate::cluster::ConnectRefusal;
use crate::error::ApiError;
use crate::hub::{Codec, JoinError, Member};
use crate::limit::Bucket;
use crate::metrics::{Limit, Protocol};
use crate::node::Node;
use crate::outbox::{CloseReason, Drained, Frame, Outbox};
use crate::protocol::json::{self, ErrorCode};
use crate::protocol::websocket::Message;
use crate::transport::websocket::{NotAnUpgrade, Upgrade, WebSocket};
use crate::transport::{close_websocket, origin_allowed, read_failed};
/// The `transport` label of these sockets.
const TRANSPORT: &str = "websocket";

/// The query string of the upgrade request.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws`: checks origin, rate, token and limits, then upgrades.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<Upgrade, NotAnUpgrade>,
) -> Response {
    let span = tracing::debug_span!(
        "ws.connect",
        enduser.id = tracing::field::Empty,
        switchboard.refusal = tracing::field::Empty,
    );
    match accept(&node, remote, query, &headers, ws)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(error) => {
            span.record("switchboard.refusal", error.code);
            error.into_response()
        }
    }
}

async fn accept(
    node: &Arc<Node>,
    remote: SocketAddr,
    query: Result<Query<WsQuery>, QueryRejection>,
    headers: &HeaderMap,
    ws: Result<Upgrade, NotAnUpgrade>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if !origin_allowed(&node.config.auth.allowed_origins, headers, &node.metrics) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "origin not allowed",
        ));
    }
    node.admit(remote, headers).map_err(|refusal| {
        ApiError::new(refusal.status(), "connection_refused", refusal.message())
    })?;
    let ws = ws.map_err(|_| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "expected a websocket upgrade",
        )
    })?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned)
        .or_else(|| query.ok().and_then(|q| q.0.token).filter(|t| !t.is_empty()));
    let principal = node
        .verify_token(token)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
    tracing::Span::current().record("enduser.id", &*principal.user_id);
    node.cluster
        .connect(&principal.user_id)
        .await
        .map_err(|refusal| {
            node.metrics
                .errors
                .with_label_values(&[refusal.label()])
                .inc();
            let (status, code) = match refusal {
                ConnectRefusal::TooMany(_) => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_connections")
                }
                ConnectRefusal::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            ApiError::new(status, code, refusal.client_message())
        })?;
    let id = crate::id::random_id().map_err(|_| {
        node.cluster.disconnect(&principal.user_id);
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no randomness available",
        )
    })?;
    let outbox = Arc::new(Outbox::new(node.config.limits.send_queue_bytes));
    if let Some(welcome) = &node.config.server.welcome {
        let mut out = String::with_capacity(welcome.get().len() + 32);
        crate::protocol::json::write_frame(&mut out, "welcome", None, welcome, None);
        // The first frame of a new, empty queue: it cannot overflow.
        let _ = outbox.push(Frame::from(out));
    }
    let socket = Arc::new(Member::new(id, principal, Codec::Json, outbox));
    node.plain.insert(socket.id.clone(), socket.clone());
    node.connected(&socket);
    node.metrics.opened(Protocol::Json, TRANSPORT);
    node.metrics.handshake(Protocol::Json, started.elapsed());
    tracing::debug!(socket = %socket.id, user = %socket.principal.user_id, "json socket connected");

    let node = node.clone();
    Ok(
        ws.accept(node.config.limits.max_message_size, move |ws| async move {
            match ws {
                Ok(mut ws) => {
                    // Frames over the JSON limit get an ERROR and are not buffered meanwhile.
                    ws.discard_over(node.config.json.ws_max_frame_size);
                    ws.set_message_timeout(node.config.limits.message_timeout);
                    Box::pin(run(&node, socket, Box::new(ws))).await
                }
                Err(e) => {
                    tracing::info!(error = %e, "websocket upgrade failed");
                    finish(&node, &socket, CloseReason::TransportError);
                }
            }
        }),
    )
}

/// Releases a socket once: its channels, presence, typing states and connection slot.
fn finish(node: &Node, socket: &Member, reason: CloseReason) {
    if node.plain.remove(&socket.id).is_none() {
        return;
    }
    socket.outbox.close(reason);
    node.disconnect(socket);
    node.metrics.closed(Protocol::Json, TRANSPORT, reason);
    tracing::debug!(socket = %socket.id, reason = reason.label(), "json socket closed");
}

/// A typing state the socket started.
struct Typing {
    channel: Arc<str>,
    /// `roomId` or `groupId`, as the client named it.
    key: &'static str,
    id: String,
    until: Instant,
}

/// What one socket's task keeps besides the socket.
struct Conn {
    socket: Arc<Member>,
    frames: Bucket,
    typing_rate: Bucket,
    errors: u32,
    next_ping: Instant,
    pong_due: Option<Instant>,
    typing: Vec<Typing>,
}

async fn run(node: &Node, socket: Arc<Member>, mut ws: Box<WebSocket>) {
    let now = Instant::now();
    let mut conn = Conn {
        frames: Bucket::new(node.config.json.ws_frame_rate, now),
        typing_rate: Bucket::new(node.config.json.typing_rate, now),
        errors: 0,
        next_ping: now + node.config.json.ws_ping_interval,
        pong_due: None,
        typing: Vec::new(),
        socket,
    };
    // Every socket hears its user's own channel, as Socket.IO sockets do.
    let own = crate::channel::user_channel(&conn.socket.principal.user_id);
    // Boxed, like every step that is not the idle loop itself: an unboxed future would stay
    // inline in every connection's task (the difference is kilobytes per idle socket).
    if let Err(e) = Box::pin(node.join(&conn.socket, &own)).await {
        tracing::warn!(socket = %conn.socket.id, error = %e, "could not join the user's own channel");
    }
    // And its rooms and groups: a chat client need not subscribe to them.
    Box::pin(node.join_memberships(&conn.socket)).await;
    let outbox = conn.socket.outbox.clone();
    let mut batch = VecDeque::new();
    node.writes().attach(&outbox, &ws);
    let timer = tokio::time::sleep_until(conn.deadline().into());
    tokio::pin!(timer);
    let reason = loop {
        tokio::select! {
            drained = outbox.drain(&mut batch) => match drained {
                Drained::Frames => {
                    if !node.writes().write_queued(&outbox, &mut ws, &mut batch).await {
                        break outbox.close_reason().unwrap_or(CloseReason::TransportError);
                    }
                }
                Drained::Closed(reason) => break reason,
            },
            message = ws.recv() => {
                let result = match message {
                    Some(Ok(Message::Text(text))) => Box::pin(conn.on_text(node, &text)).await,
                    Some(Ok(Message::Binary(_))) => {
                        conn.error(node, ErrorCode::InvalidFrame, "binary frames are not supported", None)
                    }
                    Some(Ok(Message::Discarded(_))) => conn.on_discarded(node),
                    Some(Ok(Message::Pong)) => {
                        conn.pong_due = None;
                        Ok(())
                    }
                    Some(Ok(Message::Ping(payload))) => outbox.push(Frame::pong(&payload)).map_err(|_| CloseReason::SlowConsumer),
                    Some(Ok(Message::Close(_))) | None => Err(CloseReason::ClientClosed),
                    Some(Err(e)) => {
                        tracing::debug!(socket = %conn.socket.id, error = %e, "closing a json socket: read failed");
                        Err(read_failed(&e))
                    }
                };
                if let Err(reason) = result {
                    outbox.close(reason);
                }
                timer.as_mut().reset(conn.deadline().into());
            },
            () = &mut timer => {
                let now = Instant::now();
                if conn.pong_due.is_some_and(|due| due <= now) {
                    outbox.close(CloseReason::PingTimeout);
                } else if conn.next_ping <= now {
                    // A refused push has closed the outbox already.
                    let _ = outbox.push(Frame::ping());
                    conn.next_ping = now + node.config.json.ws_ping_interval;
                    conn.pong_due = Some(now + node.config.json.ws_ping_timeout);
                }
                if conn.typing.iter().any(|t| t.until <= now) {
                    Box::pin(conn.end_typing(node, |t| t.until <= now)).await;
                }
                timer.as_mut().reset(conn.deadline().into());
            },
        }
    };
    if !conn.typing.is_empty() {
        Box::pin(conn.end_typing(node, |_| true)).await;
    }
    outbox.detach();
    close_websocket(&mut ws, &outbox, reason).await;
    finish(node, &conn.socket, reason);
}

/// Fields of the payloads clients send.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    channel: Option<String>,
    #[serde(default)]
    auth: Option<Value>,
    event: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// `AUTH_REFRESH`'s new token.
    token: Option<String>,
    room_id: Option<Value>,
    group_id: Option<Value>,
    is_typing: Option<bool>,
}

impl Conn {
    /// The next time the task must wake: a ping, a pong deadline, or a typing expiry.
    fn deadline(&self) -> Instant {
        let mut next = self.next_ping;
        if let Some(due) = self.pong_due {
            next = next.min(due);
        }
        for typing in &self.typing {
            next = next.min(typing.until);
        }
        next
    }

    fn send(&self, write: impl FnOnce(&mut String)) {
        let mut out = String::with_capacity(64);
        write(&mut out);
        // A refused push closed the socket as a slow consumer; the task will notice.
        let _ = self.socket.outbox.push(Frame::from(out));
    }

    fn reply(
        &self,
        kind: &str,
        channel: Option<&str>,
        payload: &Value,
        reference: Option<&RawValue>,
    ) {
        // A Value always serialises.
        let Ok(payload) = serde_json::value::to_raw_value(payload) else {
            return;
        };
        self.send(|out| json::write_frame(out, kind, channel, &payload, reference));
    }

    /// Sends an `ERROR` frame; too many of them close the socket.
    fn error(
        &mut self,
        node: &Node,
        code: ErrorCode,
        message: &str,
        reference: Option<&RawValue>,
    ) -> Result<(), CloseReason> {
        // Rate-limit refusals are counted by the limit, in `rate_limited_total`.
        if code != ErrorCode::RateLimited {
            node.metrics.errors.with_label_values(&["json_frame"]).inc();
        }
        self.send(|out| json::write_error(out, code, message, reference));
        self.errors += 1;
        if self.errors > node.config.json.ws_max_errors {
            tracing::info!(socket = %self.socket.id, errors = self.errors, "closing a json socket: too many bad frames");
            return Err(CloseReason::ProtocolError);
        }
        Ok(())
    }

    /// Counts a frame against the frame rate; the answer to give instead when it is over.
    fn over_rate(&mut self, node: &Node) -> Option<Result<(), CloseReason>> {
        if self
            .frames
            .take(node.config.json.ws_frame_rate, Instant::now())
        {
            return None;
        }
        node.metrics.rate_limited(Limit::WsFrame);
        Some(self.error(
            node,
            ErrorCode::RateLimited,
            "too many frames, slow down",
            None,
        ))
    }

    /// A frame over `SWITCHBOARD_WS_MAX_FRAME_SIZE`, dropped as it arrived.
    fn on_discarded(&mut self, node: &Node) -> Result<(), CloseReason> {
        if let Some(answer) = self.over_rate(node) {
            return answer;
        }
        let message = format!(
            "frame larger than {} bytes",
            node.config.json.ws_max_frame_size
        );
        self.error(node, ErrorCode::FrameTooLarge, &message, None)
    }

    async fn on_text(&mut self, node: &Node, text: &str) -> Result<(), CloseReason> {
        if let Some(answer) = self.over_rate(node) {
            return answer;
        }
        let frame = match json::decode(text) {
            Ok(frame) => frame,
            Err(e) => return self.error(node, e.code, &e.message, None),
        };
        let reference = frame.reference;
        let payload: Payload<'_> = match frame.payload.map(|p| serde_json::from_str(p.get())) {
            None => Payload::default(),
            Some(Ok(payload)) => payload,
            Some(Err(_)) => {
                return self.error(
                    node,
                    ErrorCode::MissingField,
                    "payload must be an object",
                    reference,
                );
            }
        };
        let kind = frame.kind.as_ref();
        let label = match kind {
            "PING" => "ping",
            "SUBSCRIBE" => "subscribe",
            "UNSUBSCRIBE" => "unsubscribe",
            "TYPING" => "typing",
            "CLIENT_EVENT" => "client_event",
            "EVENT" => "event",
            _ => "other",
        };
        node.metrics.messages_in.inc(Protocol::Json, label);
        match kind {
            "PING" => {
                self.reply("PONG", None, &json!({}), reference);
                Ok(())
            }
            "SUBSCRIBE" => self.subscribe(node, payload, reference).await,
            "UNSUBSCRIBE" => {
                let Some(channel) = payload.channel else {
                    return self.error(
                        node,
                        ErrorCode::MissingField,
                        "UNSUBSCRIBE needs {channel}",
                        reference,
                    );
                };
                node.leave(&self.socket, &channel);
                self.reply(
                    "UNSUBSCRIBED",
                    Some(&channel),
                    &json!({"channel": channel}),
                    reference,
                );
                Ok(())
            }
            "TYPING" => self.typing(node, payload, reference).await,
            "EVENT" => self.forward(node, payload, reference),
            "AUTH_REFRESH" => match node.refresh_token(&[&self.socket], payload.token).await {
                Ok(expires) => {
                    self.reply(
                        "AUTH_REFRESHED",
                        None,
                        &json!({"expires": expires}),
                        reference,
                    );
                    Ok(())
                }
                Err(error) => self.error(node, ErrorCode::InvalidToken, &error, reference),
            },
            "CLIENT_EVENT" => {
                let (Some(channel), Some(event)) = (payload.channel, payload.event) else {
                    return self.error(
                        node,
                        ErrorCode::MissingField,
                        "CLIENT_EVENT needs {channel, event, data}",
                        reference,
                    );
                };
                let data = payload.data.unwrap_or(RawValue::NULL);
                match node.whisper(&self.socket, &channel, &event, data).await {
                    Ok(()) => Ok(()),
                    Err(refusal) => {
                        let code = match refusal {
                            crate::channel::WhisperRefusal::NotSubscribed => {
                                ErrorCode::NotSubscribed
                            }
                            crate::channel::WhisperRefusal::Unavailable => ErrorCode::Unavailable,
                            _ => ErrorCode::Forbidden,
                        };
                        self.error(node, code, &refusal.to_string(), reference)
                    }
                }
            }
            other => {
                let message = format!("unknown type `{other}`");
                self.error(node, ErrorCode::UnknownType, &message, reference)
            }
        }
    }

    /// `EVENT {event, data}`: forwarded to the back-end; its answer comes back as `REPLY`.
    fn forward(
        &mut self,
        node: &Node,
        payload: Payload<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), CloseReason> {
        if node.backend.is_none() {
            return self.error(
                node,
                ErrorCode::UnknownType,
                "EVENT needs a back-end (SWITCHBOARD_BACKEND_URL)",
                reference,
            );
        }
        let Some(event) = payload.event else {
            return self.error(
                node,
                ErrorCode::MissingField,
                "EVENT needs {event, data}",
                reference,
            );
        };
        let data = payload.data.map_or_else(
            || RawValue::from_string("null".into()),
            |data| Ok(data.to_owned()),
        );
        let Ok(data) = data else { return Ok(()) };
        let reference = reference.map(ToOwned::to_owned);
        let outbox = self.socket.outbox.clone();
        node.forward(&self.socket, event, data, move |answer| {
            let mut out = String::with_capacity(64);
            match answer {
                Ok(answer) => {
                    json::write_frame(&mut out, "REPLY", None, &answer, reference.as_deref())
                }
                Err(e) => {
                    let code = match e {
                        ForwardError::NotAllowed(_) => ErrorCode::Forbidden,
                        ForwardError::Busy => ErrorCode::RateLimited,
                        _ => ErrorCode::BackendError,
                    };
                    json::write_error(&mut out, code, &e.to_string(), reference.as_deref());
                }
            }
            let _ = outbox.push(Frame::from(out));
        });
        Ok(())
    }

    async fn subscribe(
        &mut self,
        node: &Node,
        payload: Payload<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), CloseReason> {
        let Some(channel) = payload.channel else {
            return self.error(
                node,
                ErrorCode::MissingField,
                "SUBSCRIBE needs {channel}",
                reference,
            );
        };
        match node
            .subscribe(&self.socket, &channel, payload.auth.as_ref())
            .await
        {
            Ok(members) => {
                let mut answer = json!({"channel": channel});
                if let Some(members) = members {
                    let members: Vec<Value> =
                        members.iter().map(|m| json::member_summary(m)).collect();
                    answer["members"] = members.into();
                }
                self.reply("SUBSCRIBED", Some(&channel), &answer, reference);
                Ok(())
            }
            Err(refusal) => {
                let code = match refusal {
                    Refusal::InvalidName(_) => ErrorCode::InvalidChannel,
                    Refusal::Forbidden => ErrorCode::Forbidden,
                    Refusal::Limit(JoinError::TooMany(_)) => ErrorCode::SubscriptionLimit,
                    Refusal::Unavailable(_) => ErrorCode::Unavailable,
                    Refusal::RateLimited => ErrorCode::RateLimited,
                };
                let message = format!("{channel}: {refusal}");
                self.error(node, code, &message, reference)
            }
        }
    }

    async fn typing(
        &mut self,
        node: &Node,
        payload: Payload<'_>,
        reference: Option<&RawValue>,
    ) -> Result<(), CloseReason> {
        let target = match (&payload.room_id, &payload.group_id) {
            (Some(room), None) => crate::protocol::id_text(room).map(|id| ("roomId", "room:", id)),
            (None, Some(group)) => {
                crate::protocol::id_text(group).map(|id| ("groupId", "group:", id))
            }
            _ => None,
        };
        let (Some((key, prefix, id)), Some(is_typing)) = (target, payload.is_typing) else {
            return self.error(
                node,
                ErrorCode::MissingField,
                "TYPING needs {roomId | groupId, isTyping}",
                reference,
            );
        };
        let channel = format!("{prefix}{id}");
        if !self.socket.is_in(&channel) {
            return self.error(
                node,
                ErrorCode::NotSubscribed,
                "join the room before typing in it",
                reference,
            );
        }
        let known = self.typing.iter().position(|t| *t.channel == *channel);
        if is_typing {
            // Refreshing a state already on is free; starting one is rate-limited.
            if known.is_none()
                && !self
                    .typing_rate
                    .take(node.config.json.typing_rate, Instant::now())
            {
                node.metrics.rate_limited(Limit::Typing);
                return self.error(
                    node,
                    ErrorCode::RateLimited,
                    "typing too often, slow down",
                    reference,
                );
            }
            let until = Instant::now() + node.config.json.typing_timeout;
            match known {
                Some(index) => self.typing[index].until = until,
                None => {
                    let channel: Arc<str> = channel.into();
                    self.typing.push(Typing {
                        channel: channel.clone(),
                        key,
                        id: id.clone(),
                        until,
                    });
                    self.announce_typing(node, &channel, key, &id, true).await;
                }
            }
        } else if let Some(index) = known {
            let typing = self.typing.swap_remove(index);
            self.announce_typing(node, &typing.channel, key, &typing.id, false)
                .await;
        }
        Ok(())
    }

    /// Sends `TYPING` to the room's other members on every node.
    async fn announce_typing(
        &self,
        node: &Node,
        channel: &str,
        key: &str,
        id: &str,
        is_typing: bool,
    ) {
        let principal = &self.socket.principal;
        let mut data = json!({
            "userId": &*principal.user_id,
            "userName": principal.claim("name"),
            "isTyping": is_typing,
        });
        data[key] = Value::from(id);
        let Ok(data) = RawValue::from_string(data.to_string()) else {
            return;
        };
        // A failed publish is logged and counted by `publish`.
        let _ = node
            .publish_from(&self.socket, channel, "TYPING", &data)
            .await;
    }

    /// Ends the typing states `expired` picks, telling the room.
    async fn end_typing(&mut self, node: &Node, expired: impl Fn(&Typing) -> bool) {
        let (ended, kept): (Vec<Typing>, Vec<Typing>) =
            self.typing.drain(..).partition(|t| expired(t));
        self.typing = kept;
        for typing in ended {
            self.announce_typing(node, &typing.channel, typing.key, &typing.id, false)
                .await;
        }
    }
}
