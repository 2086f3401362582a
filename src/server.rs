//! The axum router and the serve loop with graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::Node;
use crate::{admin, api, engine, ws};

/// Every route of a node.
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
    router
        .route("/socket.io/", engine_routes.clone())
        .route("/socket.io", engine_routes)
        .merge(api_routes)
        .merge(admin::routes(node.clone()))
        .route("/health", get(api::health))
        .route("/api/community/ws/health", get(api::ws_health))
        .route("/ready", get(api::ready))
        .route("/metrics", get(api::metrics))
        .layer(body_limit)
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
    let node = Node::start(config)?;
    let address = listener.local_addr()?;
    tracing::info!(%address, node_id = %node.config.node_id, bus = node.bus.kind(), "switchboard listening");

    let app = router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let drain_node = node.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections");
        let _ = drained_tx.send(());
    };
    // Small frames go out at once: with Nagle, a second frame waits for the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, app).with_graceful_shutdown(signal);
    let serve = tokio::spawn(async move { serve.await });
    // The accept loop stops at the signal; then sockets are drained with a bounded wait.
    if drained_rx.await.is_ok() {
        drain_node.drain().await;
    }
    match tokio::time::timeout(std::time::Duration::from_secs(1), serve).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => tracing::debug!("server connections still closing at exit"),
    }
    Ok(())
}
