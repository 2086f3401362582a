//! Switchboard: a real-time gateway node.
//!
//! ```text
//! client socket ──► protocol codec ──► node ──► hub (local: channel → sockets)
//!                                        │
//!                                        ▼
//!                                bus (Redis pub/sub | in-process)
//!                                        │  every node, this one included
//!                                        ▼
//!          node ──► hub ──► encode once per codec ──► each socket's bounded outbox ──► socket
//! HTTP API / Laravel PUBLISH ──► bus (the same path; nothing shortcuts to the hub)
//! ```
//!
//! - [`config`]: every setting, its default and validation.
//! - [`server`]: the router and the serve loop with graceful drain.
//! - [`engine`]: Engine.IO sessions over polling and websocket, handing their messages to a
//!   handler: [`socketio`] in the node (`examples/conformance.rs` has another).
//! - [`transport`]: the HTTP serve loop, the websocket upgrade and I/O, and the writes, origin
//!   check and close every websocket shares; [`ws`]: the plain JSON endpoint on it.
//! - [`protocol`]: pure codecs (Engine.IO, Socket.IO, JSON, websocket framing).
//! - [`auth`]: JWT → [`auth::Principal`]; [`channel`]: names and kinds of channels.
//! - [`policy`]: who may join which channel (rules, auth callback, SQL); [`database`]: the MySQL or PostgreSQL pool.
//! - [`hub`]: local channel memberships; [`outbox`]: each socket's bounded queue; [`pacing`]:
//!   direct or queued writes per fan-out.
//! - [`node`]: builds and holds the parts; [`bus`]: memory and Redis; [`dispatch`]: bus → hub;
//!   [`cluster`]: the shared state (connection slots, channel counts, presence).
//! - [`notifications`]: stored notifications, the `/notifications` namespace, migrations.
//! - [`backend`]: client events forwarded to the application; [`webhooks`]: events posted to it.
//! - [`api`]: `/api/broadcast`, `/health`, `/ready`, `/metrics`; [`metrics`]: Prometheus.
//! - [`access`]: who may call the API and the admin endpoints; wrong keys throttled.
//! - [`admin`]: the `/admin` page and its JSON endpoints; recent warnings and errors.
//! - [`telemetry`]: logs (text or JSON, `RUST_LOG`) and OpenTelemetry traces over OTLP.
//! - [`token`]: `switchboard token`, a signed JWT to try a node with; [`dev`]: the `--dev` page.

pub mod access;
pub mod admin;
pub mod api;
pub mod auth;
pub mod backend;
pub mod blocks;
pub mod bus;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod database;
pub mod dev;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod http_client;
pub mod hub;
pub mod id;
pub mod jwks;
pub mod limit;
pub mod members;
pub mod metrics;
pub mod node;
pub mod notifications;
pub mod outbox;
pub mod pacing;
pub mod policy;
pub mod protocol;
pub mod server;
pub mod socketio;
pub mod telemetry;
pub mod token;
pub mod transport;
pub mod webhooks;
pub mod ws;

#[cfg(test)]
mod fuzz_replay;
