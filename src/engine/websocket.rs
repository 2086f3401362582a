//! Websocket sessions: opened on a websocket, or a polling session upgrading to one; then one
//! task per session writes, reads and keeps the heartbeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use tokio::time::Instant;

use super::heartbeat::Heartbeat;
use super::http::{EngineError, EngineQuery};
use super::{Engine, Handler, Opening, Session, Transport};
use crate::outbox::{CloseReason, Drained, Frame};
use crate::protocol::engineio::{self, ErrorCode, Packet};
use crate::protocol::websocket::{self as framing, Message};
use crate::transport::websocket::{Upgrade, WebSocket};
use crate::transport::{close_websocket, close_within, read_failed};

/// Time a client has to finish the upgrade once it starts probing.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

impl<H: Handler> Engine<H> {
    pub(super) fn websocket(
        self: &Arc<Self>,
        ws: Upgrade,
        query: &EngineQuery,
        opening: &Opening<'_>,
    ) -> Result<Response, EngineError> {
        let engine = self.clone();
        let response = match &query.sid {
            None => {
                let session = self.open_session(Transport::WebSocket, opening)?;
                ws.accept(self.max_message(&session), move |socket| async move {
                    let mut socket = match socket {
                        // Boxed, and the preamble too: what stays in every connection's task is
                        // then the session loop alone.
                        Ok(socket) => Box::new(socket),
                        Err(e) => {
                            tracing::info!(error = %e, "websocket upgrade failed");
                            return engine.finish(&session, CloseReason::TransportError);
                        }
                    };
                    if let Some(heartbeat) =
                        Box::pin(engine.open_websocket(&session, &mut socket)).await
                    {
                        engine.run_websocket(&session, socket, heartbeat).await;
                    }
                })
            }
            Some(sid) => {
                let session = self
                    .sessions
                    .get(sid)
                    .ok_or(EngineError::new(ErrorCode::UnknownSid))?;
                if session.transport() != Transport::Polling {
                    // Engine.IO accepts a websocket for a session already upgraded (or
                    // upgrading) and closes it at once; the session goes on over its own
                    // transport.
                    let max = self.settings.pre_connect_max_payload;
                    return Ok(ws.accept(max, |socket| async move {
                        let Ok(mut socket) = socket else { return };
                        let reason = "session already upgraded";
                        close_within(&mut socket, framing::POLICY_VIOLATION, reason).await;
                    }));
                }
                ws.accept(self.max_message(&session), move |socket| async move {
                    // A failed upgrade leaves the session on polling.
                    let Ok(socket) = socket else { return };
                    let mut socket = Box::new(socket);
                    if let Some(heartbeat) = Box::pin(engine.upgrade(&session, &mut socket)).await {
                        engine.run_websocket(&session, socket, heartbeat).await;
                    }
                })
            }
        };
        Ok(response)
    }

    /// A fresh websocket session: sends the open packet; the session loop follows.
    async fn open_websocket(
        &self,
        session: &Session<H::Sockets>,
        socket: &mut WebSocket,
    ) -> Option<Heartbeat> {
        let open = Frame::from(self.handshake_packet(&session.sid, &[]));
        if socket.send(&open).await.is_err() {
            self.finish(session, CloseReason::TransportError);
            return None;
        }
        Some(self.heartbeat(Instant::now() + self.settings.ping_interval))
    }

    /// A polling session moving to a websocket: `2probe` → `3probe`, release the pending poll
    /// with a noop, then `5` switches the session over; the session loop follows.
    async fn upgrade(
        &self,
        session: &Session<H::Sockets>,
        socket: &mut WebSocket,
    ) -> Option<Heartbeat> {
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
        self.metrics.upgraded();
        // The polling heartbeat stops now; ping at once so the client's timer never runs out.
        Some(self.heartbeat(Instant::now()))
    }

    /// The websocket session loop: write what is queued (all of it in one write), read packets,
    /// keep the heartbeat. Ends the session when it returns.
    async fn run_websocket(
        &self,
        session: &Session<H::Sockets>,
        mut socket: Box<WebSocket>,
        mut heartbeat: Heartbeat,
    ) {
        let mut batch = VecDeque::new();
        self.settings.writes.attach(&session.outbox, &socket);
        // The session may have connected over polling before it upgraded.
        socket.set_max_message(self.max_message(session));
        socket.set_message_timeout(self.settings.message_timeout);
        // One timer for the whole session, moved only when the heartbeat's deadline does: a
        // timer made per loop turn costs a registration and a removal on every write.
        let timer = tokio::time::sleep_until(self.next_wake(session, &heartbeat));
        tokio::pin!(timer);
        let reason = loop {
            tokio::select! {
                drained = session.outbox.drain(&mut batch) => match drained {
                    Drained::Frames => {
                        if !self.settings.writes.write_queued(&session.outbox, &mut socket, &mut batch).await {
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
                            Ok(packet) => Box::pin(self.on_packet(session, packet)).await,
                            Err(e) => {
                                self.metrics.errors.with_label_values(&["protocol"]).inc();
                                tracing::info!(sid = %session.sid, error = %e, "closing a websocket session: bad packet");
                                Err(CloseReason::ProtocolError)
                            }
                        },
                        Some(Ok(Message::Binary(data))) => self.handler.on_binary(session, data),
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
                    // A connect just accepted lifts the limit from the next frame on.
                    socket.set_max_message(self.max_message(session));
                },
                () = &mut timer => {
                    if let Some(reason) = self.beat(session, &mut heartbeat) {
                        session.close(reason);
                    }
                    timer.as_mut().reset(self.next_wake(session, &heartbeat));
                },
            }
        };
        session.outbox.detach();
        close_websocket(&mut socket, &session.outbox, reason).await;
        self.finish(session, reason);
    }
}
