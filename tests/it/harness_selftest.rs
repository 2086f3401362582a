//! Checks the test harness itself (tests/it/support) against real redis-server,
//! MariaDB, nginx, socket.io-client and Laravel Echo: when a feature test
//! fails, this says whether the harness is to blame. Only the Echo checks start
//! a switchboard node, and they use nothing but what it has long done (connect,
//! subscribe, `/api/broadcast`, whispers on the user's own private channel).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{WebSocketStream, client_async};

#[tokio::test]
async fn redis_server_publishes_and_survives_kill_and_restart() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();

    let mut messages = subscribe(&redis, "news").await;
    assert_eq!(redis.publish("news", "first").await, 1, "one subscriber");
    assert_eq!(next_message(&mut messages).await, "first");

    redis.kill().await;
    let refused = redis::Client::open(redis.url())
        .expect("valid redis url")
        .get_multiplexed_async_connection()
        .await;
    assert!(
        refused.is_err(),
        "a killed redis-server still accepts connections"
    );

    redis.restart().await;
    assert_eq!(redis.port(), port, "restart keeps the port");
    // The old subscription died with the old process.
    assert_eq!(redis.publish("news", "lost").await, 0);
    let mut messages = subscribe(&redis, "news").await;
    assert_eq!(redis.publish("news", b"second".as_slice()).await, 1);
    assert_eq!(next_message(&mut messages).await, "second");
}

async fn subscribe(redis: &RedisServer, channel: &str) -> redis::aio::PubSubStream {
    let client = redis::Client::open(redis.url()).expect("valid redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
    pubsub.subscribe(channel).await.expect("SUBSCRIBE");
    pubsub.into_on_message()
}

async fn next_message(messages: &mut redis::aio::PubSubStream) -> String {
    let message = tokio::time::timeout(TIMEOUT, messages.next())
        .await
        .expect("a published message within the timeout")
        .expect("the subscription is open");
    message.get_payload().expect("UTF-8 payload")
}

#[tokio::test]
async fn mariadb_runs_sql_and_keeps_data_across_kill_and_restart() {
    let started = std::time::Instant::now();
    let mut db = MariaDb::start().await;
    eprintln!("MariaDB started in {:?}", started.elapsed());
    let port = db.port();
    assert_eq!(
        db.url(),
        format!("mysql://sb:sb@127.0.0.1:{port}/switchboard_test")
    );

    db.exec_sql(
        "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT NULL) ENGINE=InnoDB;
         INSERT INTO notes VALUES (1, 'plain'), (2, 'tab\there\nnewline \\\\ é ✓'), (3, NULL), (4, '');",
    )
    .await;
    let rows = db.query("SELECT id, body FROM notes ORDER BY id").await;
    assert_eq!(
        rows,
        vec![
            vec!["1", "plain"],
            vec!["2", "tab\there\nnewline \\ é ✓"],
            vec!["3", "NULL"],
            vec!["4", ""],
        ]
    );
    assert_eq!(
        db.query("SELECT @@character_set_server, CURRENT_USER()")
            .await,
        vec![vec!["utf8mb4", "root@127.0.0.1"]]
    );
    let error = db
        .try_exec_sql("SELECT * FROM missing")
        .await
        .expect_err("a missing table is an error");
    assert!(error.contains("doesn't exist"), "{error}");

    db.kill().await;
    assert!(
        db.try_exec_sql("SELECT 1").await.is_err(),
        "a killed MariaDB still answers"
    );
    let restarted = std::time::Instant::now();
    db.restart().await;
    eprintln!(
        "MariaDB restarted after SIGKILL in {:?}",
        restarted.elapsed()
    );
    assert_eq!(db.port(), port, "restart keeps the port");
    assert_eq!(
        db.query("SELECT COUNT(*) FROM notes").await,
        vec![vec!["4"]],
        "committed rows survive a SIGKILL"
    );
}

#[tokio::test]
async fn two_mariadb_servers_run_side_by_side() {
    let (one, two) = tokio::join!(MariaDb::start(), MariaDb::start());
    assert_ne!(one.port(), two.port());
    one.exec_sql("CREATE TABLE only_here (id INT)").await;
    assert_eq!(one.query("SHOW TABLES").await, vec![vec!["only_here"]]);
    assert_eq!(two.query("SHOW TABLES").await, Vec::<Vec<String>>::new());
}

#[tokio::test]
async fn postgres_databases_are_apart_and_a_lone_server_survives_a_crash() {
    // Two tests' databases on the binary's shared server see only their own tables.
    let (one, two) = tokio::join!(Postgres::database(), Postgres::database());
    assert_ne!(one.url(), two.url());
    one.exec_sql("CREATE TABLE only_here (id INT, body TEXT NULL); INSERT INTO only_here VALUES (1, NULL), (2, 'x')")
        .await;
    let tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'";
    assert_eq!(one.query(tables).await, [["only_here"]]);
    assert_eq!(two.query(tables).await, Vec::<Vec<String>>::new());
    assert_eq!(
        one.query("SELECT id, body FROM only_here ORDER BY id")
            .await,
        [["1", "NULL"], ["2", "x"]]
    );
    let error = one
        .try_exec_sql("SELECT * FROM missing")
        .await
        .expect_err("a missing table is an error");
    assert!(error.contains("does not exist"), "{error}");

    let mut alone = Postgres::alone().await;
    alone
        .exec_sql("CREATE TABLE notes (id INT); INSERT INTO notes VALUES (1), (2)")
        .await;
    alone.kill().await;
    assert!(
        alone.try_exec_sql("SELECT 1").await.is_err(),
        "a killed PostgreSQL still answers"
    );
    alone.restart().await;
    assert_eq!(
        alone.query("SELECT COUNT(*) FROM notes").await,
        [["2"]],
        "committed rows survive an immediate shutdown"
    );
}

/// nginx/switchboard.conf must keep each client address on one node, for
/// plain HTTP, Socket.IO polling and WebSocket alike, and must tell the node who
/// the client is.
#[tokio::test]
async fn nginx_keeps_each_client_address_on_one_upstream() {
    let upstreams = [spawn_upstream().await, spawn_upstream().await];
    let nginx = Nginx::start(&upstreams).await;

    // Which address lands where depends on the hash; find one client address
    // per upstream.
    let mut client_for_port: BTreeMap<u64, String> = BTreeMap::new();
    for last_octet in 2..=40 {
        let ip = format!("127.0.0.{last_octet}");
        let reply = http_from(&ip, "GET", &format!("{}/api/probe", nginx.url()), &[], b"")
            .await
            .json();
        let port = reply["port"].as_u64().expect("the upstream names its port");
        client_for_port.entry(port).or_insert(ip);
        if client_for_port.len() == upstreams.len() {
            break;
        }
    }
    assert_eq!(
        client_for_port.len(),
        upstreams.len(),
        "39 client addresses all hashed to {client_for_port:?}"
    );

    for (port, ip) in &client_for_port {
        for path in [
            "/api/probe",
            "/health",
            "/socket.io/?EIO=4&transport=polling",
        ] {
            for _ in 0..4 {
                let response =
                    http_from(ip, "GET", &format!("{}{path}", nginx.url()), &[], b"").await;
                assert_eq!(
                    response.status,
                    200,
                    "{path} from {ip}: {}",
                    response.text()
                );
                let reply = response.json();
                assert_eq!(
                    reply["port"], *port,
                    "{path} from {ip} moved to another upstream"
                );
                assert_eq!(reply["x-real-ip"], *ip);
                assert_eq!(reply["x-forwarded-for"], *ip);
                assert_eq!(reply["x-forwarded-proto"], "http");
            }
        }
        for path in ["/ws", "/socket.io/?EIO=4&transport=websocket"] {
            for _ in 0..2 {
                let reply =
                    websocket_from(ip, &format!("ws://127.0.0.1:{}{path}", nginx.port())).await;
                assert_eq!(
                    reply["port"], *port,
                    "WebSocket {path} from {ip} moved to another upstream"
                );
                assert_eq!(reply["x-real-ip"], *ip);
            }
        }
    }

    // The access log names the upstream of each request; nginx writes it just
    // after answering, so give it a moment.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let log = nginx.access_log();
        if upstreams
            .iter()
            .all(|u| log.contains(&format!("upstream={u}")))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "access log lacks an upstream:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Content-Length, chunked and read-to-EOF bodies all come back whole.
#[tokio::test]
async fn http_client_reads_every_body_framing() {
    let upstream = spawn_upstream().await;
    let base = format!("http://{upstream}");

    let sized = http(
        "POST",
        &format!("{base}/sized"),
        &[("X-Test", "1")],
        b"hello",
    )
    .await;
    assert_eq!(sized.status, 200);
    assert_eq!(sized.header("Content-Type"), Some("application/json"));
    assert_eq!(sized.json()["body"], "hello");
    assert_eq!(sized.json()["method"], "POST");

    let chunked = http("GET", &format!("{base}/chunked"), &[], b"").await;
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.json()["path"], "/chunked");

    let unframed = http_from("127.0.0.3", "GET", &format!("{base}/eof"), &[], b"").await;
    assert_eq!(unframed.header("content-length"), None);
    assert_eq!(unframed.json()["peer"], "127.0.0.3");

    let refused = try_http(
        "GET",
        &format!("http://127.0.0.1:{}/", free_port()),
        &[],
        b"",
    )
    .await;
    assert!(refused.is_err(), "nothing listens there: {refused:?}");
}

/// The agent runs, reports a refused connection and exits on request; its
/// behaviour against a live server is covered by the feature tests.
#[tokio::test]
async fn agent_reports_connect_error_and_exits() {
    let mut agent = Agent::spawn(json!({
        "url": format!("http://127.0.0.1:{}", free_port()),
        "transports": ["websocket"],
    }));
    let message = agent.expect_connect_error(TIMEOUT).await;
    assert_eq!(message, "websocket error");
    assert_eq!(agent.transport().await, None);
    agent
        .assert_no_event("anything", Duration::from_millis(100))
        .await;
    assert!(agent.exit().await.success());
}

const API_KEY: &str = "selftest-key";

async fn dev_node() -> Node {
    Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await
}

fn dev_token(user: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    jwt_hs256(
        "switchboard-dev-secret",
        json!({"sub": user, "name": format!("User {user}"), "exp": exp}),
    )
}

async fn api_broadcast(node: &Node, channel: &str, event: &str, data: Value) {
    let body = json!({"channel": channel, "event": event, "data": data});
    let response = http(
        "POST",
        &format!("{}/api/broadcast", node.url()),
        &[
            ("authorization", &format!("Bearer {API_KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
}

/// Echo's bearer token reaches the server through Socket.IO's CONNECT auth;
/// `Echo.channel` and `Echo.private` listen with and without the namespace.
#[tokio::test]
async fn echo_agent_receives_public_and_private_broadcasts() {
    let node = dev_node().await;

    let mut anonymous = EchoAgent::spawn(json!({"url": node.url(), "transports": ["websocket"]}));
    assert_eq!(anonymous.expect_refused(TIMEOUT).await, "missing token");

    let mut echo = EchoAgent::spawn(json!({
        "url": node.url(), "token": dev_token(7), "transports": ["websocket"],
    }));
    let id = echo.expect_connect(TIMEOUT).await;
    // The server knows user 7 from the token: it subscribed their own channel.
    let auto = echo.expect_subscribed("private-user.7", TIMEOUT).await;
    assert_eq!(auto["status"], "auto");
    assert_eq!(echo.socket_id().await.as_deref(), Some(id.as_str()));

    echo.channel("news", &[".Posted", "Edited"]).await;
    echo.expect_subscribed("news", TIMEOUT).await;
    api_broadcast(&node, "news", "Posted", json!({"id": 1})).await;
    assert_eq!(
        echo.expect_event("news", ".Posted", TIMEOUT).await,
        json!({"id": 1})
    );
    api_broadcast(&node, "news", "App\\Events\\Edited", json!({"id": 2})).await;
    assert_eq!(
        echo.expect_event("news", "Edited", TIMEOUT).await,
        json!({"id": 2})
    );

    echo.private("user.7", &["OrderShipped"]).await;
    let explicit = echo.expect_subscribed("private-user.7", TIMEOUT).await;
    assert_eq!(explicit["status"], "success");
    api_broadcast(
        &node,
        "private-user.7",
        "App\\Events\\OrderShipped",
        json!({"order": 9}),
    )
    .await;
    assert_eq!(
        echo.expect_event("private-user.7", "OrderShipped", TIMEOUT)
            .await,
        json!({"order": 9})
    );

    echo.leave("news").await;
    assert_eq!(
        echo.expect_raw("unsubscribed", TIMEOUT).await,
        vec![json!({"channel": "news"})]
    );
    api_broadcast(&node, "news", "Posted", json!({"id": 3})).await;
    echo.assert_no(
        "event on a left channel",
        |line| line["type"] == "event" && line["channel"] == "news",
        Duration::from_millis(200),
    )
    .await;
    assert!(echo.exit().await.success());
}

/// Echo's whisper (`client event`) goes to the channel's other members only.
#[tokio::test]
async fn echo_agent_whispers_to_another_client() {
    let node = dev_node().await;
    // Default transports: polling, then the upgrade to WebSocket.
    let mut sender = EchoAgent::spawn(json!({"url": node.url(), "token": dev_token(7)}));
    let mut receiver = EchoAgent::spawn(json!({"url": node.url(), "token": dev_token(7)}));
    sender.expect_connect(TIMEOUT).await;
    receiver.expect_connect(TIMEOUT).await;
    for echo in [&mut sender, &mut receiver] {
        echo.listen_for_whisper(ChannelKind::Private, "user.7", "typing")
            .await;
        // Echo's own subscribe (the server already added the user's channel at
        // connect) is answered after the agent registered the listener.
        echo.wait_for(
            |line| line["event"] == "subscribed" && line["args"][0]["status"] == "success",
            TIMEOUT,
        )
        .await;
    }

    sender
        .whisper(
            ChannelKind::Private,
            "user.7",
            "typing",
            json!({"name": "A"}),
        )
        .await;
    assert_eq!(
        receiver
            .expect_whisper("private-user.7", "typing", TIMEOUT)
            .await,
        json!({"name": "A"})
    );
    sender
        .assert_no(
            "whisper echoed to its sender",
            |line| line["type"] == "whisper",
            Duration::from_millis(200),
        )
        .await;
}

#[test]
fn jwt_helpers_build_the_expected_tokens() {
    let claims = json!({"sub": "42", "exp": 4_102_444_800u64});
    let token = jwt_hs256("secret", claims.clone());
    let decoded = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(b"secret"),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .expect("an HS256 token verifies with its secret");
    assert_eq!(decoded.claims, claims);

    let none = jwt_none(claims);
    let parts: Vec<&str> = none.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2], "", "an alg:none token has an empty signature");
    let header = jsonwebtoken::decode_header(&none);
    assert!(
        header.is_err(),
        "jsonwebtoken must not even parse alg none: {header:?}"
    );
}

/// A stand-in node: answers every request with JSON naming its own port and
/// what it was sent; a WebSocket upgrade gets the same JSON as one text message.
async fn spawn_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(serve(stream, peer, addr.port()));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, port: u16) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let version = request_line.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }

    let mut reply = json!({
        "port": port,
        "peer": peer.ip().to_string(),
        "method": method,
        "path": path,
        "body": String::from_utf8_lossy(&body),
    });
    for name in ["x-real-ip", "x-forwarded-for", "x-forwarded-proto"] {
        reply[name] = headers.get(name).map_or(Value::Null, |v| json!(v));
    }
    let reply = reply.to_string();

    // Like a real server, upgrade only an HTTP/1.1 request that says so in
    // both Upgrade and Connection; nginx sends neither unless configured to.
    let upgrade = version == "HTTP/1.1"
        && headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && headers.get("connection").is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if upgrade {
        let key = headers
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or_default();
        let accept = derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
        let _ = ws.send(Message::text(reply)).await;
        let _ = ws.close(None).await;
        return;
    }
    let response = match path.as_str() {
        "/chunked" => {
            let (a, b) = reply.split_at(reply.len() / 2);
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        }
        "/eof" => format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{reply}"),
        _ => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        ),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Opens a WebSocket from `local_ip` and returns the first text message as JSON.
async fn websocket_from(local_ip: &str, url: &str) -> Value {
    let socket = TcpSocket::new_v4().expect("socket");
    let local: SocketAddr = format!("{local_ip}:0").parse().expect("local address");
    socket.bind(local).expect("bind the client address");
    let authority = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("authority");
    let stream = socket
        .connect(authority.parse().expect("ip:port authority"))
        .await
        .expect("connect to nginx");
    let (mut ws, _) = client_async(url, stream)
        .await
        .unwrap_or_else(|err| panic!("WebSocket handshake through nginx to {url}: {err}"));
    loop {
        let message = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a WebSocket message within the timeout")
            .expect("the WebSocket is open")
            .expect("a valid WebSocket frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON message");
        }
    }
}
