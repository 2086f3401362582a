//! What the connections of every client protocol share: the HTTP serve loop ([`http`]), the
//! websocket upgrade and I/O ([`websocket`]), and the rest of a websocket's life: which origins
//! may open one, how its queued frames reach it (straight from the outbox, or in one write by
//! its task), why a read ended it, and how it is closed. Engine.IO ([`crate::engine`]) and the
//! plain JSON endpoint ([`crate::ws`]) both run on it; it knows neither.

pub mod http;
#[cfg(any(test, fuzzing))]
pub mod properties;
pub mod websocket;

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use axum::http::{HeaderMap, header};

use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Frame, Outbox};
use crate::protocol::websocket::{self as framing, FrameError};
use websocket::{ReadError, WebSocket};

/// Time given to write the close frame to a leaving websocket.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a request's Origin, if it has one, is among `allowed` (empty, or holding `*`: any
/// origin); refusals are counted.
pub fn origin_allowed(allowed: &HashSet<String>, headers: &HeaderMap, metrics: &Metrics) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let text = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let ok = allowed.is_empty() || allowed.contains(text) || allowed.contains("*");
    if !ok {
        metrics.errors.with_label_values(&["origin_refused"]).inc();
    }
    ok
}

/// How queued frames reach a websocket.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    /// How long a socket's task lets frames pile up before it writes them
    /// (`SWITCHBOARD_WRITE_DELAY`); zero writes at once.
    pub delay: Duration,
    /// Whether a push may write straight to an idle socket (off when direct writes are).
    pub direct: bool,
}

impl Writes {
    /// Lets pushes write to the socket directly, unless direct writes are off or writes are to
    /// be coalesced, which only the socket's task can do.
    pub fn attach(&self, outbox: &Outbox, socket: &WebSocket) {
        if self.delay.is_zero() && self.direct {
            outbox.attach(socket.stream());
        }
    }

    /// Writes the drained frames in one vectored write (after the write delay, when set). False
    /// when the socket failed, or the outbox was closed while the socket would not take more
    /// bytes (a slow consumer is cut off even then).
    pub async fn write_queued(
        &self,
        outbox: &Outbox,
        socket: &mut WebSocket,
        batch: &mut VecDeque<Frame>,
    ) -> bool {
        if !self.delay.is_zero() {
            // Coalescing: let the frames that follow join this write. Boxed so the timer is not
            // part of every idle connection's task.
            Box::pin(tokio::time::sleep(self.delay)).await;
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
    // Boxed: it runs once per connection and would otherwise enlarge every idle task.
    Box::pin(close_within(socket, code, reason.label())).await;
}

/// Sends a close frame (see [`WebSocket::close`]), giving up if the client does not take it
/// within a second.
pub async fn close_within(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, socket.close(code, reason)).await;
}

/// Why a websocket read ended the connection.
pub fn read_failed(error: &ReadError) -> CloseReason {
    match error {
        ReadError::Frame(FrameError::TooLarge(_)) => CloseReason::MessageTooLarge,
        ReadError::Frame(_) | ReadError::Unfinished(_) => CloseReason::ProtocolError,
        ReadError::Io(_) => CloseReason::TransportError,
    }
}
