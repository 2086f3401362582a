//! WebSocket connections (RFC 6455), server side: the upgrade answer, then frames both ways
//! (framing itself is in `protocol::websocket`).
//!
//! The node owns this layer rather than using a general-purpose one because of two costs that
//! every connection pays: an idle connection holds no read or write buffer (reads go through
//! the stack, a partial frame alone is kept on the heap), and a delivery is one write of
//! frames that were encoded, header included, once for every recipient: straight from the
//! outbox when the socket is idle (the stream is shared with it), else one vectored write of
//! everything queued by the socket's task.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::outbox::Frame;
use crate::protocol::websocket::{self as framing, FrameError, Message, Reader};

/// Bytes read per call, on the stack; client messages are small.
const READ_CHUNK: usize = 4096;
/// Frames given to one vectored write (Linux takes up to 1,024).
const WRITE_SLICES: usize = 64;

/// A checked upgrade request (RFC 6455 §4.2.1), answered with [`Upgrade::accept`].
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a websocket upgrade.
#[derive(Debug, thiserror::Error)]
#[error("not a websocket upgrade: {0}")]
pub struct NotAnUpgrade(&'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::UPGRADE_REQUIRED, self.to_string()).into_response()
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotAnUpgrade("the method is not GET"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade("no `Connection: upgrade`"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade("no `Upgrade: websocket`"));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
        {
            return Err(NotAnUpgrade("`Sec-WebSocket-Version` is not 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotAnUpgrade("no `Sec-WebSocket-Key`"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// Answers `101 Switching Protocols`; once the connection is handed over, `run` gets the
    /// socket, or the error if the hand-over failed. The socket refuses messages over
    /// `max_message` bytes.
    pub fn accept<F, Fut>(self, max_message: usize, run: F) -> Response
    where
        F: FnOnce(io::Result<WebSocket>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(accept) = HeaderValue::try_from(derive_accept_key(self.key.as_bytes())) else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let socket = match on_upgrade.await {
                Ok(upgraded) => WebSocket::new(upgraded, max_message),
                Err(e) => Err(io::Error::other(e)),
            };
            run(socket).await;
        });
        let headers = [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ];
        (StatusCode::SWITCHING_PROTOCOLS, headers).into_response()
    }
}

/// Why reading from a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed.
    #[error("websocket read failed: {0}")]
    Io(#[from] io::Error),
    /// The client's frames are not acceptable.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message was begun and not finished in time.
    #[error("websocket message not finished within {0:?}")]
    Unfinished(Duration),
}

/// One upgraded connection.
pub struct WebSocket {
    /// Shared: a broadcast may write to it straight from the outbox (src/outbox.rs) while
    /// this socket's task is not writing.
    tcp: Arc<TcpStream>,
    reader: Reader,
    /// The client sent a close frame: closing answers it.
    peer_closed: bool,
    /// The close code of the client's frame error, once there was one: closing tells it.
    broken: Option<u16>,
    /// Time a message has to finish once its first byte arrived, if limited.
    message_timeout: Option<Duration>,
    /// When the message under way must be complete; set only while one is, so an idle socket
    /// keeps no timer.
    message_due: Option<Pin<Box<Sleep>>>,
}

impl WebSocket {
    /// The TCP stream hyper upgraded, and the bytes it had already read past the request.
    fn new(upgraded: Upgraded, max_message: usize) -> io::Result<Self> {
        let parts = upgraded
            .downcast::<TokioIo<super::http::ClientStream>>()
            .map_err(|_| io::Error::other("the upgraded connection is not a TCP stream"))?;
        let mut reader = Reader::new(max_message);
        reader.extend(&parts.read_buf);
        Ok(Self {
            tcp: Arc::new(parts.io.into_inner().into_inner()),
            reader,
            peer_closed: false,
            broken: None,
            message_timeout: None,
            message_due: None,
        })
    }

    /// From the next frame on, refuses messages over `max_message` bytes.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.reader.set_max_message(max_message);
    }

    /// Closes the connection (1008) when a message is not finished within `timeout` of its
    /// first byte: a half-sent message holds its bytes here.
    pub fn set_message_timeout(&mut self, timeout: Duration) {
        self.message_timeout = Some(timeout);
    }

    /// Drops messages over `max_kept` bytes as they arrive (see [`Reader::discard_over`]).
    pub fn discard_over(&mut self, max_kept: usize) {
        self.reader.discard_over(max_kept);
    }

    /// The TCP stream, for an outbox to write to while the socket's task is not writing.
    pub fn stream(&self) -> Arc<TcpStream> {
        self.tcp.clone()
    }

    /// The next message or control frame; `None` once the connection is closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message, ReadError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, ReadError>>> {
        loop {
            match self.reader.next_message() {
                Ok(Some(message)) => {
                    self.peer_closed |= matches!(message, Message::Close(_));
                    // A control frame between fragments does not restart the message's time.
                    if !matches!(message, Message::Ping(_) | Message::Pong) {
                        self.message_due = None;
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.broken = Some(e.close_code());
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            // A message under way must finish in time, or it holds its bytes here for as long as
            // the client likes.
            if let Some(timeout) = self.message_timeout
                && self.reader.pending()
            {
                let due = self
                    .message_due
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if due.as_mut().poll(cx).is_ready() {
                    self.broken = Some(framing::POLICY_VIOLATION);
                    return Poll::Ready(Some(Err(ReadError::Unfinished(timeout))));
                }
            } else {
                self.message_due = None;
            }
            if let Err(e) = ready!(self.tcp.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            // On the stack, for this read only: idle sockets keep no buffer. Zeroed only once
            // the socket is readable, which in a fan-out is rare.
            let mut chunk = [0u8; READ_CHUNK];
            match self.tcp.try_read(&mut chunk) {
                Ok(0) => return Poll::Ready(None),
                Ok(n) => self.reader.extend(&chunk[..n]),
                // Readiness was stale; polling it again registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Writes as much of `slices` as the socket takes now, waiting until it takes something.
    fn poll_write(&self, cx: &mut Context<'_>, slices: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write_vectored(slices) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    /// Writes all of `bytes`.
    async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            let written = poll_fn(|cx| self.poll_write(cx, &[IoSlice::new(&bytes[at..])])).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += written;
        }
        Ok(())
    }

    /// Writes whole frames in order, as many per vectored write as the socket takes.
    pub async fn write_frames(&mut self, frames: &VecDeque<Frame>) -> io::Result<()> {
        // Where writing stands: the frame, and the bytes of it already written.
        let (mut first, mut offset) = (0, 0);
        while first < frames.len() {
            let written = poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let mut count = 0;
                for (slice, frame) in slices.iter_mut().zip(frames.range(first..)) {
                    let bytes = frame.wire();
                    *slice = IoSlice::new(if count == 0 { &bytes[offset..] } else { bytes });
                    count += 1;
                }
                self.poll_write(cx, &slices[..count])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += written;
            while let Some(frame) = frames.get(first)
                && offset >= frame.wire().len()
            {
                offset -= frame.wire().len();
                first += 1;
            }
        }
        Ok(())
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.write_all(frame.wire()).await
    }

    /// Sends a close frame with `code` and `reason`; echoes the client's close if it sent one,
    /// and names the client's frame error (1002, 1007, 1009, or 1008 for a message not
    /// finished in time) if it made one. Then shuts the connection down, if no outbox still
    /// holds the stream.
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let frame = match self.broken {
            _ if self.peer_closed => framing::encode_close(framing::NORMAL, ""),
            Some(broken) => framing::encode_close(broken, reason),
            None => framing::encode_close(code, reason),
        };
        self.write_all(&frame).await?;
        match Arc::get_mut(&mut self.tcp) {
            Some(tcp) => tcp.shutdown().await,
            // Closed when the last holder drops it.
            None => Ok(()),
        }
    }

    /// Whether the client has sent its close frame.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }
}
