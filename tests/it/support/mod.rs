//! Test support for Switchboard's integration tests.
//!
//! Everything here runs the real thing on loopback addresses: the switchboard
//! binary ([`Node`]), a throwaway `redis-server` ([`RedisServer`]), MariaDB
//! ([`MariaDb`]) and PostgreSQL ([`Postgres`]; [`Db`] is either, for tests written once for
//! both), nginx in front of several nodes ([`Nginx`]), and real
//! socket.io-client and Laravel Echo instances scripted over JSON lines
//! ([`Agent`], `tests/js/agent.mjs`; [`EchoAgent`], `tests/js/echo-agent.mjs`).
//! [`http`] is a small raw HTTP/1.1 client that can pick its source address, so
//! a test can look like several distinct clients to nginx's `hash $remote_addr`.
//! [`Prometheus`] is a real Prometheus scraping nodes, queried over its HTTP API.
//! [`build_example`] builds one of the package's examples (the floor, the conformance server).
//!
//! Use it from a test file with `mod support;` and `use support::*;`.
//! Every process is killed when its handle drops; when that drop happens because
//! the test panicked, the process's log is printed so the failure explains itself.

// Each integration test is its own crate and uses only part of this module.
#![allow(dead_code, unused_imports)]

mod agent;
mod app_server;
mod database;
mod echo;
mod example;
mod http;
mod json_lines;
mod jwt;
mod mariadb;
mod nginx;
mod node;
mod postgres;
mod process;
mod prometheus;
mod redis_server;
mod template;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use agent::Agent;
pub use app_server::{Answer, AppServer, Received};
pub(crate) use database::on_both_databases;
pub use database::{Db, Engine};
pub use echo::{ChannelKind, EchoAgent};
pub use example::build_example;
pub use http::{HttpResponse, http, http_from, try_http, try_http_from};
pub use json_lines::JsonLinesProcess;
pub use jwt::{jwt_hs256, jwt_none, openssl_rsa_key};
pub use mariadb::MariaDb;
pub use nginx::Nginx;
pub use node::{Node, run_switchboard, switchboard_output};
pub use postgres::Postgres;
pub(crate) use process::LoggedChild;
pub use prometheus::Prometheus;
pub use redis_server::RedisServer;

/// Whether the server ends a websocket (close frame, error or end of stream) within
/// [`TIMEOUT`]; frames before that are skipped.
pub async fn ws_closed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A generous default for "this should happen soon" waits; local round trips
/// take milliseconds, so only a broken behaviour ever gets near it.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a process gets to come up (answer PING, /health, accept) before the
/// test fails with its log.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The OS picks it and the listener is closed again, so another process can
/// take it before the caller binds; tests accept that small race in exchange
/// for starting real binaries that need a port on their command line.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// `name` from PATH, else Debian's `/usr/sbin/{name}`: sbin (nginx, mariadbd)
/// is often missing from a non-root user's PATH.
pub fn system_binary(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| Path::new("/usr/sbin").join(name))
}

/// The repository root, where `nginx/` and `tests/js/` live.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A channel policy file holding `text`, in a fresh temp dir that lives as long as the
/// returned handle (a node reads its policy once, at start).
pub fn policy_file(text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("policy");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    (dir, path)
}

/// A fresh directory under the system temp dir, removed on drop.
///
/// Each process gets its own so that logs, pid files and nginx temp paths of
/// tests running in parallel never collide.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("switchboard-tests")
            .join(format!("{prefix}-{}-{n}", std::process::id()));
        // A previous run whose process had the same pid may have left it behind.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("create temp dir {}: {err}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
