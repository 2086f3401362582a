//! A throwaway `redis-server` per test, so tests can kill and restart Redis
//! without disturbing each other (or a Redis the machine already runs).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::process::Command;

use super::process::{LoggedChild, read_log};
use super::{TempDir, free_port};

pub struct RedisServer {
    port: u16,
    // Declared before `dir` so the process is gone before its directory.
    process: Option<LoggedChild>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free 127.0.0.1 port, persisting nothing, and
    /// returns once it answers PING.
    pub async fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            process: None,
            dir: TempDir::new("redis"),
        };
        server.launch().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Everything redis-server printed, across restarts.
    pub fn logs(&self) -> String {
        read_log(&self.log_path())
    }

    /// SIGKILL, like a crash: no shutdown, clients see the connection drop.
    /// Returns once the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts it again on the same port (killing it first if it still runs),
    /// returning once it answers PING. The data is gone, as after a crash of a
    /// Redis that keeps nothing on disk.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }

    /// A new connection, for tests that want to run their own commands.
    pub async fn connection(&self) -> MultiplexedConnection {
        self.try_connection()
            .await
            .unwrap_or_else(|err| panic!("connect to redis at {}: {err}", self.url()))
    }

    /// SADD `members` to the set `key` (member sets and block lists the back-end keeps).
    pub async fn sadd(&self, key: &str, members: &[&str]) {
        let mut connection = self.connection().await;
        let _: i64 = redis::cmd("SADD")
            .arg(key)
            .arg(members)
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|err| panic!("SADD {key} on {}: {err}", self.url()));
    }

    /// PUBLISH `payload` on `channel`; returns how many subscribers got it.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let mut connection = self.connection().await;
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|err| panic!("PUBLISH {channel} on {}: {err}", self.url()))
    }

    fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn try_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        // Nothing on disk: tests start from empty, and a restart is a clean slate.
        command.args(["--save", "", "--appendonly", "no"]);
        // DEBUG SLEEP makes a slow Redis for the fault tests; a throwaway server may allow it.
        command.args(["--enable-debug-command", "yes"]);
        command.arg("--dir").arg(self.dir.path());
        let mut process = LoggedChild::spawn("redis-server", command, &self.log_path());
        process
            .wait_ready(&format!("answer PING on port {}", self.port), async || {
                self.ping().await
            })
            .await;
        self.process = Some(process);
    }

    async fn ping(&self) -> Result<(), String> {
        let ping = async {
            let mut connection = self.try_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(1), ping).await {
            Ok(Ok(pong)) if pong == "PONG" => Ok(()),
            Ok(Ok(other)) => Err(format!("PING answered {other:?}")),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_elapsed) => Err("no answer to PING within 1 s".to_owned()),
        }
    }
}
