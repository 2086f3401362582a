//! The node's routers, and its run: listeners, connection caps, graceful drain.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::{Clients, Config, DEV_API_KEY};
use crate::limit::{AddressCounts, Network, address_key};
use crate::node::Node;
use crate::transport::http::{Timeouts, serve};
use crate::{admin, api, dev, engine, socketio, ws};

/// Every route of a node's client port; with no admin listener, the admin routes too.
pub fn router(node: Arc<Node>, sessions: Arc<engine::Sessions<socketio::Sockets>>) -> Router {
    // Bodies are read whole, then checked against the limit to answer 413 with our own error.
    let body_limit = DefaultBodyLimit::max(node.config.limits.max_message_size + 1);
    let engine_routes = engine::routes(Arc::new(socketio::SocketIo::engine(&node, sessions)));
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
    for path in &node.config.json.ws_paths {
        router = router.route(path, get(ws::upgrade));
    }
    let mut router = router
        .route("/socket.io/", engine_routes.clone())
        .route("/socket.io", engine_routes)
        .merge(api_routes)
        .route("/health", get(api::health))
        .route("/api/community/ws/health", get(api::ws_health))
        .route("/ready", get(api::ready));
    if node.config.server.admin_listen.is_none() {
        router = router
            .merge(admin::routes(node.clone()))
            .route("/metrics", get(api::metrics));
    }
    if node.config.server.dev {
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
    clients: Clients,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.server.dev {
        tracing::warn!(
            "DEVELOPMENT MODE: tokens are checked with the public development secret; never run --dev in production"
        );
    }
    if config.migrate
        && let Some(database) = &clients.database
    {
        let applied = crate::notifications::migrate::migrate(database.pool())
            .await
            .map_err(|e| anyhow::anyhow!("--migrate: {e}"))?;
        tracing::info!(applied = applied.len(), "migrations up to date");
    }
    // Bound before the node starts, so a taken port fails the start, not a task later.
    let admin_listener = match config.server.admin_listen {
        Some(address) => Some(TcpListener::bind(address).await.map_err(|e| {
            anyhow::anyhow!("SWITCHBOARD_ADMIN_LISTEN: cannot listen on {address}: {e}")
        })?),
        None => None,
    };
    // Engine.IO's sessions: Socket.IO's engine serves them, the node counts and drains them.
    let sessions = Arc::new(engine::Sessions::<socketio::Sockets>::default());
    let node = Node::start(config, clients, sessions.clone())?;
    let address = listener.local_addr()?;
    tracing::info!(%address, node_id = %node.config.server.node_id, bus = node.bus.kind(), "switchboard listening");
    if node.config.server.dev {
        if node
            .config
            .auth
            .api_keys
            .iter()
            .any(|key| key == DEV_API_KEY)
        {
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

    let app = router(node.clone(), sessions);
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
            let limits = ConnectionLimits::new(&node);
            Some(tokio::spawn(limits.serve(
                listener,
                admin_router(node.clone()),
                stopped,
            )))
        }
        None => None,
    };
    let serve = tokio::spawn(limits.serve(listener, app, signal));
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

/// Caps on open HTTP connections: in total, and per peer address (keyed like the connect rate)
/// except for trusted proxies, which carry many clients. Only the TCP peer is known at accept
/// time; behind a proxy, the per-client limits apply later, per request.
struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_address: Arc<AddressCounts>,
    exempt: Vec<Network>,
    timeouts: Timeouts,
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
            .limits
            .max_connections
            .saturating_mul(2)
            .min(Semaphore::MAX_PERMITS);
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_address: Arc::new(AddressCounts::new(
                config.limits.max_http_connections_per_address,
            )),
            exempt: config.limits.trusted_proxies.clone(),
            timeouts: Timeouts {
                body: config.limits.body_timeout,
                write: config.limits.write_timeout,
            },
            refused: node
                .metrics
                .errors
                .with_label_values(&["http_connection_limit"]),
        }
    }

    /// Serves `app` on `listener` within these caps until `stop` resolves.
    fn serve(
        self,
        listener: TcpListener,
        app: Router,
        stop: impl Future<Output = ()>,
    ) -> impl Future<Output = ()> {
        serve(
            listener,
            app,
            self.timeouts,
            move |peer| self.admit(peer.ip()),
            stop,
        )
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
