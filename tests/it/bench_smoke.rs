//! A small run of each `switchboard-bench` scenario against a real node, so the load generator
//! keeps working: its JSON summary parses and counts what happened. Nothing here is timed.
//! The floor (`examples/floor.rs`, the benchmarks' minimal reference server) runs the same
//! fanout, so it keeps working too. And the report `scripts/bench-compare` draws from the
//! results (docs/BENCHMARKS.md's tables and targets, the charts in docs/bench/) checks itself
//! and matches the checked-in results.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use tokio::process::Command;

const API_KEY: &str = "k";
/// A bench run is a few seconds; more means it hung.
const BENCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `switchboard-bench <args>` and returns its JSON summary line.
async fn bench(args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"));
    command
        .args(args)
        .args(["--source-addresses", "1"])
        .kill_on_drop(true);
    let output = tokio::time::timeout(BENCH_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("switchboard-bench {args:?} ran longer than {BENCH_TIMEOUT:?}"))
        .unwrap_or_else(|err| panic!("run switchboard-bench {args:?}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "switchboard-bench {args:?} failed ({}):\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "switchboard-bench {args:?} should print exactly one line on stdout, got:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(lines[0])
        .unwrap_or_else(|err| panic!("summary of {args:?} is not JSON ({err}): {}", lines[0]))
}

fn count(summary: &Value, path: &str) -> u64 {
    summary
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no count at {path} in {summary}"))
}

/// Fanout of 20 messages to 5 clients on 2 channels: every delivery arrives exactly once.
async fn fanout(url: &str, publish: &[&str]) -> Value {
    let mut args = vec![
        "fanout",
        "--url",
        url,
        "--connections",
        "5",
        "--channels",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--label",
        "smoke",
    ];
    args.extend_from_slice(publish);
    let summary = bench(&args).await;
    assert_eq!(summary["scenario"], "fanout");
    assert_eq!(summary["label"], "smoke");
    assert_eq!(count(&summary, "/connect/connected"), 5, "{summary}");
    assert_eq!(count(&summary, "/published"), 20, "{summary}");
    // Channel 0 (clients 0, 2, 4) and channel 1 (clients 1, 3) get 10 messages each.
    assert_eq!(count(&summary, "/expected"), 50, "{summary}");
    assert_eq!(count(&summary, "/delivered"), 50, "{summary}");
    assert_eq!(count(&summary, "/lost"), 0, "{summary}");
    assert_eq!(count(&summary, "/duplicated"), 0, "{summary}");
    assert_eq!(count(&summary, "/misrouted"), 0, "{summary}");
    assert_eq!(count(&summary, "/latency_ms/count"), 50, "{summary}");
    summary
}

#[tokio::test]
async fn fanout_through_the_http_api() {
    let node = Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await;
    let pid = node.pid().to_string();
    let summary = fanout(
        &node.url(),
        &[
            "--publish",
            "http",
            "--api-key",
            API_KEY,
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(summary["params"]["publish"], "http");
    assert!(summary["server"]["cpu_seconds"].is_number(), "{summary}");
    assert!(count(&summary, "/server/rss_bytes") > 0, "{summary}");
}

/// A `--dev` node on `redis_url` with the bench's API key and Laravel's Redis prefix.
async fn redis_node(redis_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Node {
    let mut all = vec![
        "--dev",
        "--api-keys",
        API_KEY,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        "laravel_database_",
    ];
    all.extend_from_slice(args);
    Node::spawn(&all, envs).await
}

#[tokio::test]
async fn fanout_through_redis() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let node = redis_node(&redis_url, &[], &[]).await;
    let summary = fanout(
        &node.url(),
        &[
            "--publish",
            "redis",
            "--redis-url",
            &redis_url,
            "--redis-prefix",
            "laravel_database_",
        ],
    )
    .await;
    assert_eq!(summary["params"]["publish"], "redis");
    assert!(summary["server"].is_null(), "no --server-pid: {summary}");
}

#[tokio::test]
async fn fanout_over_the_json_protocol() {
    let node = Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await;
    let summary = fanout(
        &node.url(),
        &[
            "--protocol",
            "json",
            "--publish",
            "http",
            "--api-key",
            API_KEY,
        ],
    )
    .await;
    assert_eq!(summary["params"]["protocol"], "json", "{summary}");
}

#[tokio::test]
async fn connect_runs_every_handshake() {
    let node = Node::spawn(&["--dev"], &[]).await;
    connect_all(&node, "socketio").await;
}

#[tokio::test]
async fn connect_over_the_json_protocol() {
    let node = Node::spawn(&["--dev"], &[]).await;
    connect_all(&node, "json").await;
}

/// 20 handshakes in `protocol`, 5 at a time: all succeed.
async fn connect_all(node: &Node, protocol: &str) {
    let summary = bench(&[
        "connect",
        "--url",
        &node.url(),
        "--connections",
        "20",
        "--concurrency",
        "5",
        "--protocol",
        protocol,
    ])
    .await;
    assert_eq!(summary["scenario"], "connect");
    assert_eq!(summary["params"]["protocol"], protocol, "{summary}");
    assert_eq!(count(&summary, "/connected"), 20, "{summary}");
    for kind in [
        "tcp",
        "upgrade",
        "connect_error",
        "subscribe",
        "timeout",
        "protocol",
    ] {
        assert_eq!(
            count(&summary, &format!("/failures/{kind}")),
            0,
            "{summary}"
        );
    }
    assert_eq!(count(&summary, "/latency_ms/count"), 20, "{summary}");
}

/// A wrongly signed token is a connect error in both protocols: Socket.IO's `44` answer to
/// CONNECT, the JSON endpoint's HTTP 401 before the upgrade.
#[tokio::test]
async fn connect_counts_refused_tokens() {
    let node = Node::spawn(&["--dev"], &[]).await;
    for protocol in ["socketio", "json"] {
        let summary = bench(&[
            "connect",
            "--url",
            &node.url(),
            "--connections",
            "3",
            "--jwt-secret",
            "not-the-secret",
            "--protocol",
            protocol,
        ])
        .await;
        assert_eq!(count(&summary, "/connected"), 0, "{protocol}: {summary}");
        assert_eq!(
            count(&summary, "/failures/connect_error"),
            3,
            "{protocol}: {summary}"
        );
    }
}

/// Holds 5 clients for a second: all connect and none is dropped.
async fn idle(url: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "idle",
        "--url",
        url,
        "--connections",
        "5",
        "--duration",
        "1",
    ];
    args.extend_from_slice(extra);
    let summary = bench(&args).await;
    assert_eq!(summary["scenario"], "idle");
    assert_eq!(count(&summary, "/connect/connected"), 5, "{summary}");
    assert_eq!(count(&summary, "/dropped"), 0, "{summary}");
    summary
}

#[tokio::test]
async fn idle_holds_connections_and_measures_the_server() {
    let node = Node::spawn(&["--dev"], &[]).await;
    let pid = node.pid().to_string();
    let summary = idle(&node.url(), &["--server-pid", &pid]).await;
    for field in [
        "rss_bytes",
        "rss_before_bytes",
        "rss_connected_bytes",
        "rss_end_bytes",
        "rss_per_connection_bytes",
    ] {
        assert!(
            summary["server"][field].is_u64(),
            "server.{field} missing: {summary}"
        );
    }
}

/// Idle JSON clients answer the server's websocket pings while they hold: with a ping every
/// 100 ms and 300 ms to answer, a second of holding drops none.
#[tokio::test]
async fn idle_json_clients_answer_pings() {
    let node = Node::spawn(
        &[
            "--dev",
            "--ws-ping-interval",
            "100ms",
            "--ws-ping-timeout",
            "300ms",
        ],
        &[],
    )
    .await;
    let summary = idle(&node.url(), &["--protocol", "json"]).await;
    assert_eq!(summary["params"]["protocol"], "json", "{summary}");
}

/// The floor (`examples/floor.rs`) as a child process on a free port.
struct Floor {
    addr: SocketAddr,
    // Declared before `_dir` so the process is gone before its log file.
    process: LoggedChild,
    _dir: TempDir,
}

impl Floor {
    /// Builds the floor and runs it against `redis_url` with `--redis-prefix <prefix>` and
    /// `extra` flags; returns once `GET /health` answers 200.
    async fn spawn(redis_url: &str, prefix: &str, extra: &[&str]) -> Floor {
        let binary = build_example("floor").await;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("floor");
        let mut command = Command::new(&binary);
        command
            .args(["--listen", &addr.to_string()])
            .args(["--redis-url", redis_url, "--redis-prefix", prefix])
            .args(extra);
        let process = LoggedChild::spawn("floor", command, &dir.path().join("floor.log"));
        let mut floor = Floor {
            addr,
            process,
            _dir: dir,
        };
        let health = format!("{}/health", floor.url());
        floor.process.wait_http_ok(&health).await;
        floor
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The floor runs the bench's fanout through Redis (with Engine.IO pings every 100 ms among
/// the broadcasts) and its idle scenario: nothing lost, duplicated or dropped.
#[tokio::test]
async fn the_floor_fans_out_through_redis() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let prefix = "laravel_database_";
    let floor = Floor::spawn(&redis_url, prefix, &["--ping-interval-ms", "100"]).await;
    let pid = floor.process.pid().to_string();
    let summary = fanout(
        &floor.url(),
        &[
            "--publish",
            "redis",
            "--redis-url",
            &redis_url,
            "--redis-prefix",
            prefix,
            "--server-pid",
            &pid,
        ],
    )
    .await;
    assert_eq!(count(&summary, "/dropped"), 0, "{summary}");
    assert!(summary["server"]["cpu_seconds"].is_number(), "{summary}");
    idle(&floor.url(), &["--server-pid", &pid]).await;
}

/// Runs `scripts/<name> <args>` (Python, standard library only); panics with its output unless
/// it succeeds.
async fn script(name: &str, args: &[&str]) {
    let script = manifest_dir().join("scripts").join(name);
    let output = tokio::time::timeout(BENCH_TIMEOUT, Command::new(&script).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} ran longer than {BENCH_TIMEOUT:?}"))
        .unwrap_or_else(|err| panic!("run {} {args:?}: {err}", script.display()));
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The report's own checks: the doctests of its formatting and chart helpers, and a report
/// drawn from a synthetic results file of two runs (every scenario in the tables, one chart
/// bar per figure, each earlier run's figures marked, one row per target).
#[tokio::test]
async fn the_benchmark_report_draws_what_it_should() {
    script("bench-compare", &["--self-test"]).await;
}

/// docs/BENCHMARKS.md's generated sections and docs/bench/*.svg are what
/// docs/bench-results.jsonl draws: not edited by hand, and drawn again
/// (`scripts/bench-compare --render-only`) whenever the drawing changes.
#[tokio::test]
async fn the_checked_in_report_is_what_the_results_draw() {
    script("bench-compare", &["--render-only", "--check"]).await;
}

/// A few seconds of the soak (`scripts/soak`): every kind of client, churn, presence,
/// subscribe/unsubscribe traffic and Redis deliveries against a node with the soak's policy; the
/// scenario keeps working, loses nothing and samples the node. Its growth verdict needs minutes
/// and is not judged here; `scripts/soak --self-test` checks the report it draws.
#[tokio::test]
async fn soak_runs_every_kind_of_client() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let policy = manifest_dir().join("bench").join("soak-policy.toml");
    let node = redis_node(
        &redis_url,
        &["--policy-file", policy.to_str().expect("a UTF-8 path")],
        &[
            // As scripts/soak: every client comes from one loopback address.
            ("SWITCHBOARD_CONNECT_RATE_PER_IP", "0"),
            ("SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS", "1000"),
            ("SWITCHBOARD_MAX_HTTP_CONNECTIONS_PER_ADDRESS", "1000"),
        ],
    )
    .await;
    let pid = node.pid().to_string();
    let summary = bench(&[
        "soak",
        "--url",
        &node.url(),
        "--server-pid",
        &pid,
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        "laravel_database_",
        "--connections",
        "100",
        "--mix",
        "50,30,20",
        "--channels",
        "4",
        "--presence-channels",
        "2",
        "--deliveries",
        "400",
        "--churn",
        "0.05",
        "--resubscribe",
        "0.05",
        "--duration",
        "6",
        "--sample-interval",
        "2",
        "--warmup",
        "2",
        "--grace",
        "1",
    ])
    .await;
    assert_eq!(summary["scenario"], "soak", "{summary}");
    for kind in [
        "socketio_websocket",
        "json",
        "socketio_polling",
        "presence_members",
    ] {
        assert!(
            count(&summary, &format!("/clients/{kind}")) > 0,
            "{kind}: {summary}"
        );
    }
    assert_eq!(count(&summary, "/ramp/connected"), 100, "{summary}");
    for none in [
        "lost",
        "duplicated",
        "misrouted",
        "dropped",
        "refused",
        "publish_errors",
    ] {
        assert_eq!(
            count(&summary, &format!("/totals/{none}")),
            0,
            "{none}: {summary}"
        );
    }
    let failures = &summary["totals"]["handshake_failures"];
    let failed: u64 = failures
        .as_object()
        .expect("failures by kind")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(failed, 0, "{summary}");
    for some in [
        "delivered",
        "reconnects",
        "subscribes",
        "unsubscribes",
        "presence_events",
    ] {
        assert!(
            count(&summary, &format!("/totals/{some}")) > 0,
            "{some}: {summary}"
        );
    }
    let samples = summary["samples"].as_array().expect("samples");
    assert!(samples.len() >= 3, "{summary}");
    for sample in samples {
        for measured in ["rss_bytes", "fds", "tasks"] {
            assert!(
                sample[measured].as_u64().is_some_and(|v| v > 0),
                "{measured}: {sample}"
            );
        }
    }
}

/// The soak's report draws what it should from a synthetic run (its own checks).
#[tokio::test]
async fn the_soak_report_draws_what_it_should() {
    script("soak", &["--self-test"]).await;
}
