//! Switchboard's integration tests, one binary: each module drives real nodes (and Redis,
//! MariaDB, PostgreSQL, nginx, Prometheus, real npm clients) over real sockets. One binary
//! links the crate once instead of once per file; `support` starts the shared services.

mod support;

mod admin;
mod bench_smoke;
mod bridge;
mod cluster;
mod cluster_state;
mod conformance;
mod deploy;
mod echo;
mod faults;
mod first_minute;
mod harness_selftest;
mod http_attacks;
mod json_ws;
mod layering;
mod lifecycle;
mod nginx;
mod notifications;
mod operator_access;
mod policy;
mod policy_sql;
mod prometheus;
mod settings_reference;
mod shared_state;
mod socketio;
mod socketio_abuse;
mod telemetry;
mod token_lifecycle;
mod webhooks;
mod wire;
