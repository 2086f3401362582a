//! The process as operators see it: configuration errors at start, the config file,
//! public-key tokens, and graceful shutdown on SIGTERM.

use std::process::Command;
use std::time::Duration;

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn invalid_configuration_stops_with_one_clear_line() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&[], &[], "SWITCHBOARD_JWT_SECRET: no JWT key"),
        (
            &["--dev", "--redis-url", "http://not-redis"],
            &[],
            "SWITCHBOARD_REDIS_URL",
        ),
        (
            &[],
            &[("SWITCHBOARD_JWT_PUBLIC_KEY", "/nonexistent/key.pem")],
            "SWITCHBOARD_JWT_PUBLIC_KEY: cannot read /nonexistent/key.pem",
        ),
        (
            &["--jwt-secret", "s", "--jwt-algorithm", "RS256"],
            &[],
            "SWITCHBOARD_JWT_ALGORITHM",
        ),
        (
            &["--dev", "--max-connections", "0"],
            &[],
            "SWITCHBOARD_MAX_CONNECTIONS: must be greater than 0",
        ),
        (
            &["--dev"],
            &[("SWITCHBOARD_PING_INTERVAL", "soon")],
            "SWITCHBOARD_PING_INTERVAL",
        ),
    ];
    for (args, envs, expected) in cases {
        let (status, output) = Node::spawn_expect_failure(args, envs).await;
        assert!(!status.success(), "{args:?} {envs:?} must fail");
        assert!(
            output.contains(expected),
            "{args:?} {envs:?}: expected {expected:?} in:\n{output}"
        );
        assert!(
            output.trim().lines().count() <= 3,
            "one clear line, not a backtrace:\n{output}"
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for (variable, default) in [
        ("SWITCHBOARD_LISTEN", "0.0.0.0:6001"),
        ("SWITCHBOARD_PING_INTERVAL", "25s"),
        ("SWITCHBOARD_PING_TIMEOUT", "20s"),
        ("SWITCHBOARD_MAX_CONNECTIONS", "100000"),
        ("SWITCHBOARD_MAX_MESSAGE_SIZE", "1000000"),
        ("SWITCHBOARD_MAX_SUBSCRIPTIONS", "100"),
        ("SWITCHBOARD_DRAIN_TIME", "10s"),
    ] {
        assert!(
            help.contains(variable),
            "{variable} missing from --help:\n{help}"
        );
        assert!(
            help.contains(&format!("[default: {default}]")),
            "default {default} missing:\n{help}"
        );
    }
    assert!(
        help.contains("[default: none]"),
        "the empty prefix default is spelled out"
    );
    for variable in [
        "SWITCHBOARD_REDIS_PREFIX",
        "SWITCHBOARD_REDIS_URL",
        "SWITCHBOARD_JWT_SECRET",
        "SWITCHBOARD_JWT_PUBLIC_KEY",
        "SWITCHBOARD_API_KEYS",
        "SWITCHBOARD_ALLOWED_ORIGINS",
        "SWITCHBOARD_NODE_ID",
    ] {
        assert!(help.contains(variable), "{variable} missing from --help");
    }
}

#[tokio::test]
async fn config_file_settings_apply() {
    let dir = std::env::temp_dir().join(format!("switchboard-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("switchboard.toml");
    std::fs::write(
        &path,
        "jwt_secret = \"file-secret\"\napi_keys = [\"from-file\"]\nnode_id = \"filed\"\n",
    )
    .expect("write");
    let node = Node::spawn(&["--config", path.to_str().expect("utf-8 path")], &[]).await;
    let health = http("GET", &format!("{}/health", node.url()), &[], b"")
        .await
        .json();
    assert_eq!(health["node_id"], "filed");
    let body = json!({"channel": "c", "event": "e"}).to_string();
    let accepted = http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[("authorization", "Bearer from-file")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(accepted.status, 202);
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": jwt_hs256("file-secret", json!({"sub": 1}))}, "transports": ["websocket"]}),
    );
    agent.expect_connect(TIMEOUT).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn rs256_public_key_and_no_algorithm_confusion() {
    let dir = std::env::temp_dir().join(format!("switchboard-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    openssl_rsa_key(&private);
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl pkey")
        .success();
    assert!(ok, "openssl wrote the public key");
    let node = Node::spawn(
        &[],
        &[("SWITCHBOARD_JWT_PUBLIC_KEY", public.to_str().expect("path"))],
    )
    .await;

    let private_pem = std::fs::read(&private).expect("private key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&private_pem).expect("rsa key");
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": 1}),
        &key,
    )
    .expect("sign");
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": rs256}, "transports": ["websocket"]}),
    );
    agent.expect_connect(TIMEOUT).await;

    // The classic confusion attack: HS256 keyed with the public key's text.
    let public_pem = std::fs::read_to_string(&public).expect("public key");
    let forged = jwt_hs256(&public_pem, json!({"sub": 1}));
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": forged}, "transports": ["websocket"]}),
    );
    assert_eq!(
        agent.expect_refused(TIMEOUT).await,
        "invalid token: algorithm not allowed"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn sigterm_drains_clients_with_a_reconnectable_close_and_exits_zero() {
    let mut node = Node::spawn(&["--dev", "--drain-time", "5s"], &[]).await;
    let token = jwt_hs256("switchboard-dev-secret", json!({"sub": 1}));
    let mut ws = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token}, "transports": ["websocket"], "reconnection": true}),
    );
    let mut polling = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token}, "transports": ["polling"], "reconnection": true}),
    );
    ws.expect_connect(TIMEOUT).await;
    polling.expect_connect(TIMEOUT).await;
    polling.expect_event("subscribed", TIMEOUT).await;

    node.sigterm();
    // "transport close" is the reason socket.io-client reconnects on ("io server disconnect" would not).
    assert_eq!(ws.expect_disconnect(TIMEOUT).await, "transport close");
    // A polling client between two requests finds the listener closed: "transport error",
    // also a reason socket.io-client reconnects on.
    let reason = polling.expect_disconnect(TIMEOUT).await;
    assert!(
        reason == "transport close" || reason == "transport error",
        "{reason}"
    );
    let status = node
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("exits within the drain time");
    assert!(status.success(), "exit status {status}");
    let logs = node.logs();
    assert!(logs.contains("draining"), "{logs}");
    assert!(logs.contains("drained"), "{logs}");
}
