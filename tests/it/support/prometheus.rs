//! A real Prometheus server (the Debian package's binary) scraping test nodes every second,
//! with its own configuration, storage directory and free port: a Prometheus the machine
//! may already run as a service (on 9090) is never touched.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use tokio::time::Instant;

use super::process::LoggedChild;
use super::{TempDir, free_port, system_binary, try_http};

pub struct Prometheus {
    port: u16,
    // Declared before `dir` so the process is gone before its storage.
    process: LoggedChild,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of every target each second, and returns once
    /// it answers `/-/ready`.
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let binary = system_binary("prometheus");
        assert!(
            binary.is_file(),
            "{} not found: scripts/test installs the Debian package `prometheus`",
            binary.display()
        );
        let port = free_port();
        let dir = TempDir::new("prometheus");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: switchboard\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|err| panic!("write {}: {err}", config_path.display()));
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let process = LoggedChild::spawn("prometheus", command, &dir.path().join("prometheus.log"));
        let mut prometheus = Prometheus { port, process, dir };
        let ready = format!("{}/-/ready", prometheus.url());
        prometheus.process.wait_http_ok(&ready).await;
        prometheus
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything Prometheus logged.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Runs an instant query through the HTTP API and returns `data.result` (a vector's
    /// samples, each `{"metric": {…}, "value": [time, "text"]}`); panics on an API error.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.url(), encode(promql));
        let response = try_http("GET", &url, &[], b"")
            .await
            .unwrap_or_else(|err| panic!("query {promql}: {err}"));
        let body = response.json();
        assert_eq!(body["status"], "success", "query {promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single number a query returns, or `None` while it returns no sample.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `promql` every 250 ms until its single number passes `want` (described by
    /// `what`, e.g. "= 5"); returns it, or panics with the last answer after `timeout`.
    pub async fn wait_for(
        &self,
        promql: &str,
        what: &str,
        want: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.value(promql).await;
            if let Some(value) = got.filter(|v| want(*v)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} is {got:?}, not {what}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Percent-encodes a query-string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
