//! A socket's bounded outgoing queue.
//!
//! The hub pushes encoded frames without ever waiting. A websocket's outbox holds its TCP
//! stream: a push finding nothing queued and nothing being written writes the frame itself,
//! with one non-blocking `send` and no wake-up of the socket's task. Otherwise (the kernel
//! would not take it all, or frames are waiting) it queues, and the socket's own task drains
//! the queue and writes everything waiting in one go, so a socket that falls behind catches up
//! several frames per write. A socket whose queue passes its byte limit
//! is closed as a slow consumer, so one stuck client cannot make the node's memory grow.
//! The queue allocates nothing until the first frame arrives, which keeps idle sockets small.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::protocol::websocket;

/// One message, kept as its whole websocket frame (header and payload): a broadcast is
/// encoded once, and every recipient's socket writes the same shared bytes. Text, except the
/// binary messages an Engine.IO handler may send.
#[derive(Debug, Clone)]
pub struct Frame(Bytes);

impl Frame {
    /// A websocket ping with no payload.
    pub fn ping() -> Self {
        Self(websocket::encode(websocket::PING, &[]))
    }

    /// The pong answering a ping with `payload`.
    pub fn pong(payload: &[u8]) -> Self {
        Self(websocket::encode(websocket::PONG, payload))
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Self {
        Self(websocket::encode(websocket::BINARY, data))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        websocket::opcode(&self.0) == Some(websocket::BINARY)
    }

    /// What a direct write left of this frame: bytes for the wire only, never read as text
    /// (only websocket sessions write directly, and only polling reads frames as text).
    fn rest(&self, written: usize) -> Self {
        Self(self.0.slice(written..))
    }

    /// The text of a text message.
    pub fn as_str(&self) -> &str {
        // Text frames are only built from text, so this never falls back.
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    /// The message's bytes, without the websocket header.
    pub fn payload(&self) -> &[u8] {
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
    /// A Socket.IO connect was refused and nothing else was connected on the session.
    ConnectRefused,
    /// The socket's token expired; the client must connect again with a fresh one.
    TokenExpired,
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
            Self::ConnectRefused => "connect_refused",
            Self::TokenExpired => "token_expired",
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

/// How a push may reach the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Straight to the socket when nothing is queued or being written there.
    Direct,
    /// Through the socket's task: for a node that is behind, so that frames pile up and the
    /// task writes several per call.
    Queued,
}

/// What became of a frame a push took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket whole by the push itself.
    Written,
    /// Queued for the socket's task (all of it, or what a direct write left).
    Queued,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// This push passed the limit; the queue is now closed as a slow consumer.
    Overflow,
    /// The queue was already closed.
    Closed,
}

/// What waits in one or more queues.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// Frames.
    pub frames: usize,
    /// Their bytes on the wire.
    pub bytes: usize,
}

impl std::iter::Sum for Queued {
    fn sum<I: Iterator<Item = Queued>>(iter: I) -> Self {
        iter.fold(Queued::default(), |all, one| Queued {
            frames: all.frames + one.frames,
            bytes: all.bytes + one.bytes,
        })
    }
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// The socket's task holds drained frames it has not finished writing.
    writing: bool,
    /// The socket a push may write to itself when nothing is queued or being written.
    direct: Option<Arc<TcpStream>>,
    /// A close dropped frames that may have been partly written (a direct write's rest, or
    /// the task's write cut short): the stream may end inside a frame.
    cut: bool,
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

    /// Lets pushes write straight to `tcp` while nothing is queued or being written: one
    /// frame is then one `send` from the pushing thread, with no wake-up of the socket's task.
    pub fn attach(&self, tcp: Arc<TcpStream>) {
        self.lock().direct = Some(tcp);
    }

    /// Ends direct writes; the socket's task writes everything from now on.
    pub fn detach(&self) {
        self.lock().direct = None;
    }

    /// Queues a frame without waiting, or writes it at once (see [`Outbox::attach`]).
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.push_with(frame, Write::Direct).map(|_| ())
    }

    /// [`Outbox::push`], with direct writes allowed or not.
    pub fn push_with(&self, mut frame: Frame, write: Write) -> Result<Pushed, PushError> {
        {
            let mut state = self.lock();
            if state.closed.is_some() {
                return Err(PushError::Closed);
            }
            if write == Write::Direct
                && state.frames.is_empty()
                && !state.writing
                && let Some(tcp) = &state.direct
            {
                // Under the lock, so no other write can come between this one and the task's.
                match tcp.try_write(frame.wire()) {
                    Ok(n) if n == frame.wire().len() => return Ok(Pushed::Written),
                    Ok(n) => frame = frame.rest(n),
                    // A full socket (would block), or a broken one: the frame is queued, and the
                    // task's own write waits for room or meets the error.
                    Err(_) => {}
                }
            }
            let len = frame.wire().len();
            if state.bytes + len > self.limit && !state.frames.is_empty() {
                drop(state);
                self.close(CloseReason::SlowConsumer);
                return Err(PushError::Overflow);
            }
            state.bytes += len;
            state.frames.push_back(frame);
        }
        self.ready.wake();
        Ok(Pushed::Queued)
    }

    /// Closes the queue; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason);
            state.direct = None;
            if !reason.flushes() {
                state.cut = !state.frames.is_empty() || state.writing;
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

    /// Frames and bytes waiting to be written (sampled for metrics).
    pub fn queued(&self) -> Queued {
        let state = self.lock();
        Queued {
            frames: state.frames.len(),
            bytes: state.bytes,
        }
    }

    /// The reason the queue was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Whether the close dropped frames that may have been partly on the wire, so nothing
    /// (not even a close frame) may follow them on the stream.
    pub fn cut(&self) -> bool {
        self.lock().cut
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
            state.writing = true;
            return Some(Drained::Frames);
        }
        state.closed.map(Drained::Closed)
    }

    /// After the drained frames are written: returns the buffer's memory to the queue, so a
    /// socket keeps one buffer, not two, and allows direct writes again.
    pub fn recycle(&self, buffer: &mut VecDeque<Frame>) {
        buffer.clear();
        if buffer.capacity() > 64 {
            // Give back the memory of a burst; idle sockets should stay small.
            *buffer = VecDeque::new();
        }
        let mut state = self.lock();
        state.writing = false;
        if state.frames.capacity() == 0 && buffer.capacity() > 0 {
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
pub(crate) mod tests {
    use std::io;

    use super::*;

    #[tokio::test]
    async fn queues_and_drains_in_order() {
        let outbox = Outbox::new(100);
        outbox.push("a".into()).expect("push");
        outbox.push("b".into()).expect("push");
        assert_eq!(outbox.queued_frames(), 2);
        // Each a one-byte text behind a two-byte websocket header.
        let queued = Queued {
            frames: 2,
            bytes: 6,
        };
        assert_eq!(outbox.queued(), queued);
        assert_eq!([queued, queued].into_iter().sum::<Queued>().bytes, 12);
        let mut out = VecDeque::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(outbox.queued(), Queued::default());
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

    #[test]
    fn a_close_that_drops_frames_or_a_write_in_progress_cuts_the_stream() {
        let clean = Outbox::new(100);
        clean.close(CloseReason::ClientClosed);
        assert!(!clean.cut(), "nothing was dropped");

        let queued = Outbox::new(100);
        queued.push("a".into()).expect("push");
        queued.close(CloseReason::ClientClosed);
        assert!(queued.cut(), "a queued frame may be a direct write's rest");

        let writing = Outbox::new(100);
        writing.push("a".into()).expect("push");
        let mut batch = VecDeque::new();
        writing.try_drain(&mut batch);
        writing.close(CloseReason::SlowConsumer);
        assert!(writing.cut(), "the task's write is cut short");

        let flushed = Outbox::new(100);
        flushed.push("a".into()).expect("push");
        flushed.close(CloseReason::ShuttingDown);
        assert!(!flushed.cut(), "a flushing close writes what is queued");
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

    /// A connected pair: the server side, and the client side that reads it.
    pub(crate) async fn tcp_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Arc::new(server), client)
    }

    /// Reads exactly `len` bytes.
    async fn read(client: &mut TcpStream, len: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut bytes = vec![0; len];
        client.read_exact(&mut bytes).await.expect("read");
        bytes
    }

    fn texts(frames: &VecDeque<Frame>) -> Vec<&str> {
        frames.iter().map(Frame::as_str).collect()
    }

    #[tokio::test]
    async fn pushes_write_directly_only_while_nothing_is_queued_or_being_written() {
        let (server, mut client) = tcp_pair().await;
        let outbox = Outbox::new(1 << 20);
        outbox.attach(server);
        outbox.push("a".into()).expect("push");
        assert_eq!(outbox.queued_frames(), 0, "written, not queued");
        assert_eq!(read(&mut client, 3).await, b"\x81\x01a");

        // The task has drained frames and not yet written them: pushes queue behind them.
        outbox.detach();
        outbox.push("b".into()).expect("push");
        outbox.attach(tcp_pair().await.0);
        let mut batch = VecDeque::new();
        assert_eq!(outbox.try_drain(&mut batch), Some(Drained::Frames));
        outbox.push("c".into()).expect("push");
        // Written by the task now; "c" waits, so "d" must too.
        outbox.recycle(&mut batch);
        outbox.push("d".into()).expect("push");
        assert_eq!(outbox.try_drain(&mut batch), Some(Drained::Frames));
        assert_eq!(texts(&batch), ["c", "d"]);
        outbox.recycle(&mut batch);
        outbox.push("e".into()).expect("push");
        assert_eq!(outbox.queued_frames(), 0, "direct again");
        // A node that is behind queues, so the task writes what piles up in one call.
        outbox.push_with("f".into(), Write::Queued).expect("push");
        assert_eq!(outbox.queued_frames(), 1);

        // Closing ends direct writes: the stream is let go.
        outbox.close(CloseReason::ShuttingDown);
        assert!(outbox.lock().direct.is_none());
    }

    #[tokio::test]
    async fn a_socket_that_takes_part_of_a_frame_gets_the_rest_queued_in_order() {
        let (server, mut client) = tcp_pair().await;
        let outbox = Outbox::new(64 << 20);
        outbox.attach(server.clone());
        // Frames of 64 KiB and a client that does not read: the kernel's buffers fill, one
        // frame goes in partly, and the rest of it and every later frame are queued.
        let frames: Vec<Frame> = (0..200u8)
            .map(|i| Frame::from(char::from(b'A' + i % 26).to_string().repeat(65536)))
            .collect();
        for frame in &frames {
            outbox.push(frame.clone()).expect("push");
        }
        let queued = outbox.queued_frames();
        assert!(queued > 0 && queued < frames.len(), "{queued} queued");
        let mut batch = VecDeque::new();
        assert_eq!(outbox.try_drain(&mut batch), Some(Drained::Frames));
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.wire().to_vec()).collect();
        let reader =
            tokio::spawn(async move { read(&mut client, expected.len()).await == expected });
        // What the task does with a drained batch.
        for frame in &batch {
            let mut at = 0;
            while at < frame.wire().len() {
                server.writable().await.expect("writable");
                match server.try_write(&frame.wire()[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
        assert!(
            reader.await.expect("join"),
            "the client read every frame whole, in order"
        );
    }
}
