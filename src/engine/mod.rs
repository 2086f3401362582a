//! The Engine.IO v4 server: sessions over HTTP long-polling and websocket, the upgrade from
//! one to the other, and ping/pong. It knows nothing of what the messages mean: each session's
//! messages go to a [`Handler`] (Socket.IO, [`crate::socketio`], in the node), which also
//! admits new sessions and says when one is connected.
//!
//! A websocket session is served by one task that reads, writes and keeps the heartbeat.
//! A polling session has a small heartbeat task and is otherwise driven by its HTTP requests;
//! when it upgrades, the websocket task takes over. Whoever ends a session calls
//! `Engine::finish`, which is idempotent.

mod heartbeat;
mod http;
mod polling;
mod websocket;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use dashmap::DashMap;
use tokio::time::Instant;

use crate::id::random_id;
use crate::metrics::{Metrics, Protocol};
use crate::outbox::{CloseReason, Frame, Outbox, Queued};
use crate::protocol::engineio::{self, ErrorCode, Handshake, Packet};
use crate::transport::Writes;
use heartbeat::{Beat, Heartbeat};
use http::EngineError;
pub use http::routes;

/// What the layer above Engine.IO does with sessions: admits them, reads their messages, and
/// lets go of them when they end. Called with no lock held; a returned error closes the session.
pub trait Handler: Send + Sync + 'static {
    /// What the handler keeps for each session (Socket.IO: its sockets).
    type Sockets: Send + Sync + 'static;

    /// Admits a new session, or refuses it; what it keeps for the session if admitted.
    fn open(&self, opening: &Opening<'_>) -> Result<Self::Sockets, Refusal>;

    /// Whether the session is connected (Socket.IO: a namespace was). Until it is, the
    /// session must become so within [`Settings::connect_timeout`], and its messages are
    /// limited to [`Settings::pre_connect_max_payload`].
    fn connected(&self, sockets: &Self::Sockets) -> bool;

    /// A text message from the client.
    fn on_message(
        &self,
        session: &Session<Self::Sockets>,
        text: &str,
    ) -> impl Future<Output = Result<(), CloseReason>> + Send;

    /// A binary message from the client.
    fn on_binary(&self, session: &Session<Self::Sockets>, data: Vec<u8>)
    -> Result<(), CloseReason>;

    /// The session ended (once, whoever ended it).
    fn on_close(&self, session: &Session<Self::Sockets>);
}

/// The request that opens a session.
#[derive(Debug)]
pub struct Opening<'a> {
    /// The peer address.
    pub remote: SocketAddr,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request's URI, query included.
    pub uri: &'a Uri,
}

/// Why a handler refused a new session: the HTTP status and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The status to answer.
    pub status: StatusCode,
    /// The error message.
    pub message: &'static str,
}

/// How an [`Engine`] runs its sessions, built by its owner (the node, from its configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between pings.
    pub ping_interval: Duration,
    /// Time a pong may take.
    pub ping_timeout: Duration,
    /// Largest message or polling payload a connected session may send (the handshake's
    /// `maxPayload`).
    pub max_payload: usize,
    /// Largest a session may send before it is connected.
    pub pre_connect_max_payload: usize,
    /// Time a session has to be connected.
    pub connect_timeout: Duration,
    /// Time a websocket message may take to arrive once it has begun.
    pub message_timeout: Duration,
    /// Bytes a session's outbox may hold.
    pub send_queue_bytes: usize,
    /// How queued frames reach a websocket.
    pub writes: Writes,
    /// Origins browsers may connect from (empty or `*`: any).
    pub allowed_origins: HashSet<String>,
    /// Whether a poll the client abandons (its request dropped before the answer) ends the
    /// session, as Engine.IO's reference server does; otherwise the next poll carries on.
    pub close_abandoned_polls: bool,
}

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

/// One Engine.IO session.
#[derive(Debug)]
pub struct Session<S> {
    /// The session id.
    pub sid: Arc<str>,
    /// Frames waiting to be sent, whatever the transport.
    pub outbox: Arc<Outbox>,
    /// The peer address of the request that opened it.
    pub remote: SocketAddr,
    /// What the handler keeps for it.
    pub sockets: S,
    transport: AtomicU8,
    pong: AtomicBool,
    /// A GET is in flight (a poll).
    polling: AtomicBool,
    created: Instant,
}

impl<S> Session<S> {
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

/// The live sessions of an engine, shared with its owner (which counts and drains them).
#[derive(Debug)]
pub struct Sessions<S> {
    map: DashMap<Arc<str>, Arc<Session<S>>>,
}

impl<S> Default for Sessions<S> {
    fn default() -> Self {
        Self {
            map: DashMap::new(),
        }
    }
}

/// What the owner of an engine's sessions sees of them, whatever their handler: the node
/// counts, samples and drains them without knowing the protocol above the engine.
pub trait SessionTable: Send + Sync + 'static {
    /// Whether a session is still open.
    fn contains(&self, sid: &str) -> bool;
    /// How many sessions are open.
    fn len(&self) -> usize;
    /// Whether none are.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What waits in every session's queue.
    fn queued(&self) -> Queued;
    /// Closes every session (shutdown).
    fn close_all(&self, reason: CloseReason);
}

impl<S: Send + Sync + 'static> SessionTable for Sessions<S> {
    fn contains(&self, sid: &str) -> bool {
        self.map.contains_key(sid)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn queued(&self) -> Queued {
        self.map.iter().map(|s| s.outbox.queued()).sum()
    }

    fn close_all(&self, reason: CloseReason) {
        for session in self.map.iter() {
            session.close(reason);
        }
    }
}

impl<S> Sessions<S> {
    fn get(&self, sid: &str) -> Option<Arc<Session<S>>> {
        self.map.get(sid).map(|s| s.clone())
    }
}

/// An Engine.IO server: its settings, its sessions, and the handler of their messages. Its
/// routes ([`routes`]) serve one path.
pub struct Engine<H: Handler> {
    handler: H,
    settings: Settings,
    sessions: Arc<Sessions<H::Sockets>>,
    metrics: Metrics,
}

impl<H: Handler> Engine<H> {
    /// An engine whose sessions live in `sessions`; sessions are counted in `metrics` (as
    /// Socket.IO's).
    pub fn new(
        handler: H,
        settings: Settings,
        sessions: Arc<Sessions<H::Sockets>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            handler,
            settings,
            sessions,
            metrics,
        }
    }

    /// The live sessions.
    pub fn sessions(&self) -> &Sessions<H::Sockets> {
        &self.sessions
    }

    /// Registers a new session the handler admitted.
    fn open_session(
        &self,
        transport: Transport,
        opening: &Opening<'_>,
    ) -> Result<Arc<Session<H::Sockets>>, EngineError> {
        let span = tracing::debug_span!(
            "engineio.handshake",
            switchboard.transport = transport.label(),
            switchboard.refusal = tracing::field::Empty,
        );
        let _span = span.enter();
        let sid = random_id().map_err(|_| {
            EngineError::with(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::BadRequest,
                "no randomness available",
            )
        })?;
        let sockets = self.handler.open(opening).map_err(|refusal| {
            span.record("switchboard.refusal", refusal.message);
            EngineError::with(refusal.status, ErrorCode::Forbidden, refusal.message)
        })?;
        let session = Arc::new(Session {
            sid,
            outbox: Arc::new(Outbox::new(self.settings.send_queue_bytes)),
            remote: opening.remote,
            sockets,
            transport: AtomicU8::new(transport as u8),
            pong: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            created: Instant::now(),
        });
        self.sessions
            .map
            .insert(session.sid.clone(), session.clone());
        self.metrics.opened(Protocol::SocketIo, transport.label());
        Ok(session)
    }

    /// Ends a session once: unregisters it, closes its queue, tells the handler.
    fn finish(&self, session: &Session<H::Sockets>, reason: CloseReason) {
        if self.sessions.map.remove(&session.sid).is_none() {
            return;
        }
        session.close(reason);
        // The queue may have been closed earlier with a more precise reason (e.g. slow consumer).
        let reason = session.outbox.close_reason().unwrap_or(reason);
        self.handler.on_close(session);
        self.metrics
            .closed(Protocol::SocketIo, session.transport().label(), reason);
        match reason {
            // A refused connect is logged (once per interval) where it is refused.
            CloseReason::ClientClosed | CloseReason::ShuttingDown | CloseReason::ConnectRefused => {
                tracing::debug!(sid = %session.sid, reason = reason.label(), "session closed");
            }
            _ => {
                tracing::info!(sid = %session.sid, remote = %session.remote, reason = reason.label(), "session closed")
            }
        }
    }

    fn handshake_packet(&self, sid: &str, upgrades: &[&str]) -> String {
        let settings = &self.settings;
        Handshake {
            sid,
            upgrades,
            ping_interval: settings.ping_interval.as_millis() as u64,
            ping_timeout: settings.ping_timeout.as_millis() as u64,
            max_payload: settings.max_payload,
        }
        .encode()
    }

    /// A heartbeat whose first ping is due at `first_ping`.
    fn heartbeat(&self, first_ping: Instant) -> Heartbeat {
        Heartbeat::new(
            first_ping,
            self.settings.ping_interval,
            self.settings.ping_timeout,
        )
    }

    /// Handles one packet from the client, whatever the transport. An error closes the session.
    async fn on_packet(
        &self,
        session: &Session<H::Sockets>,
        packet: Packet<'_>,
    ) -> Result<(), CloseReason> {
        match packet {
            Packet::Pong(_) => {
                session.pong.store(true, Ordering::Release);
                Ok(())
            }
            Packet::Message(text) => self.handler.on_message(session, text).await,
            Packet::Binary(data) => self.handler.on_binary(session, data),
            Packet::Close => Err(CloseReason::ClientClosed),
            Packet::Noop | Packet::Upgrade | Packet::Ping(_) => Ok(()),
            Packet::Open => {
                self.metrics.errors.with_label_values(&["protocol"]).inc();
                tracing::info!(sid = %session.sid, "client sent an open packet");
                Err(CloseReason::ProtocolError)
            }
        }
    }

    /// When a session's timer must fire next: at the heartbeat's deadline, or at the connect
    /// deadline while the session is not connected, whichever comes first.
    fn next_wake(&self, session: &Session<H::Sockets>, heartbeat: &Heartbeat) -> Instant {
        let deadline = heartbeat.deadline();
        if self.handler.connected(&session.sockets) {
            deadline
        } else {
            deadline.min(session.created + self.settings.connect_timeout)
        }
    }

    /// Runs a heartbeat step and the connect timeout; returns a reason to close, if any.
    fn beat(
        &self,
        session: &Session<H::Sockets>,
        heartbeat: &mut Heartbeat,
    ) -> Option<CloseReason> {
        let now = Instant::now();
        if !self.handler.connected(&session.sockets)
            && now.duration_since(session.created) >= self.settings.connect_timeout
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

    /// The largest websocket message or polling payload `session` may send now: small until
    /// it is connected, so a stranger pins kilobytes, not the full message size.
    fn max_message(&self, session: &Session<H::Sockets>) -> usize {
        let max = self.settings.max_payload;
        if self.handler.connected(&session.sockets) {
            max
        } else {
            max.min(self.settings.pre_connect_max_payload)
        }
    }
}
