//! The axum router and the serve loop with graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

use crate::config::Config;
use crate::node::Node;
use crate::{admin, api, engine, ws};

/// Every route of a node's client port; with no admin listener, the admin routes too.
pub fn router(node: Arc<Node>) -> Router {
    // Bodies are read whole, then checked against the limit to answer 413 with our own error.
    let body_limit = DefaultBodyLimit::max(node.config.max_message_size + 1);
    let engine_routes = axum::routing::get(engine::get)
        .post(engine::post)
        .options(engine::preflight);
    let api_routes = Router::new()
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/notifications", post(api::notifications))
        .route("/api/users/{id}", get(api::user))
        .route("/api/users/{id}/disconnect", post(api::disconnect))
        .route("/api/push", post(api::push))
        .route("/api/rooms/{room}/broadcast", post(api::room_broadcast))
        .route("/api/batch", post(api::batch))
        .route("/api/channels", get(api::channels))
        .route("/api/channels/{name}", get(api::channel_info))
        .route("/api/channels/{name}/users", get(api::channel_users))
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

    let app = router(node.clone());
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
                stopped,
            )))
        }
        None => None,
    };
    let serve = serve(listener, app, signal);
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
/// Pause after an accept error that is not one connection's (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts HTTP/1.1 connections until `stop` resolves, then lets the open ones finish their
/// request and waits for them (upgraded websockets are no longer theirs: the drain closes them).
///
/// The node's own loop rather than `axum::serve`: that one serves through hyper-util's
/// version-sniffing builder, which wraps every connection in a private type, so an upgraded
/// websocket could not be turned back into its `TcpStream`; the websocket layer needs it to
/// let a broadcast write straight to the socket (src/websocket.rs).
async fn serve(listener: TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        match accepted {
            Ok((tcp, remote)) => {
                tokio::spawn(serve_connection(
                    tcp,
                    remote,
                    app.clone(),
                    closing_rx.clone(),
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

/// Serves one connection's requests, upgrades included; on shutdown, finishes the request in
/// flight and closes.
async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    app: Router,
    mut closing: watch::Receiver<bool>,
) {
    // Small frames go out at once: with Nagle, a second frame waits for the peer's delayed ACK.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
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
}
