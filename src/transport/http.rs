//! The HTTP/1.1 serve loop every listener runs: connections accepted until a stop, each served
//! by hyper with upgrades, bodies that must arrive in time and writes that must make progress.
//! What is admitted is the caller's choice ([`serve`]'s `admit`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower_service::Service;

/// How long a connection's request body may take to arrive, and a write to make progress.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request body must arrive whole within this (answered 408 otherwise).
    pub body: Duration,
    /// A write that makes no progress for this long fails (a client that stopped reading).
    pub write: Duration,
}

/// Longest wait for a request's head (slow clients holding connections open).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers): far above what browsers and back-ends
/// send, and small enough that a slow sender holds little memory with it.
pub(super) const MAX_HEAD_SIZE: usize = 64 * 1024;
/// Pause after an accept error that is not one connection's (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts HTTP/1.1 connections until `stop` resolves, then lets the open ones finish their
/// request and waits for them (upgraded websockets are no longer theirs: the drain closes them).
///
/// The node's own loop rather than `axum::serve`: that one serves through hyper-util's
/// version-sniffing builder, which wraps every connection in a private type, so an upgraded
/// websocket could not be turned back into its `TcpStream`; the websocket layer needs it to
/// let a broadcast write straight to the socket (src/transport/websocket.rs).
///
/// `admit` decides on each accepted connection from its peer: `None` drops it unread, `Some`
/// is held until the connection ends (the caller's places in its caps).
pub async fn serve<G, A>(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    admit: A,
    stop: impl Future<Output = ()>,
) where
    A: Fn(SocketAddr) -> Option<G>,
    G: Send + 'static,
{
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        match accepted {
            Ok((tcp, remote)) => {
                // Over a cap the socket is dropped unread: answering would cost what the cap
                // is there to save.
                let Some(admitted) = admit(remote) else {
                    tracing::debug!(%remote, "HTTP connection refused");
                    continue;
                };
                // Small frames go out at once: with Nagle, a second frame waits for the peer's
                // delayed ACK.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                tokio::spawn(serve_connection(
                    ClientStream::new(tcp, timeouts.write),
                    remote,
                    app.clone(),
                    timeouts.body,
                    closing_rx.clone(),
                    admitted,
                ));
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(closing_rx);
    // Resolves once every connection task has dropped its receiver.
    closing_tx.closed().await;
}

/// Errors of one connection that was gone before it was accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// A request body that fails once it has taken longer than its deadline to arrive, so a
/// client that stalls halfway through cannot keep a handler and its buffer waiting. The timer
/// starts at the first read, so bodiless requests (and long polls) never make one.
struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

/// The error a [`TimedBody`] ends with; handlers answer it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// Whether a body read failed on its deadline (anywhere in the error's chain).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut error = Some(error);
    while let Some(e) = error {
        if e.is::<BodyTimeout>() {
            return true;
        }
        error = e.source();
    }
    false
}

impl<B> Body for TimedBody<B>
where
    B: Body<Error = hyper::Error> + Unpin,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's TCP stream whose writes fail once they have made no progress for a while: a
/// client that stops reading cannot hold a response (a long poll's frames) and its connection
/// forever. Reads pass through untouched. A websocket takes the bare stream back
/// ([`ClientStream::into_inner`]): it bounds a reader that stalls by its send queue instead.
pub struct ClientStream {
    tcp: TcpStream,
    timeout: Duration,
    /// Armed while a write waits for the client; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl ClientStream {
    fn new(tcp: TcpStream, timeout: Duration) -> Self {
        Self {
            tcp,
            timeout,
            stalled: None,
        }
    }

    /// The bare TCP stream.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    /// Turns a write that is still pending into an error once it has waited `timeout`.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.tcp).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Serves one connection's requests, upgrades included; on shutdown, finishes the request in
/// flight and closes. Any stream will do (the fuzz property of `super::properties` serves an
/// in-memory one); only a [`ClientStream`] can be upgraded to a websocket.
pub(super) async fn serve_connection<S, G>(
    stream: S,
    remote: SocketAddr,
    app: Router,
    body_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    admitted: G,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let (mut parts, inner) = request.into_parts();
        parts.extensions.insert(ConnectInfo(remote));
        let body = TimedBody {
            inner,
            timeout: body_timeout,
            timer: None,
        };
        app.clone().call(hyper::Request::from_parts(parts, body))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_SIZE)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Every receiver is cloned before the one change (to `true`) is sent.
        _ = closing.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
    drop(admitted);
}
