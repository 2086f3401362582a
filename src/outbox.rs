//! A socket's bounded outgoing queue.
//!
//! The hub pushes encoded frames without ever waiting; the socket's own task drains the
//! queue and writes everything waiting in one go. A socket whose queue passes its byte limit
//! is closed as a slow consumer, so one stuck client cannot make the node's memory grow.
//! The queue allocates nothing until the first frame arrives, which keeps idle sockets small.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::protocol::websocket;

/// One text message, kept as its whole websocket frame (header and payload): a broadcast is
/// encoded once, and every recipient's socket writes the same shared bytes.
#[derive(Debug, Clone)]
pub struct Frame(Bytes);

impl Frame {
    /// The message's text.
    pub fn as_str(&self) -> &str {
        // Frames are only built from text, so this never falls back.
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    /// The message's bytes, without the websocket header.
    fn payload(&self) -> &[u8] {
        websocket::payload(&self.0)
    }

    /// The bytes on the wire: the websocket frame.
    pub fn wire(&self) -> &Bytes {
        &self.0
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self(websocket::encode(websocket::TEXT, text.as_bytes()))
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

/// Why a socket's queue was closed; decides what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away or asked to close.
    ClientClosed,
    /// The transport failed (read or write error).
    TransportError,
    /// No pong within the ping timeout.
    PingTimeout,
    /// No namespace connection within the connect timeout.
    ConnectTimeout,
    /// The queue passed its limit.
    SlowConsumer,
    /// The client broke the protocol.
    ProtocolError,
    /// A message or payload over the size limit.
    MessageTooLarge,
    /// The node is shutting down; the client should reconnect elsewhere.
    ShuttingDown,
    /// The application asked for the user's sockets to be closed (ban, password change).
    Kicked,
}

impl CloseReason {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::TransportError => "transport_error",
            Self::PingTimeout => "ping_timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::ProtocolError => "protocol_error",
            Self::MessageTooLarge => "message_too_large",
            Self::ShuttingDown => "shutting_down",
            Self::Kicked => "disconnected_by_server",
        }
    }

    /// Whether frames still queued should be written before closing.
    pub fn flushes(self) -> bool {
        !matches!(
            self,
            Self::SlowConsumer | Self::TransportError | Self::ClientClosed
        )
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// This push passed the limit; the queue is now closed as a slow consumer.
    Overflow,
    /// The queue was already closed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: Option<CloseReason>,
}

/// What a drain found.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Frames were moved into the caller's buffer.
    Frames,
    /// The queue is closed and holds nothing more to write.
    Closed(CloseReason),
}

/// A bounded queue of frames for one socket.
#[derive(Debug)]
pub struct Outbox {
    // A std mutex: it is held for a push or a drain only, never across an await.
    state: Mutex<State>,
    /// Wakes the one task that drains the queue (cheaper than a `Notify` on every push).
    ready: AtomicWaker,
    /// Wakes every task waiting for the close (e.g. a writer stuck on a full socket).
    closed: Notify,
    limit: usize,
}

impl Outbox {
    /// An empty queue that holds at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: AtomicWaker::new(),
            closed: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent queue, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        {
            let mut state = self.lock();
            if state.closed.is_some() {
                return Err(PushError::Closed);
            }
            let len = frame.payload().len();
            if state.bytes + len > self.limit && !state.frames.is_empty() {
                drop(state);
                self.close(CloseReason::SlowConsumer);
                return Err(PushError::Overflow);
            }
            state.bytes += len;
            state.frames.push_back(frame);
        }
        self.ready.wake();
        Ok(())
    }

    /// Closes the queue; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason);
            if !reason.flushes() {
                state.frames = VecDeque::new();
                state.bytes = 0;
            }
        }
        self.ready.wake();
        self.closed.notify_waiters();
    }

    /// Frames waiting to be written (sampled for metrics).
    pub fn queued_frames(&self) -> usize {
        self.lock().frames.len()
    }

    /// The reason the queue was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Moves every queued frame into `out` if there are any, without waiting.
    pub fn try_drain(&self, out: &mut VecDeque<Frame>) -> Option<Drained> {
        let mut state = self.lock();
        if !state.frames.is_empty() {
            if out.is_empty() {
                // Take the queue's buffer whole; `recycle` hands it back once written.
                *out = std::mem::take(&mut state.frames);
            } else {
                out.extend(state.frames.drain(..));
            }
            state.bytes = 0;
            return Some(Drained::Frames);
        }
        state.closed.map(Drained::Closed)
    }

    /// Returns a drained buffer's memory to the queue, so a socket keeps one buffer, not two.
    pub fn recycle(&self, buffer: &mut VecDeque<Frame>) {
        buffer.clear();
        if buffer.capacity() > 64 {
            // Give back the memory of a burst; idle sockets should stay small.
            *buffer = VecDeque::new();
            return;
        }
        let mut state = self.lock();
        if state.frames.capacity() == 0 {
            std::mem::swap(&mut state.frames, buffer);
        }
    }

    /// Waits until frames are queued (moving them into `out`) or the queue is closed.
    pub async fn drain(&self, out: &mut VecDeque<Frame>) -> Drained {
        std::future::poll_fn(|cx| {
            if let Some(drained) = self.try_drain(out) {
                return Poll::Ready(drained);
            }
            self.ready.register(cx.waker());
            // Checked again after registering, so a push in between is not missed.
            match self.try_drain(out) {
                Some(drained) => Poll::Ready(drained),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queues_and_drains_in_order() {
        let outbox = Outbox::new(100);
        outbox.push("a".into()).expect("push");
        outbox.push("b".into()).expect("push");
        assert_eq!(outbox.queued_frames(), 2);
        let mut out = VecDeque::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(outbox.queued_frames(), 0);
        let texts: Vec<_> = out.iter().map(Frame::as_str).collect();
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(outbox.try_drain(&mut out), None);
        // The buffer goes back to the queue: one allocation per socket at rest.
        outbox.recycle(&mut out);
        assert_eq!(out.capacity(), 0);
        outbox.push("c".into()).expect("push");
        assert_eq!(outbox.try_drain(&mut out), Some(Drained::Frames));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let outbox = Outbox::new(10);
        outbox.push(Frame::from("x".repeat(8))).expect("fits");
        assert_eq!(
            outbox.push(Frame::from("y".repeat(8))),
            Err(PushError::Overflow)
        );
        assert_eq!(outbox.push("z".into()), Err(PushError::Closed));
        assert_eq!(outbox.closed().await, CloseReason::SlowConsumer);
        let mut out = VecDeque::new();
        assert_eq!(
            outbox.drain(&mut out).await,
            Drained::Closed(CloseReason::SlowConsumer)
        );
        assert!(
            out.is_empty(),
            "a slow consumer's backlog is dropped, not written"
        );
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_limit_still_goes_to_an_empty_queue() {
        let outbox = Outbox::new(4);
        outbox
            .push(Frame::from("x".repeat(8)))
            .expect("an empty queue takes one frame");
    }

    #[tokio::test]
    async fn graceful_close_flushes_first() {
        let outbox = Outbox::new(100);
        outbox.push("bye".into()).expect("push");
        outbox.close(CloseReason::ShuttingDown);
        let mut out = VecDeque::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(
            outbox.drain(&mut out).await,
            Drained::Closed(CloseReason::ShuttingDown)
        );
    }

    #[tokio::test]
    async fn wakes_a_waiting_drain() {
        let outbox = std::sync::Arc::new(Outbox::new(100));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut out = VecDeque::new();
                outbox.drain(&mut out).await;
                out.len()
            })
        };
        tokio::task::yield_now().await;
        outbox.push("a".into()).expect("push");
        assert_eq!(waiter.await.expect("join"), 1);
    }
}
