//! HTTP long-polling: the handshake, polls that take what is queued, posts that bring packets,
//! and the heartbeat of a session that has not moved to a websocket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::Response;
use tokio::time::Instant;

use super::http::{EngineError, EngineQuery, check_query, text_response};
use super::{Engine, Handler, Opening, Session, Transport};
use crate::outbox::{CloseReason, Drained, Frame};
use crate::protocol::engineio::{self, ErrorCode, Outgoing};

/// Time a closed polling session keeps the frames queued before its close for the client's
/// next poll (which a socket.io-client has pending, or sends at once).
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A poll in flight: clears the session's "a GET is in flight" flag however the request ends,
/// and ends the session when the request was dropped before its answer (the client went away)
/// and the settings say so.
struct PollGuard<'a, H: Handler> {
    engine: &'a Engine<H>,
    session: &'a Session<H::Sockets>,
    answered: bool,
}

impl<H: Handler> Drop for PollGuard<'_, H> {
    fn drop(&mut self) {
        self.session.polling.store(false, Ordering::Release);
        if !self.answered && self.engine.settings.close_abandoned_polls {
            self.engine
                .finish(self.session, CloseReason::TransportError);
        }
    }
}

/// A queued frame as a packet of a polling payload.
fn outgoing(frame: &Frame) -> Outgoing<'_> {
    if frame.is_binary() {
        Outgoing::Binary(frame.payload())
    } else {
        Outgoing::Text(frame.as_str())
    }
}

impl<H: Handler> Engine<H> {
    pub(super) fn handshake_polling(
        self: &Arc<Self>,
        opening: &Opening<'_>,
    ) -> Result<Response, EngineError> {
        let session = self.open_session(Transport::Polling, opening)?;
        let open = self.handshake_packet(&session.sid, &["websocket"]);
        tokio::spawn(self.clone().polling_heartbeat(session));
        Ok(text_response(open))
    }

    /// The live session a polling request names; a session already on websocket takes no polls.
    fn polling_session(&self, sid: &str) -> Result<Arc<Session<H::Sockets>>, EngineError> {
        let session = self
            .sessions
            .get(sid)
            .ok_or(EngineError::new(ErrorCode::UnknownSid))?;
        if session.transport() == Transport::WebSocket {
            return Err(EngineError::new(ErrorCode::BadRequest));
        }
        Ok(session)
    }

    pub(super) async fn poll(&self, sid: &str) -> Result<Response, EngineError> {
        let session = self.polling_session(sid)?;
        if session.polling.swap(true, Ordering::AcqRel) {
            // Two concurrent polls break the protocol's ordering: end the session as Engine.IO does.
            session.close(CloseReason::ProtocolError);
            return Err(EngineError::with(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "overlapping poll",
            ));
        }
        let mut guard = PollGuard {
            engine: self,
            session: &session,
            answered: false,
        };
        let mut frames = VecDeque::new();
        let body = match session.outbox.drain(&mut frames).await {
            Drained::Frames => {
                // The last frames of a closed session (a CONNECT_ERROR, a kick's farewell) go
                // out with the close packet, and the session ends.
                let closed = session.outbox.close_reason();
                let close = closed.map(|_| Outgoing::Text(engineio::CLOSE));
                let body = engineio::encode_payload(frames.iter().map(outgoing).chain(close));
                if let Some(reason) = closed {
                    self.finish(&session, reason);
                }
                body
            }
            Drained::Closed(reason) => {
                self.finish(&session, reason);
                // A client that closed knows; its pending poll is released with a noop, as
                // Engine.IO does. Any other close is announced.
                let packet = match reason {
                    CloseReason::ClientClosed => engineio::NOOP,
                    _ => engineio::CLOSE,
                };
                packet.to_owned()
            }
        };
        guard.answered = true;
        Ok(text_response(body))
    }

    pub(super) async fn receive_polling(
        &self,
        query: Result<Query<EngineQuery>, QueryRejection>,
        body: Body,
    ) -> Result<(), EngineError> {
        let query = check_query(query)?;
        let sid = query
            .sid
            .as_deref()
            .ok_or(EngineError::new(ErrorCode::BadHandshakeMethod))?;
        // The body is read only for a live session: a stranger's upload is refused unread.
        let session = self.polling_session(sid)?;
        let limit = self.max_message(&session);
        // A declared length over the limit is refused before a byte of it is waited for.
        let declared = axum::body::HttpBody::size_hint(&body).lower();
        let read = match usize::try_from(declared) {
            Ok(declared) if declared <= limit => axum::body::to_bytes(body, limit).await,
            _ => Err(axum::Error::new("payload over the size limit")),
        };
        let body = match read {
            Ok(body) => body,
            Err(e) if crate::transport::http::is_body_timeout(&e) => {
                tracing::info!(sid, "closing a polling session: payload not sent in time");
                session.close(CloseReason::TransportError);
                return Err(EngineError::with(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::BadRequest,
                    "payload not sent in time",
                ));
            }
            Err(_) => {
                self.metrics
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
            self.metrics.errors.with_label_values(&["protocol"]).inc();
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
        let text =
            std::str::from_utf8(&body).map_err(|_| protocol_error("payload is not UTF-8"))?;
        for packet in engineio::decode_payload(text) {
            let packet = packet.map_err(|e| protocol_error(&e.to_string()))?;
            match self.on_packet(&session, packet).await {
                // The rest of a payload is not for a closed session (a flood of refused connects).
                Ok(()) if session.outbox.close_reason().is_none() => {}
                Ok(()) => break,
                // Nothing is left to deliver after a close that drops the queue (the client's
                // own close): the session ends now, so its next request answers 400.
                Err(reason) if !reason.flushes() => {
                    self.finish(&session, reason);
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

    /// Keeps a polling session's heartbeat until it closes or a websocket takes it over.
    async fn polling_heartbeat(self: Arc<Self>, session: Arc<Session<H::Sockets>>) {
        let mut heartbeat = self.heartbeat(Instant::now() + self.settings.ping_interval);
        let reason = loop {
            tokio::select! {
                reason = session.outbox.closed() => break reason,
                () = tokio::time::sleep_until(self.next_wake(&session, &heartbeat)) => {
                    if session.transport() == Transport::WebSocket {
                        return;
                    }
                    if let Some(reason) = self.beat(&session, &mut heartbeat) {
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
            self.finish(&session, reason);
        }
    }
}
