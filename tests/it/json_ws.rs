//! The plain JSON WebSocket endpoint with a real WebSocket client: the token checked before
//! the upgrade, every frame type and error code, rooms with membership sets, presence as
//! USER_JOINED/USER_LEFT, typing across nodes and its timeout, one broadcast reaching a
//! Socket.IO client and a JSON client alike, and the heartbeat.

use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "switchboard-dev-secret";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn token(sub: &str, name: &str) -> String {
    jwt_hs256(SECRET, json!({"sub": sub, "name": name}))
}

async fn connect(node: &Node, path: &str, header: Option<(&str, &str)>) -> Result<Ws, String> {
    let mut request = format!("ws://{}{path}", node.addr())
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some((name, value)) = header {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            Err(format!("{} {body}", response.status().as_u16()))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn client(node: &Node, user: &str) -> Ws {
    let path = format!("/ws?token={}", token(user, &format!("User {user}")));
    connect(node, &path, None).await.expect("json websocket")
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next JSON frame (pings are answered by the client library while it reads).
async fn next(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(&text).expect("a JSON frame");
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next frame of `kind`, skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = next(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn error_code(ws: &mut Ws, frame: &str) -> Value {
    ws.send(Message::text(frame.to_owned()))
        .await
        .expect("send");
    let answer = next(ws).await;
    assert_eq!(answer["type"], "ERROR", "{frame} → {answer}");
    answer["payload"].clone()
}

/// The code of the close frame that ends the socket, skipping any frame before it.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_token_is_checked_before_the_upgrade() {
    let node = Node::spawn(&["--dev", "--allowed-origins", "https://app.example"], &[]).await;
    let refused = connect(&node, "/ws", None).await.expect_err("no token");
    assert!(refused.starts_with("401 "), "{refused}");
    let body: Value = serde_json::from_str(&refused[4..]).expect("JSON body");
    assert_eq!(
        body,
        json!({"error": {"code": "unauthorized", "message": "missing token"}})
    );
    let forged = jwt_hs256("another-secret", json!({"sub": "1"}));
    let refused = connect(&node, &format!("/ws?token={forged}"), None)
        .await
        .expect_err("bad signature");
    assert!(
        refused.contains("invalid token: bad signature"),
        "{refused}"
    );
    let expired = jwt_hs256(SECRET, json!({"sub": "1", "exp": 1_000_000_000}));
    let refused = connect(
        &node,
        "/api/community/ws",
        Some(("authorization", &format!("Bearer {expired}"))),
    )
    .await
    .expect_err("expired");
    assert!(refused.contains("invalid token: expired"), "{refused}");

    // The header and the alias path work; a foreign origin does not.
    let bearer = format!("Bearer {}", token("1", "One"));
    let mut ws = connect(&node, "/api/community/ws", Some(("authorization", &bearer)))
        .await
        .expect("bearer header");
    send(&mut ws, json!({"type": "PING"})).await;
    assert_eq!(next(&mut ws).await, json!({"type": "PONG", "payload": {}}));
    let path = format!("/ws?token={}", token("1", "One"));
    let refused = connect(&node, &path, Some(("origin", "https://evil.example")))
        .await
        .expect_err("origin");
    assert!(refused.starts_with("403 "), "{refused}");
    connect(&node, &path, Some(("origin", "https://app.example")))
        .await
        .expect("allowed origin");
}

#[tokio::test]
async fn frames_and_error_codes_keep_the_connection_open() {
    let node = Node::spawn(
        &["--dev"],
        &[
            ("SWITCHBOARD_WS_MAX_FRAME_SIZE", "1000"),
            ("SWITCHBOARD_WS_MAX_ERRORS", "12"),
        ],
    )
    .await;
    let mut ws = client(&node, "1").await;

    send(&mut ws, json!({"type": "PING", "ref": 1})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "PONG", "payload": {}, "ref": 1})
    );
    assert_eq!(
        error_code(&mut ws, "{not json").await["code"],
        "INVALID_JSON"
    );
    assert_eq!(error_code(&mut ws, "[1,2]").await["code"], "INVALID_FRAME");
    let unknown = error_code(&mut ws, r#"{"type":"NOPE","ref":"r1"}"#).await;
    assert_eq!(
        unknown,
        json!({"code": "UNKNOWN_TYPE", "message": "unknown type `NOPE`", "ref": "r1"})
    );
    assert_eq!(
        error_code(&mut ws, r#"{"type":"SUBSCRIBE","payload":{}}"#).await["code"],
        "MISSING_FIELD"
    );
    assert_eq!(
        error_code(&mut ws, r#"{"type":"SUBSCRIBE","payload":3}"#).await["code"],
        "MISSING_FIELD"
    );
    let big = json!({"type": "PING", "payload": {"pad": "x".repeat(2000)}}).to_string();
    assert_eq!(error_code(&mut ws, &big).await["code"], "FRAME_TOO_LARGE");
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    assert_eq!(next(&mut ws).await["payload"]["code"], "INVALID_FRAME");

    send(
        &mut ws,
        json!({"type": "SUBSCRIBE", "payload": {"channel": "news"}, "ref": 2}),
    )
    .await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "SUBSCRIBED", "channel": "news", "payload": {"channel": "news"}, "ref": 2})
    );
    let forbidden = error_code(
        &mut ws,
        r#"{"type":"SUBSCRIBE","payload":{"channel":"private-orders.1"}}"#,
    )
    .await;
    assert_eq!(forbidden["code"], "FORBIDDEN", "{forbidden}");
    let invalid = error_code(
        &mut ws,
        r#"{"type":"SUBSCRIBE","payload":{"channel":"a b"}}"#,
    )
    .await;
    assert_eq!(invalid["code"], "INVALID_CHANNEL", "{invalid}");
    let public = error_code(
        &mut ws,
        r#"{"type":"CLIENT_EVENT","payload":{"channel":"news","event":"client-x","data":{}}}"#,
    )
    .await;
    assert_eq!(public["code"], "FORBIDDEN", "{public}");
    send(
        &mut ws,
        json!({"type": "UNSUBSCRIBE", "payload": {"channel": "news"}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "UNSUBSCRIBED");
    let not_in = error_code(
        &mut ws,
        r#"{"type":"TYPING","payload":{"roomId":5,"isTyping":true}}"#,
    )
    .await;
    assert_eq!(not_in["code"], "NOT_SUBSCRIBED", "{not_in}");

    // Eleven errors so far; the limit is twelve: the thirteenth closes with 1008.
    error_code(&mut ws, "{").await;
    // The thirteenth still gets its ERROR frame, then the close.
    assert_eq!(error_code(&mut ws, "{").await["code"], "INVALID_JSON");
    assert_eq!(close_code(&mut ws).await, Some(1008));
}

#[tokio::test]
async fn frames_are_rate_limited_per_socket() {
    let node = Node::spawn(
        &["--dev"],
        &[
            ("SWITCHBOARD_WS_FRAME_RATE", "1"),
            ("SWITCHBOARD_WS_FRAME_BURST", "3"),
        ],
    )
    .await;
    let mut ws = client(&node, "1").await;
    for _ in 0..3 {
        send(&mut ws, json!({"type": "PING"})).await;
        assert_eq!(next(&mut ws).await["type"], "PONG");
    }
    assert_eq!(
        error_code(&mut ws, r#"{"type":"PING"}"#).await["code"],
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn one_broadcast_reaches_socketio_and_json_clients() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = [
        "--dev",
        "--redis-url",
        &url,
        "--redis-prefix",
        "laravel_database_",
    ];
    let one = Node::spawn(&args, &[]).await;
    let two = Node::spawn(&args, &[]).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }

    let mut ws = client(&one, "1").await;
    send(
        &mut ws,
        json!({"type": "SUBSCRIBE", "payload": {"channel": "news"}}),
    )
    .await;
    next_of(&mut ws, "SUBSCRIBED").await;
    let mut agent = Agent::spawn(json!({
        "url": two.url(),
        "auth": {"token": token("2", "Two")},
        "transports": ["websocket"],
    }));
    agent.expect_connect(TIMEOUT).await;
    let answer = agent
        .emit_ack("subscribe", json!([{"channel": "news"}]))
        .await;
    assert_eq!(answer[0]["status"], "success");

    let envelope = json!({"event": "App\\Events\\Posted", "data": {"id": 5}, "socket": null});
    redis
        .publish("laravel_database_news", envelope.to_string())
        .await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "App\\Events\\Posted", "channel": "news", "payload": {"id": 5}})
    );
    let args = agent.expect_event("App\\Events\\Posted", TIMEOUT).await;
    assert_eq!(args, [json!("news"), json!({"id": 5})]);
}

#[tokio::test]
async fn rooms_presence_typing_and_chat_across_nodes() {
    let redis = RedisServer::start().await;
    redis.sadd("members:room:1", &["alice", "bob"]).await;
    let url = redis.url();
    let envs = [("SWITCHBOARD_TYPING_TIMEOUT", "800ms")];
    let one = Node::spawn(&["--dev", "--redis-url", &url], &envs).await;
    let two = Node::spawn(&["--dev", "--redis-url", &url], &envs).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }

    let mut alice = client(&one, "alice").await;
    send(
        &mut alice,
        json!({"type": "SUBSCRIBE", "payload": {"channel": "room:1"}}),
    )
    .await;
    let subscribed = next(&mut alice).await;
    assert_eq!(
        subscribed["payload"],
        json!({"channel": "room:1", "members": [{"userId": "alice", "userName": "User alice"}]})
    );
    // Not a member of the room's set.
    let mut carol = client(&two, "carol").await;
    let refused = error_code(
        &mut carol,
        r#"{"type":"SUBSCRIBE","payload":{"channel":"room:1"}}"#,
    )
    .await;
    assert_eq!(refused["code"], "FORBIDDEN", "{refused}");

    let mut bob = client(&two, "bob").await;
    send(
        &mut bob,
        json!({"type": "SUBSCRIBE", "payload": {"channel": "room:1"}}),
    )
    .await;
    let members = next(&mut bob).await["payload"]["members"].clone();
    assert_eq!(members.as_array().map(Vec::len), Some(2), "{members}");
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "USER_JOINED", "channel": "room:1",
               "payload": {"userId": "bob", "userName": "User bob", "roomId": "1"}})
    );

    // Typing reaches the other node, not the typist, and stops by itself.
    send(
        &mut bob,
        json!({"type": "TYPING", "payload": {"roomId": 1, "isTyping": true}}),
    )
    .await;
    let typing = next(&mut alice).await;
    assert_eq!(
        typing,
        json!({"type": "TYPING", "channel": "room:1",
               "payload": {"userId": "bob", "userName": "User bob", "roomId": "1", "isTyping": true}})
    );
    let started = tokio::time::Instant::now();
    let stopped = next(&mut alice).await;
    assert_eq!(stopped["payload"]["isTyping"], false, "{stopped}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "ended after {:?}",
        started.elapsed()
    );
    // The back-end's chat message reaches both, and is Bob's next frame: an echo of his own
    // typing would have come before it.
    let message = json!({"id": 9, "content": "hi", "roomId": 1, "authorId": "alice"});
    let envelope = json!({"event": "CHAT_MESSAGE", "data": message, "socket": null});
    redis.publish("room:1", envelope.to_string()).await;
    for ws in [&mut alice, &mut bob] {
        let frame = next(ws).await;
        assert_eq!(frame["type"], "CHAT_MESSAGE");
        assert_eq!(frame["payload"], message);
    }

    // A typist who disconnects stops typing, then leaves.
    send(
        &mut bob,
        json!({"type": "TYPING", "payload": {"roomId": "1", "isTyping": true}}),
    )
    .await;
    assert_eq!(next(&mut alice).await["payload"]["isTyping"], true);
    bob.close(None).await.expect("close");
    drop(bob);
    assert_eq!(next(&mut alice).await["payload"]["isTyping"], false);
    assert_eq!(
        next(&mut alice).await,
        json!({"type": "USER_LEFT", "channel": "room:1", "payload": {"userId": "bob", "roomId": "1"}})
    );
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_and_cleaned_up() {
    let node = Node::spawn(
        &["--dev", "--api-keys", "health-key"],
        &[
            ("SWITCHBOARD_WS_PING_INTERVAL", "300ms"),
            ("SWITCHBOARD_WS_PING_TIMEOUT", "300ms"),
        ],
    )
    .await;
    let live = client(&node, "live").await;
    let silent = client(&node, "silent").await;
    // The live client reads (and so answers pings); the silent one never reads.
    let reader = tokio::spawn(async move {
        let mut live = live;
        while let Some(Ok(_)) = live.next().await {}
    });
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        // The figures are the verbose health's, for an admin key.
        let health = http(
            "GET",
            &format!("{}/health?verbose=1", node.url()),
            &[("authorization", "Bearer health-key")],
            b"",
        )
        .await;
        let websocket = &health.json()["data"]["websocket"];
        if websocket["totalConnections"] == 1 {
            assert_eq!(websocket["uniqueUsers"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "silent client never dropped: {websocket}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Well past several ping rounds, the live one is still there.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let health = http(
        "GET",
        &format!("{}/health?verbose=1", node.url()),
        &[("authorization", "Bearer health-key")],
        b"",
    )
    .await;
    assert_eq!(health.json()["data"]["websocket"]["totalConnections"], 1);
    assert_eq!(health.json()["success"], true);
    drop(silent);
    reader.abort();
}

/// Publishes a chat message the way the back-end does.
async fn chat(redis: &RedisServer, room: &str, id: u64, author: &str) {
    let data = json!({"id": id, "content": format!("m{id}"), "roomId": room, "authorId": author});
    let envelope = json!({"event": "CHAT_MESSAGE", "data": data, "socket": null});
    redis
        .publish(&format!("room:{room}"), envelope.to_string())
        .await;
}

/// The id of the next chat message a socket receives.
async fn next_chat(ws: &mut Ws) -> Value {
    next_of(ws, "CHAT_MESSAGE").await["payload"]["id"].clone()
}

#[tokio::test]
async fn blocked_users_do_not_get_each_others_messages() {
    let redis = RedisServer::start().await;
    redis.sadd("members:room:2", &["ann", "ben", "cat"]).await;
    // Ben blocked Ann.
    redis.sadd("blocks:ben", &["ann"]).await;
    let url = redis.url();
    let one = Node::spawn(&["--dev", "--redis-url", &url], &[]).await;
    let two = Node::spawn(&["--dev", "--redis-url", &url], &[]).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    let mut ann = client(&one, "ann").await;
    let mut ben = client(&two, "ben").await;
    let mut cat = client(&two, "cat").await;
    for ws in [&mut ann, &mut ben, &mut cat] {
        send(
            ws,
            json!({"type": "SUBSCRIBE", "payload": {"channel": "room:2"}}),
        )
        .await;
        next_of(ws, "SUBSCRIBED").await;
    }

    // Ann's message skips Ben (he blocked her); Ben's skips Ann (she is blocked by him).
    chat(&redis, "2", 1, "ann").await;
    chat(&redis, "2", 2, "ben").await;
    chat(&redis, "2", 3, "cat").await;
    assert_eq!(next_chat(&mut cat).await, 1);
    assert_eq!(next_chat(&mut cat).await, 2);
    assert_eq!(next_chat(&mut cat).await, 3);
    assert_eq!(next_chat(&mut ben).await, 2, "his own message");
    assert_eq!(next_chat(&mut ben).await, 3, "nothing from Ann");
    assert_eq!(next_chat(&mut ann).await, 1, "her own message");
    assert_eq!(next_chat(&mut ann).await, 3, "nothing from Ben");

    // Cat blocks Ann while connected: the back-end updates the set and says so.
    redis.sadd("blocks:cat", &["ann"]).await;
    let changed = json!({"event": "blocks.changed", "data": {"userId": "cat"}, "socket": null});
    redis
        .publish("switchboard.blocks", changed.to_string())
        .await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut id = 10;
    loop {
        // Until the change lands, Cat still sees Ann; each round ends with Cat's own message.
        chat(&redis, "2", id, "ann").await;
        chat(&redis, "2", id + 1, "cat").await;
        let first = next_chat(&mut cat).await;
        if first == id + 1 {
            break;
        }
        assert_eq!(first, id);
        assert_eq!(next_chat(&mut cat).await, id + 1);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the block never took effect"
        );
        id += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn per_user_limit_counts_json_and_socketio_sockets_together() {
    let node = Node::spawn(&["--dev"], &[("SWITCHBOARD_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let _first = client(&node, "dan").await;
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token("dan", "Dan")},
        "transports": ["websocket"],
    }));
    agent.expect_connect(TIMEOUT).await;
    let path = format!("/ws?token={}", token("dan", "Dan"));
    let refused = connect(&node, &path, None).await.expect_err("third socket");
    assert!(refused.starts_with("429 "), "{refused}");
    assert!(refused.contains("too_many_connections"), "{refused}");
    // Closing one gives the slot back.
    agent.exit().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while connect(&node, &path, None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_closes_json_sockets_with_going_away() {
    let mut node = Node::spawn(&["--dev"], &[("SWITCHBOARD_DRAIN_TIME", "3s")]).await;
    let mut ws = client(&node, "1").await;
    node.sigterm();
    assert_eq!(close_code(&mut ws).await, Some(1001));
    drop(ws);
    let status = node.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", node.logs());
}

/// Issue 18.4: a Go socket server greets each client with a `welcome`; with
/// SWITCHBOARD_WELCOME set, a JSON socket's first frame is that greeting, and a Socket.IO
/// socket gets a `welcome` event right after it connects. Off by default.
#[tokio::test]
async fn a_configured_welcome_greets_every_new_socket() {
    let greeting = json!({"message": "Welcome to the chat", "version": 2});
    let node = Node::spawn(
        &["--dev"],
        &[("SWITCHBOARD_WELCOME", &greeting.to_string())],
    )
    .await;
    let mut ws = client(&node, "ann").await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "welcome", "payload": greeting})
    );
    let mut agent = Agent::connected(&node.url(), &token("ben", "Ben")).await;
    assert_eq!(agent.expect_event("welcome", TIMEOUT).await, [greeting]);

    // Without the setting nobody is greeted: the first frame is the answer to a PING.
    let quiet = Node::spawn(&["--dev"], &[]).await;
    let mut ws = client(&quiet, "cat").await;
    send(&mut ws, json!({"type": "PING"})).await;
    assert_eq!(next(&mut ws).await["type"], "PONG");

    let (status, logs) = run_switchboard(&["--dev"], &[("SWITCHBOARD_WELCOME", "{not json")]).await;
    assert_eq!(status.code(), Some(2), "{logs}");
    assert!(logs.contains("SWITCHBOARD_WELCOME"), "{logs}");
}

/// `POST`/`DELETE /api/channels/{channel}/members/{user}`, as the back-end calls it.
async fn member(node: &Node, method: &str, channel: &str, user: &str) -> HttpResponse {
    http(
        method,
        &format!("{}/api/channels/{channel}/members/{user}", node.url()),
        &[("authorization", "Bearer back-end")],
        b"",
    )
    .await
}

/// VELONX's chat client: a plain WebSocket at `/api/community/ws?token=` that never subscribes.
#[tokio::test]
async fn a_chat_client_is_put_in_its_rooms_and_groups_without_subscribing() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--dev", "--redis-url", &url, "--api-keys", "back-end"];
    let one = Node::spawn(&args, &[]).await;
    let two = Node::spawn(&args, &[]).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    for (channel, user) in [("room:1", "alice"), ("room:1", "bob"), ("group:2", "alice")] {
        let added = member(&one, "POST", channel, user).await;
        assert_eq!(added.status, 202, "{}", added.text());
    }
    assert_eq!(
        member(&one, "POST", "group:2", "bob").await.json(),
        json!({"channel": "group:2", "user_id": "bob", "member": true})
    );
    let velonx = |user: &str, picture: &str| {
        let token = jwt_hs256(
            SECRET,
            json!({"sub": user, "name": user, "picture": picture}),
        );
        format!("/api/community/ws?token={token}")
    };
    let mut alice = connect(&one, &velonx("alice", "a.png"), None)
        .await
        .expect("alice");
    one.until_subscribed("back-end", "group:2", 1).await;
    let mut bob = connect(&two, &velonx("bob", "b.png"), None)
        .await
        .expect("bob");
    // Alice hears Bob arrive in the room and in the group, each in its own words.
    let mut joined = vec![
        next_of(&mut alice, "USER_JOINED").await,
        next_of(&mut alice, "USER_JOINED").await,
    ];
    joined.sort_by_key(|f| f["channel"].to_string());
    assert_eq!(
        joined,
        [
            json!({"type": "USER_JOINED", "channel": "group:2", "payload":
                {"groupId": "2", "userId": "bob", "userName": "bob", "userImage": "b.png"}}),
            json!({"type": "USER_JOINED", "channel": "room:1", "payload":
                {"roomId": "1", "userId": "bob", "userName": "bob", "userImage": "b.png"}}),
        ]
    );
    one.until_subscribed("back-end", "room:1", 2).await;
    chat(&redis, "1", 1, "carol").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_chat(ws).await, 1);
    }

    // Alice joins room 3 while connected, on whichever node the call lands.
    assert_eq!(member(&two, "POST", "room:3", "alice").await.status, 202);
    one.until_subscribed("back-end", "room:3", 1).await;
    chat(&redis, "3", 2, "carol").await;
    assert_eq!(next_chat(&mut alice).await, 2);

    // Removed from room 1: she hears nothing more of it, at once; Bob still does.
    assert_eq!(member(&two, "DELETE", "room:1", "alice").await.status, 202);
    let left = next_of(&mut bob, "USER_LEFT").await;
    assert_eq!(left["payload"], json!({"roomId": "1", "userId": "alice"}));
    one.until_subscribed("back-end", "room:1", 1).await;
    chat(&redis, "1", 3, "carol").await;
    chat(&redis, "3", 4, "carol").await;
    assert_eq!(next_chat(&mut bob).await, 3);
    assert_eq!(
        next_chat(&mut alice).await,
        4,
        "room 1's message reached her"
    );

    // The back-end removes her from room 3 with a plain SREM: her next connection does not
    // join it, and her index forgets it.
    let mut conn = redis.connection().await;
    let _: i64 = redis::cmd("SREM")
        .arg("members:room:3")
        .arg("alice")
        .query_async(&mut conn)
        .await
        .expect("SREM");
    drop(alice);
    one.until_subscribed("back-end", "room:3", 0).await;
    let _again = connect(&one, &velonx("alice", "a.png"), None)
        .await
        .expect("alice again");
    one.until_subscribed("back-end", "group:2", 2).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let index: Vec<String> = redis::cmd("SMEMBERS")
            .arg("members:user:alice")
            .query_async(&mut conn)
            .await
            .expect("SMEMBERS");
        if index == ["group:2"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{index:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.until_subscribed("back-end", "room:3", 0).await;

    // Only rooms and groups keep members.
    for channel in ["news", "room:1:admins", "presence-team.1"] {
        let refused = member(&one, "POST", channel, "alice").await;
        assert_eq!(refused.status, 400, "{channel}: {}", refused.text());
    }
}
