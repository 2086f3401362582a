//! The axum router and the serve loop with graceful drain.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::routing::{get, post};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Sleep;
use tower_service::Service;

use crate::config::{Config, DEV_API_KEY};
use crate::limit::{AddressCounts, Network, address_key};
use crate::node::Node;
use crate::{admin, api, dev, engine, ws};

/// Every route of a node's client port; with no admin listener, the admin routes too.
pub fn router(node: Arc<Node>) -> Router {
    // Bodies are read whole, then checked against the limit to answer 413 with our own error.
    let body_limit = DefaultBodyLimit::max(node.config.max_message_size + 1);
    let engine_routes = axum::routing::get(engine::get)
        .post(engine::post)
        .options(engine::preflight)
        .fallback(engine::unsupported_method);
    let api_routes = Router::new()
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/notifications", post(api::notifications))
        .route("/api/users/{id}", get(api::user))
        .route("/api/users/{id}/disconnect", post(api::disconnect))
        .route(
            "/api/users/{id}/channels/{channel}",
            post(api::subscribe_user).delete(api::unsubscribe_user),
        )
        .route("/api/push", post(api::push))
        .route("/api/rooms/{room}/broadcast", post(api::room_broadcast))
        .route("/api/batch", post(api::batch))
        .route("/api/channels", get(api::channels))
        .route("/api/channels/{name}", get(api::channel_info))
        .route("/api/channels/{name}/users", get(api::channel_users))
        .route(
            "/api/channels/{name}/members/{user}",
            post(api::add_member).delete(api::remove_member),
        )
        // Handlers take the `ApiKey` extractor, which checks the key from the head before any
        // body is read; `track` counts the refusals too.
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            api::track,
        ));
    let mut router = Router::new();
    for path in &node.config.ws_paths {
        router = router.route(path, get(ws::upgrade));
    }
    let mut router = router
        .route("/socket.io/", engine_routes.clone())
        .route("/socket.io", engine_routes)
        .merge(api_routes)
        .route("/health", get(api::health))
        .route("/api/community/ws/health", get(api::ws_health))
        .route("/ready", get(api::ready));
    if node.config.admin_listen.is_none() {
        router = router
            .merge(admin::routes(node.clone()))
            .route("/metrics", get(api::metrics));
    }
    if node.config.dev {
        router = router.merge(dev::routes());
    }
    router.layer(body_limit).with_state(node)
}

/// The routes of the admin listener (`SWITCHBOARD_ADMIN_LISTEN`): metrics, the admin page
/// and the verbose health, for operators and Prometheus on an address kept off the internet.
pub fn admin_router(node: Arc<Node>) -> Router {
    Router::new()
        .merge(admin::routes(node.clone()))
        .route("/metrics", get(api::metrics))
        .route("/health", get(api::admin_health))
        .route("/ready", get(api::ready))
        // The admin endpoints take no body.
        .layer(DefaultBodyLimit::max(0))
        .with_state(node)
}

/// Runs a node on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.dev {
        tracing::warn!(
            "DEVELOPMENT MODE: tokens are checked with the public development secret; never run --dev in production"
        );
    }
    if config.migrate
        && let Some(database) = &config.database
    {
        let applied = crate::notifications::migrate::migrate(database.pool())
            .await
            .map_err(|e| anyhow::anyhow!("--migrate: {e}"))?;
        tracing::info!(applied = applied.len(), "migrations up to date");
    }
    // Bound before the node starts, so a taken port fails the start, not a task later.
    let admin_listener = match config.admin_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|e| {
            anyhow::anyhow!("SWITCHBOARD_ADMIN_LISTEN: cannot listen on {address}: {e}")
        })?),
        None => None,
    };
    let node = Node::start(config)?;
    let address = listener.local_addr()?;
    tracing::info!(%address, node_id = %node.config.node_id, bus = node.bus.kind(), "switchboard listening");
    if node.config.dev {
        if node.config.api_keys.iter().any(|key| key == DEV_API_KEY) {
            tracing::warn!(
                "DEVELOPMENT MODE: the HTTP API accepts the public key {DEV_API_KEY}; never run --dev in production"
            );
        }
        // A browser cannot open 0.0.0.0 everywhere; localhost reaches a wildcard listener.
        let reach = if address.ip().is_unspecified() {
            format!("localhost:{}", address.port())
        } else {
            address.to_string()
        };
        tracing::info!("development page: http://{reach}{}", dev::PATH);
    }

    let app = router(node.clone());
    let limits = ConnectionLimits::new(&node);
    let drain_node = node.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections");
        let _ = stop_tx.send(true);
        let _ = drained_tx.send(());
    };
    let admin = match admin_listener {
        Some(listener) => {
            let address = listener.local_addr()?;
            tracing::info!(%address, "admin listener: /metrics, /admin, /health?verbose=1");
            let mut stop = stop_rx;
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            Some(tokio::spawn(serve(
                listener,
                admin_router(node.clone()),
                ConnectionLimits::new(&node),
                stopped,
            )))
        }
        None => None,
    };
    let serve = serve(listener, app, limits, signal);
    let serve = tokio::spawn(serve);
    // The accept loop stops at the signal; then sockets are drained with a bounded wait.
    if drained_rx.await.is_ok() {
        drain_node.drain().await;
    }
    let served = async {
        let public = serve.await;
        if let Some(admin) = admin {
            admin.await?;
        }
        public
    };
    match tokio::time::timeout(Duration::from_secs(1), served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::debug!("server connections still closing at exit"),
    }
    Ok(())
}

/// Longest wait for a request's head (slow clients holding connections open).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers): far above what browsers and back-ends
/// send, and small enough that a slow sender holds little memory with it.
const MAX_HEAD_SIZE: usize = 64 * 1024;
/// Pause after an accept error that is not one connection's (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts HTTP/1.1 connections until `stop` resolves, then lets the open ones finish their
/// request and waits for them (upgraded websockets are no longer theirs: the drain closes them).
///
/// The node's own loop rather than `axum::serve`: that one serves through hyper-util's
/// version-sniffing builder, which wraps every connection in a private type, so an upgraded
/// websocket could not be turned back into its `TcpStream`; the websocket layer needs it to
/// let a broadcast write straight to the socket (src/websocket.rs).
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
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
                let Some(admitted) = limits.admit(remote.ip()) else {
                    tracing::debug!(%remote, "HTTP connection refused: too many open");
                    continue;
                };
                tokio::spawn(serve_connection(
                    ClientStream::new(tcp, limits.write_timeout),
                    remote,
                    app.clone(),
                    limits.body_timeout,
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

/// Caps on open HTTP connections: in total, and per peer address (keyed like the connect rate)
/// except for trusted proxies, which carry many clients. Only the TCP peer is known at accept
/// time; behind a proxy, the per-client limits apply later, per request.
struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_address: Arc<AddressCounts>,
    exempt: Vec<Network>,
    body_timeout: Duration,
    write_timeout: Duration,
    refused: IntCounter,
}

/// One admitted connection's places in the caps, given back when it is dropped (the connection
/// ends or becomes a websocket, which counts as a session instead).
struct Admitted {
    _total: OwnedSemaphorePermit,
    address: Option<(Arc<AddressCounts>, IpAddr)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((counts, key)) = &self.address {
            counts.remove(*key);
        }
    }
}

impl ConnectionLimits {
    fn new(node: &Node) -> Self {
        let config = &node.config;
        // A polling client holds up to two connections (its long poll and a send).
        let total = config
            .max_connections
            .saturating_mul(2)
            .min(Semaphore::MAX_PERMITS);
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_address: Arc::new(AddressCounts::new(config.max_http_connections_per_address)),
            exempt: config.trusted_proxies.clone(),
            body_timeout: config.body_timeout,
            write_timeout: config.write_timeout,
            refused: node
                .metrics
                .errors
                .with_label_values(&["http_connection_limit"]),
        }
    }

    /// Places for a new connection from `peer`, if both caps have room; refusals are counted.
    fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let admitted = self
            .total
            .clone()
            .try_acquire_owned()
            .ok()
            .and_then(|total| {
                if self.exempt.iter().any(|n| n.contains(peer)) {
                    return Some(Admitted {
                        _total: total,
                        address: None,
                    });
                }
                let key = address_key(peer);
                self.per_address.try_add(key).then(|| Admitted {
                    _total: total,
                    address: Some((self.per_address.clone(), key)),
                })
            });
        if admitted.is_none() {
            self.refused.inc();
        }
        admitted
    }
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
/// flight and closes.
async fn serve_connection(
    tcp: ClientStream,
    remote: SocketAddr,
    app: Router,
    body_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    admitted: Admitted,
) {
    // Small frames go out at once: with Nagle, a second frame waits for the peer's delayed ACK.
    if let Err(e) = tcp.tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
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
        .serve_connection(TokioIo::new(tcp), service)
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
