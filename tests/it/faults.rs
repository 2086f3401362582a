//! Faults with messages flowing (issue 19 §4): two nodes on one throwaway Redis, a Socket.IO
//! client on each, and then Redis stops answering. The nodes stay up, `/ready` says so, a
//! publish during the outage is refused out loud (never a silent 2xx), and delivery resumes
//! within seconds of Redis coming back, with presence right afterwards.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use tokio::time::Instant;

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";
/// How long Redis is paused, as the issue asks.
const PAUSE: Duration = Duration::from_secs(10);
/// How soon after Redis is back delivery must resume.
const RESUME: Duration = Duration::from_secs(5);

async fn client(node: &Node, user: u64) -> Agent {
    let token = jwt_hs256(SECRET, json!({"sub": user, "name": format!("U{user}")}));
    let mut agent = Agent::spawn(
        json!({"url": node.url(), "auth": {"token": token}, "transports": ["websocket"]}),
    );
    agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    agent
}

async fn broadcast(node: &Node, event: &str) -> HttpResponse {
    let body = json!({"channel": "news", "event": event, "data": {"e": event}});
    http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        body.to_string().as_bytes(),
    )
    .await
}

async fn ready(node: &Node) -> u16 {
    try_http("GET", &format!("{}/ready", node.url()), &[], b"")
        .await
        .map_or(0, |r| r.status)
}

/// Two nodes started with the same `args` and `env` (one Redis), both ready.
async fn two_ready_nodes(args: &[&str], env: &[(&str, &str)]) -> (Node, Node) {
    let one = Node::spawn(args, env).await;
    let two = Node::spawn(args, env).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    (one, two)
}

/// The next event an agent received on `news`: its name and its data.
async fn next_event(agent: &mut Agent) -> (String, Value) {
    let line = agent
        .wait_for(|l| l["type"] == "event" && l["args"][0] == "news", TIMEOUT)
        .await;
    let name = line["event"].as_str().unwrap_or_default().to_owned();
    (name, line["args"][1].clone())
}

#[tokio::test]
async fn a_paused_redis_is_reported_refused_and_recovered_from() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (_dir, policy) =
        policy_file("[[channel]]\npattern = \"presence-news.{id}\"\nallow = \"open\"\n");
    let policy = policy.to_str().expect("utf-8 path").to_owned();
    let args = ["--dev", "--api-keys", API_KEY, "--redis-url", &url];
    let env = [("SWITCHBOARD_POLICY_FILE", policy.as_str())];
    let (one, two) = two_ready_nodes(&args, &env).await;
    let mut a = client(&one, 1).await;
    let mut b = client(&two, 2).await;
    for agent in [&mut a, &mut b] {
        agent.subscribe_ok("news").await;
        agent.subscribe_ok("presence-news.1").await;
    }
    assert_eq!(broadcast(&one, "before").await.status, 202);
    for agent in [&mut a, &mut b] {
        assert_eq!(next_event(agent).await.0, "before");
    }

    let mut conn = redis.connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    let paused = Instant::now();

    // A publish in the outage is answered, and not with a 2xx, well before Redis is back.
    let refused = broadcast(&one, "during").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        paused.elapsed() < PAUSE / 2,
        "answered after {:?}",
        paused.elapsed()
    );
    // Both nodes say they are not ready while Redis does not answer.
    for node in [&one, &two] {
        while ready(node).await != 503 {
            assert!(
                paused.elapsed() < PAUSE,
                "/ready still 200 while Redis is paused:\n{}",
                node.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Nodes stay up: they answer their health check.
    for node in [&one, &two] {
        let health = http("GET", &format!("{}/health", node.url()), &[], b"").await;
        assert_eq!(health.status, 200);
    }

    // Redis back: ready again, and a publish is delivered to both, within RESUME.
    tokio::time::sleep_until(paused + PAUSE).await;
    for node in [&one, &two] {
        while ready(node).await != 200 {
            assert!(
                paused.elapsed() < PAUSE + RESUME,
                "not ready {:?} after Redis came back:\n{}",
                paused.elapsed() - PAUSE,
                node.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(broadcast(&two, "after").await.status, 202);
    for (who, agent) in [("a", &mut a), ("b", &mut b)] {
        // The refused publish may still have reached Redis once it woke up; nothing else may
        // come between `before` and `after`.
        let mut next = next_event(agent).await;
        if next.0 == "during" {
            next = next_event(agent).await;
        }
        assert_eq!(next, ("after".to_owned(), json!({"e": "after"})), "{who}");
    }
    assert!(
        paused.elapsed() < PAUSE + RESUME,
        "delivery resumed {:?} after Redis came back",
        paused.elapsed() - PAUSE
    );

    // Presence is right afterwards: both users, once each.
    let members = http(
        "GET",
        &format!("{}/api/channels/presence-news.1/users", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await
    .json();
    let mut users: Vec<String> = members["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user_id"].as_str().map(str::to_owned))
        .collect();
    users.sort();
    assert_eq!(users, ["1", "2"], "{members}");
}

#[tokio::test]
async fn a_node_killed_mid_broadcast_costs_the_other_nodes_clients_nothing() {
    const MESSAGES: u64 = 200;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--dev", "--redis-url", &url];
    let (mut one, two) = two_ready_nodes(&args, &[]).await;
    let mut doomed = client(&one, 1).await;
    let mut survivors = [client(&two, 2).await, client(&two, 3).await];
    for agent in survivors.iter_mut().chain([&mut doomed]) {
        agent.subscribe_ok("news").await;
    }
    // Laravel publishes straight to Redis, a message every 2 ms; node one dies a quarter in.
    let publisher = {
        let mut conn = redis.connection().await;
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                let envelope = json!({"event": "tick", "data": {"e": n}, "socket": null});
                let _: i64 = redis::cmd("PUBLISH")
                    .arg("news")
                    .arg(envelope.to_string())
                    .query_async(&mut conn)
                    .await
                    .expect("PUBLISH");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let first = next_event(&mut doomed).await;
    assert_eq!(first, ("tick".to_owned(), json!({"e": 0})));
    tokio::time::sleep(Duration::from_millis(100)).await;
    one.kill().await;
    publisher.await.expect("publisher");
    for (who, agent) in survivors.iter_mut().enumerate() {
        for n in 0..MESSAGES {
            assert_eq!(
                next_event(agent).await,
                ("tick".to_owned(), json!({"e": n})),
                "survivor {who}"
            );
        }
    }
}

#[tokio::test]
async fn a_slow_redis_costs_a_refused_publish_not_a_silent_one() {
    const SLEEP: Duration = Duration::from_secs(4);
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--dev", "--api-keys", API_KEY, "--redis-url", &url];
    let (one, two) = two_ready_nodes(&args, &[]).await;
    let mut a = client(&one, 1).await;
    let mut b = client(&two, 2).await;
    for agent in [&mut a, &mut b] {
        agent.subscribe_ok("news").await;
    }
    // Redis stalls every client for SLEEP (a slow command, a fork on a big dataset).
    // Over a raw connection: a client library would time the command out.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .expect("connect to Redis");
    let sleeper = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let command = format!("DEBUG SLEEP {}\r\n", SLEEP.as_secs());
        raw.write_all(command.as_bytes()).await.expect("send");
        let mut answer = [0u8; 5];
        raw.read_exact(&mut answer).await.expect("answer");
        assert_eq!(&answer, b"+OK\r\n");
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stalled = Instant::now();
    let refused = broadcast(&one, "during").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        stalled.elapsed() < SLEEP,
        "answered after {:?}",
        stalled.elapsed()
    );
    sleeper.await.expect("sleeper");
    // The nodes stayed up and deliver again within RESUME of Redis answering.
    let deadline = Instant::now() + RESUME;
    loop {
        let sent = broadcast(&two, "after").await;
        if sent.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", sent.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for agent in [&mut a, &mut b] {
        let mut next = next_event(agent).await;
        if next.0 == "during" {
            next = next_event(agent).await;
        }
        assert_eq!(next.0, "after");
    }
}
