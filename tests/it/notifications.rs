//! Notifications against a throwaway database (each test on MariaDB and on PostgreSQL) and
//! Redis, with real socket.io-client agents: migrations, `POST /api/notifications`, the
//! `/notifications` namespace, delivery and read tracking across devices and nodes, the
//! application's own read query, and database outages.

use crate::support::*;

on_both_databases!(
    migrations_run_twice_safely,
    offline_user_gets_pending_ones_on_connect_in_order,
    unacknowledged_ones_come_again_after_reconnect,
    unknown_or_inactive_users_are_refused,
    sector_and_admin_fan_out,
    read_on_one_device_reaches_the_others_on_every_node,
    the_apps_read_query_marks_its_own_table,
    database_outage_answers_503_and_loses_nothing,
    a_database_killed_mid_burst_half_writes_nothing,
    nothing_is_lost_across_a_node_crash_and_a_redis_restart,
    a_repeated_idempotency_key_stores_nothing_twice,
    refused_connects_and_event_floods_stop_before_the_database,
);

/// Applies the migrations to `db` with `switchboard migrate`.
async fn migrate(db: &Db) -> String {
    let (status, output) =
        run_switchboard(&["migrate"], &[("SWITCHBOARD_DATABASE_URL", &db.url())]).await;
    assert!(status.success(), "switchboard migrate failed: {output}");
    output
}

async fn migrations_run_twice_safely(engine: Engine) {
    let db = Db::start(engine).await;
    let first = migrate(&db).await;
    assert!(first.contains("applied 0001_notifications"), "{first}");
    assert!(first.contains("0002_notification_requests"), "{first}");
    let second = migrate(&db).await;
    assert!(second.contains("nothing to apply"), "{second}");
    let tables = db.tables().await;
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
    for table in [
        "notifications",
        "notification_deliveries",
        "notification_requests",
        "switchboard_migrations",
    ] {
        assert!(names.contains(&table), "{table} missing: {names:?}");
    }
    let recorded = db.query("SELECT version FROM switchboard_migrations").await;
    assert_eq!(
        recorded,
        [["0001_notifications"], ["0002_notification_requests"]]
    );
    // `--migrate` at start is a no-op now too, and the node serves.
    let node = Node::spawn(
        &["--dev", "--migrate"],
        &[("SWITCHBOARD_DATABASE_URL", &db.url())],
    )
    .await;
    assert_eq!(
        http("GET", &format!("{}/health", node.url()), &[], b"")
            .await
            .status,
        200
    );
    // Without a database there is nothing to migrate.
    let (status, output) = run_switchboard(&["migrate"], &[]).await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("SWITCHBOARD_DATABASE_URL"), "{output}");
}

use std::time::Duration;

use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "test-key";

/// The application's users: 1 and 2 in sector 10, 3 an admin and 5 a super admin in sector
/// 20, 4 inactive. The same SQL on both databases (BOOLEAN is TINYINT(1) on MariaDB).
async fn app_schema(db: &Db) {
    migrate(db).await;
    db.exec_sql(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(100), email VARCHAR(100),
             role VARCHAR(32), sector_id BIGINT NULL, is_active BOOLEAN NOT NULL DEFAULT TRUE);
         INSERT INTO users VALUES
             (1, 'Ana', 'ana@example.com', 'MEMBER', 10, TRUE),
             (2, 'Ben', 'ben@example.com', 'MEMBER', 10, TRUE),
             (3, 'Cleo', 'cleo@example.com', 'ADMIN', 20, TRUE),
             (4, 'Dan', 'dan@example.com', 'MEMBER', 10, FALSE),
             (5, 'Sam', 'sam@example.com', 'SUPER_ADMIN', 20, TRUE);",
    )
    .await;
}

async fn node(db: &Db, redis: Option<&RedisServer>) -> Node {
    node_with(db, redis, &[]).await
}

/// A node on `db` (and `redis`) with more settings.
async fn node_with(db: &Db, redis: Option<&RedisServer>, settings: &[(&str, &str)]) -> Node {
    let url = db.url();
    let mut envs = vec![("SWITCHBOARD_DATABASE_URL", url.as_str())];
    envs.extend_from_slice(settings);
    let redis_url = redis.map(RedisServer::url);
    if let Some(redis_url) = &redis_url {
        envs.push(("SWITCHBOARD_REDIS_URL", redis_url));
    }
    Node::spawn(&["--dev", "--api-keys", API_KEY], &envs).await
}

fn token(user: &str) -> String {
    jwt_hs256(SECRET, json!({"sub": user}))
}

/// A socket.io-client on `/notifications` (or `/` with `namespace = ""`), not yet connected.
fn agent(node: &Node, namespace: &str, user: &str, auto_ack: bool) -> Agent {
    Agent::spawn(json!({
        "url": format!("{}{namespace}", node.url()),
        "auth": {"token": token(user)},
        "transports": ["websocket"],
        "autoAck": auto_ack,
    }))
}

async fn notifications_socket(node: &Node, user: &str, auto_ack: bool) -> Agent {
    let mut agent = agent(node, "/notifications", user, auto_ack);
    agent.expect_connect(TIMEOUT).await;
    agent
}

/// The events up to and including `connection:success`, in the order they came.
async fn events_until_success(agent: &mut Agent) -> Vec<Value> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let Some(line) = agent.next(Duration::from_millis(200)).await else {
            continue;
        };
        if line["type"] != "event" {
            continue;
        }
        let done = line["event"] == "connection:success";
        events.push(line);
        if done {
            return events;
        }
    }
    panic!("no connection:success; events so far: {events:?}");
}

async fn send(node: &Node, body: Value) -> HttpResponse {
    send_keyed(node, body, None).await
}

/// POST /api/notifications with an `Idempotency-Key` header when `key` is given.
async fn send_keyed(node: &Node, body: Value, key: Option<&str>) -> HttpResponse {
    let auth = format!("Bearer {API_KEY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend(key.map(|k| ("idempotency-key", k)));
    http(
        "POST",
        &format!("{}/api/notifications", node.url()),
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

async fn send_ok(node: &Node, body: Value) -> Vec<u64> {
    let response = send(node, body).await;
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn note(user: u64, title: &str) -> Value {
    json!({"user_ids": [user], "type": "info", "title": title, "message": format!("{title} body"), "data": {"k": title}})
}

/// Waits until `sql` returns `expected` (as the client prints it).
async fn db_until(db: &Db, sql: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let rows = db.query(sql).await;
        let got = rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default();
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: {got}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn offline_user_gets_pending_ones_on_connect_in_order(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let mut ids = Vec::new();
    for title in ["first", "second", "third"] {
        ids.extend(send_ok(&node, note(1, title)).await);
    }
    assert_eq!(ids.len(), 3);

    let mut device = notifications_socket(&node, "1", true).await;
    let events = events_until_success(&mut device).await;
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        names,
        [
            "notification:new",
            "notification:new",
            "notification:new",
            "notification:count",
            "connection:success"
        ],
        "{events:?}"
    );
    let got: Vec<u64> = events[..3]
        .iter()
        .filter_map(|e| e["args"][0]["id"].as_u64())
        .collect();
    assert_eq!(got, ids, "oldest first");
    assert_eq!(events[0]["args"][0]["title"], "first");
    assert_eq!(events[0]["args"][0]["data"], json!({"k": "first"}));
    assert_eq!(events[0]["ackRequested"], true);
    assert_eq!(events[3]["args"][0], json!({"count": 3}));
    let success = &events[4]["args"][0];
    assert_eq!(
        (success["userId"].as_str(), success["userName"].as_str()),
        (Some("1"), Some("Ana"))
    );
    assert_eq!(success["unreadCount"], 3);
    assert!(success["timestamp"].is_u64(), "{success}");

    // Acknowledged: delivered, and not sent again.
    db_until(
        &db,
        "SELECT COUNT(*) FROM notification_deliveries WHERE user_id = '1' AND status = 'DELIVERED'",
        "3",
    )
    .await;
    device.exit().await;
    let mut again = notifications_socket(&node, "1", true).await;
    let events = events_until_success(&mut again).await;
    assert_eq!(events.len(), 2, "only the count and success: {events:?}");
    let metrics = http("GET", &format!("{}/metrics", node.url()), &[], b"")
        .await
        .text();
    for line in [
        "switchboard_notifications_created_total 3",
        "switchboard_notifications_delivered_total 3",
        "switchboard_notification_delivery_seconds_count 3",
        // The default pool limits (mysql_async's; Switchboard's for PostgreSQL); the idle
        // connections are the ones used above.
        if engine == Engine::MariaDb {
            "switchboard_database_pool_connections{state=\"max\"} 100"
        } else {
            "switchboard_database_pool_connections{state=\"max\"} 20"
        },
        "switchboard_database_pool_connections{state=\"idle\"} ",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

async fn unacknowledged_ones_come_again_after_reconnect(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let mut device = notifications_socket(&node, "2", false).await;
    events_until_success(&mut device).await;
    let id = send_ok(&node, note(2, "live")).await[0];
    let live = device
        .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
        .await;
    assert_eq!(live["args"][0]["id"], id);
    assert_eq!(live["ackRequested"], true);
    device.exit().await;

    let mut device = notifications_socket(&node, "2", false).await;
    let events = events_until_success(&mut device).await;
    let first = &events[0];
    assert_eq!(
        (first["event"].as_str(), first["args"][0]["id"].as_u64()),
        (Some("notification:new"), Some(id))
    );
    let attempts = db
        .query(&format!(
            "SELECT status, attempts FROM notification_deliveries WHERE notification_id = {id}"
        ))
        .await;
    assert_eq!(attempts, [["PENDING", "1"]]);
    // This time the client acknowledges it.
    device
        .send(json!({"cmd": "reply", "ref": first["ackRef"]}))
        .await;
    db_until(
        &db,
        &format!("SELECT status FROM notification_deliveries WHERE notification_id = {id}"),
        "DELIVERED",
    )
    .await;
    device.exit().await;
    let mut device = notifications_socket(&node, "2", false).await;
    let events = events_until_success(&mut device).await;
    assert_eq!(events[0]["event"], "notification:count", "{events:?}");
    assert_eq!(events[0]["args"][0], json!({"count": 1}));
}

async fn unknown_or_inactive_users_are_refused(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let mut inactive = agent(&node, "/notifications", "4", true);
    assert_eq!(inactive.expect_refused(TIMEOUT).await, "user is inactive");
    let mut unknown = agent(&node, "/notifications", "99", true);
    assert_eq!(unknown.expect_refused(TIMEOUT).await, "user not found");
    let mut no_token = Agent::spawn(
        json!({"url": format!("{}/notifications", node.url()), "transports": ["websocket"]}),
    );
    assert_eq!(no_token.expect_refused(TIMEOUT).await, "missing token");

    // Without a database the namespace and the API say notifications are off; `/` still works.
    let plain = Node::spawn(&["--dev", "--api-keys", API_KEY], &[]).await;
    let mut refused = agent(&plain, "/notifications", "1", true);
    assert_eq!(
        refused.expect_refused(TIMEOUT).await,
        "notifications are not enabled on this server"
    );
    assert_eq!(send(&plain, note(1, "x")).await.status, 501);
    let rooms = json!({"namespace": "/notifications", "channel": "admin", "event": "e"});
    let response = api(&plain, "/api/broadcast", rooms).await;
    assert_eq!(response.status, 501, "{}", response.text());
    let mut root = agent(&plain, "", "1", true);
    root.expect_connect(TIMEOUT).await;

    // Bad requests and someone else's notification.
    let response = send(
        &node,
        json!({"user_ids": [1], "sector_id": 10, "type": "t", "title": "t", "message": "m"}),
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.text());
    let response = send(
        &node,
        json!({"user_ids": [1], "type": "", "title": "t", "message": "m"}),
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.text());
    let theirs = send_ok(&node, note(2, "not yours")).await[0];
    let mut device = notifications_socket(&node, "1", true).await;
    events_until_success(&mut device).await;
    let answer = device
        .emit_ack("mark.read", json!([{"notificationId": theirs}]))
        .await;
    assert_eq!(answer[0]["success"], false, "{answer}");
    assert!(answer[0]["error"].is_string(), "{answer}");
    let unread = db
        .query(&format!(
            "SELECT COUNT(*) FROM notifications WHERE id = {theirs} AND read_at IS NULL"
        ))
        .await;
    assert_eq!(unread, [["1"]]);
}

async fn sector_and_admin_fan_out(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let mut ana = notifications_socket(&node, "1", true).await;
    events_until_success(&mut ana).await;
    let mut cleo = notifications_socket(&node, "3", true).await;
    events_until_success(&mut cleo).await;

    let response = send(
        &node,
        json!({"sector_id": 10, "type": "sector", "title": "Sector news", "message": "m"}),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let mut users: Vec<String> = response.json()["notifications"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|n| n["user_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    users.sort();
    assert_eq!(users, ["1", "2"], "active members of sector 10 only");
    let new = ana
        .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
        .await;
    assert_eq!(new["args"][0]["title"], "Sector news");
    let count = ana
        .wait_for(|l| l["event"] == "notification:count", TIMEOUT)
        .await;
    assert_eq!(count["args"][0], json!({"count": 1}));

    let ids = send_ok(
        &node,
        json!({"role": "ADMIN", "type": "admin", "title": "Admins only", "message": "m"}),
    )
    .await;
    assert_eq!(ids.len(), 1);
    let new = cleo
        .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
        .await;
    assert_eq!(new["args"][0]["title"], "Admins only");
    // Absence by order: a note for Ana sent after it arrives, and the admins' one never did.
    send_ok(&node, note(1, "For Ana")).await;
    let mine = ana
        .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
        .await;
    assert_eq!(mine["args"][0]["title"], "For Ana", "{mine}");

    // `role` as the application lists the roles at or above the one it means: the super admin
    // too, each recipient once. A plain `ADMIN` stays just that role.
    let recipients = |response: HttpResponse| {
        assert_eq!(response.status, 201, "{}", response.text());
        let mut users: Vec<String> = response.json()["notifications"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|n| n["user_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        users.sort();
        users
    };
    let body = |role: Value| json!({"role": role, "type": "admin", "title": "t", "message": "m"});
    let listed = send(&node, body(json!(["ADMIN", "SUPER_ADMIN", "ADMIN"]))).await;
    assert_eq!(recipients(listed), ["3", "5"]);
    assert_eq!(
        recipients(send(&node, body(json!("SUPER_ADMIN"))).await),
        ["5"]
    );
    for bad in [json!([]), json!([""]), json!([7])] {
        let refused = send(&node, body(bad.clone())).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
    }

    // The rooms each socket joined: its user, its sector, and `admin` for admins.
    let channels = http(
        "GET",
        &format!("{}/api/channels?prefix=notifications|", node.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await
    .json();
    let mut names: Vec<&String> = channels["channels"]
        .as_object()
        .map(|c| c.keys().collect())
        .unwrap_or_default();
    names.sort();
    assert_eq!(
        names,
        [
            "notifications|admin",
            "notifications|sector:10",
            "notifications|sector:20",
            "notifications|user:1",
            "notifications|user:3"
        ]
    );
}

/// POST /api/broadcast (or one batch operation) with the API key.
async fn api(node: &Node, path: &str, body: Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}{path}", node.url()),
        &[
            ("authorization", &format!("Bearer {API_KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

/// The next event an agent received: its name and arguments.
async fn next_event(agent: &mut Agent) -> (String, Value) {
    let line = agent.wait_for(|l| l["type"] == "event", TIMEOUT).await;
    let name = line["event"].as_str().unwrap_or_default().to_owned();
    (name, line["args"].clone())
}

#[tokio::test]
async fn the_api_reaches_sector_and_admin_rooms_on_every_node() {
    let db = Db::start(Engine::MariaDb).await;
    app_schema(&db).await;
    let redis = RedisServer::start().await;
    let one = node(&db, Some(&redis)).await;
    let two = node(&db, Some(&redis)).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    // Ana and Ben are in sector 10, on different nodes; Cleo is an admin in sector 20.
    let mut ana = notifications_socket(&one, "1", true).await;
    events_until_success(&mut ana).await;
    let mut ben = notifications_socket(&two, "2", true).await;
    events_until_success(&mut ben).await;
    let mut cleo = notifications_socket(&two, "3", true).await;
    events_until_success(&mut cleo).await;
    // Ana's default-namespace socket, in a public channel spelled like the sector's room.
    let mut root = agent(&one, "", "1", true);
    root.expect_connect(TIMEOUT).await;
    root.expect_event("subscribed", TIMEOUT).await;
    let joined = root
        .emit_ack("subscribe", json!([{"channel": "sector:10"}]))
        .await;
    assert_eq!(joined[0]["status"], "success", "{joined}");

    let sector = json!({"namespace": "/notifications", "channel": "sector:10",
        "event": "department.broadcast", "data": {"text": "Sector 10 meets at noon"}});
    let response = api(&one, "/api/broadcast", sector).await;
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"status": "accepted", "channels": 1})
    );
    let alert = json!({"op": "broadcast", "namespace": "/notifications", "channels": ["admin"],
        "event": "system.alert", "data": {"level": "high"}});
    let response = api(&one, "/api/batch", json!({"batch": [alert]})).await;
    assert_eq!(
        response.json()["results"][0]["status"],
        202,
        "{}",
        response.text()
    );
    // The same name without the namespace is the default namespace's channel.
    let plain = json!({"channel": "sector:10", "event": "root.ping", "data": {}});
    assert_eq!(api(&one, "/api/broadcast", plain).await.status, 202);
    let personal = json!({"namespace": "/notifications", "channels": ["user:1", "user:2", "user:3"],
        "event": "personal.ping", "data": null});
    assert_eq!(api(&one, "/api/broadcast", personal).await.status, 202);

    // Each socket's events in order: what was not for it never came before the last one.
    for (who, agent) in [("Ana", &mut ana), ("Ben", &mut ben)] {
        assert_eq!(
            next_event(agent).await,
            (
                "department.broadcast".to_owned(),
                json!([{"text": "Sector 10 meets at noon"}])
            ),
            "{who}"
        );
        assert_eq!(next_event(agent).await.0, "personal.ping", "{who}");
    }
    assert_eq!(
        next_event(&mut cleo).await,
        ("system.alert".to_owned(), json!([{"level": "high"}]))
    );
    assert_eq!(next_event(&mut cleo).await.0, "personal.ping");
    assert_eq!(
        next_event(&mut root).await,
        ("root.ping".to_owned(), json!(["sector:10", {}]))
    );

    // Only the rooms the namespace's sockets join, and none of its own events.
    for (body, why) in [
        (
            json!({"channel": "sector:"}),
            "not a room of /notifications",
        ),
        (json!({"channel": "team:1"}), "not a room of /notifications"),
        (
            json!({"channel": "notifications|admin"}),
            "not a room of /notifications",
        ),
        (
            json!({"channel": "sector:10|x"}),
            "not a room of /notifications",
        ),
        (
            json!({"channel": "admin", "event": "notification:new"}),
            "POST /api/notifications",
        ),
        (
            json!({"channel": "admin", "event": "connection:success"}),
            "POST /api/notifications",
        ),
        (
            json!({"channel": "admin", "namespace": "/chat"}),
            "unknown `namespace`",
        ),
    ] {
        let mut request = json!({"namespace": "/notifications", "event": "x", "data": {}});
        for (key, value) in body.as_object().into_iter().flatten() {
            request[key] = value.clone();
        }
        let response = api(&one, "/api/broadcast", request.clone()).await;
        assert_eq!(response.status, 400, "{request}: {}", response.text());
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(why), "{request}: {message}");
    }
}

async fn read_on_one_device_reaches_the_others_on_every_node(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let redis = RedisServer::start().await;
    let one = node(&db, Some(&redis)).await;
    let two = node(&db, Some(&redis)).await;
    for node in [&one, &two] {
        node.wait_ready(true).await;
    }
    let mut phone = notifications_socket(&one, "1", true).await;
    events_until_success(&mut phone).await;
    let mut laptop = notifications_socket(&two, "1", true).await;
    events_until_success(&mut laptop).await;
    let mut echo = agent(&two, "", "1", true);
    echo.expect_connect(TIMEOUT).await;
    echo.expect_event("subscribed", TIMEOUT).await;
    // A plain socket.io client (MechaMap's), which takes each event's data as its one argument.
    let mut plain = Agent::spawn(json!({
        "url": one.url(),
        "auth": {"token": token("1"), "broadcastArgs": "data"},
        "transports": ["websocket"],
    }));
    plain.expect_connect(TIMEOUT).await;
    plain.expect_event("subscribed", TIMEOUT).await;

    let id = send_ok(&one, note(1, "hello")).await[0];
    for device in [&mut phone, &mut laptop] {
        let new = device
            .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
            .await;
        assert_eq!(new["args"][0]["id"], id);
    }
    let sent = echo.expect_event("notification.sent", TIMEOUT).await;
    assert_eq!(sent[0], "private-user.1");
    assert_eq!(sent[1]["notification"]["id"], id);
    assert_eq!(sent[1]["unread_count"], 1);

    let answer = phone
        .emit_ack("mark.read", json!([{"notificationId": id}]))
        .await;
    assert_eq!(
        (
            answer[0]["success"].as_bool(),
            answer[0]["notificationId"].as_u64()
        ),
        (Some(true), Some(id)),
        "{answer}"
    );
    for device in [&mut phone, &mut laptop] {
        let read = device
            .wait_for(|l| l["event"] == "notification:read", TIMEOUT)
            .await;
        assert_eq!(read["args"][0]["notificationId"], id);
        assert!(
            read["args"][0]["readAt"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{read}"
        );
        let count = device
            .wait_for(
                |l| l["event"] == "notification:count" && l["args"][0]["count"] == 0,
                TIMEOUT,
            )
            .await;
        assert_eq!(count["args"][0], json!({"count": 0}));
    }
    let read = echo.expect_event("notification.read", TIMEOUT).await;
    assert_eq!(
        (
            read[1]["notificationId"].as_u64(),
            read[1]["unread_count"].as_u64()
        ),
        (Some(id), Some(0))
    );

    // MechaMap's event on the other devices: `{notificationId}` its one argument on
    // `/notifications` and for a plain socket.io client, Echo's data after the channel; not
    // on the device that read it.
    let mechamap = json!({"notificationId": id});
    let got = laptop.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, std::slice::from_ref(&mechamap));
    let got = plain.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, std::slice::from_ref(&mechamap));
    let got = echo.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, [json!("private-user.1"), mechamap.clone()]);

    // The MechaMap flow: read on the default namespace, the other devices are told.
    let id = send_ok(&two, note(1, "again")).await[0];
    echo.expect_event("notification.sent", TIMEOUT).await;
    let answer = echo
        .emit_ack("notification_read", json!([{"notificationId": id}]))
        .await;
    assert_eq!(answer[0]["success"], true, "{answer}");
    let mechamap = json!({"notificationId": id});
    for device in [&mut phone, &mut laptop] {
        device
            .wait_for(
                |l| l["event"] == "notification:read" && l["args"][0]["notificationId"] == id,
                TIMEOUT,
            )
            .await;
    }
    for device in [&mut plain, &mut phone, &mut laptop] {
        let got = device.expect_event("notification_read", TIMEOUT).await;
        assert_eq!(got, std::slice::from_ref(&mechamap));
    }

    // MechaMap's event on `/notifications` too: it marks the notification read like
    // `mark.read`.
    let id = send_ok(&two, note(1, "third")).await[0];
    // Absence by order: the Echo socket, which read the second, heard nothing of its own read
    // before the third arrived.
    let before = events_before(&mut echo, "notification.sent", "third").await;
    assert!(
        !before
            .iter()
            .any(|e| e == "notification.read" || e == "notification_read"),
        "the reader on / was told of its own read: {before:?}"
    );
    laptop
        .wait_for(
            |l| l["event"] == "notification:new" && l["args"][0]["id"] == id,
            TIMEOUT,
        )
        .await;
    let answer = laptop
        .emit_ack("notification_read", json!([{"notificationId": id}]))
        .await;
    assert_eq!(answer[0]["success"], true, "{answer}");
    let got = phone.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, [json!({"notificationId": id})]);
    let got = plain.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, [json!({"notificationId": id})]);

    // And the laptop, which read the third, nothing of it before the fourth.
    send_ok(&one, note(1, "fourth")).await;
    let before = events_before(&mut laptop, "notification:new", "fourth").await;
    assert!(
        !before.iter().any(|e| e == "notification_read"),
        "the reader on /notifications was told of its own read: {before:?}"
    );
    let metrics = http("GET", &format!("{}/metrics", one.url()), &[], b"")
        .await
        .text();
    assert!(
        metrics.contains("switchboard_notifications_read_total 1"),
        "{metrics}"
    );
}

/// The names of the events `agent` received (or has buffered) before the event `name` whose
/// line mentions `marker` (a notification's title).
async fn events_before(agent: &mut Agent, name: &str, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let Some(line) = agent.next(Duration::from_millis(200)).await else {
            continue;
        };
        if line["type"] != "event" {
            continue;
        }
        let event = line["event"].as_str().unwrap_or_default().to_owned();
        if event == name && line.to_string().contains(marker) {
            return seen;
        }
        seen.push(event);
    }
    panic!("no {name}; events so far: {seen:?}");
}

/// MechaMap keeps its notifications in its own `user_notifications` table: with the read
/// query set, `notification_read` marks the row there, for its owner only, and the user's
/// other devices hear of it.
async fn the_apps_read_query_marks_its_own_table(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    db.exec_sql(
        "CREATE TABLE user_notifications (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL,
             title VARCHAR(100), is_read BOOLEAN NOT NULL DEFAULT FALSE);
         INSERT INTO user_notifications (id, user_id, title) VALUES (70, 1, 'a'), (71, 1, 'b'), (80, 2, 'c');",
    )
    .await;
    let node = node_with(
        &db,
        None,
        &[(
            "SWITCHBOARD_NOTIFICATIONS_READ_QUERY",
            "UPDATE user_notifications SET is_read = TRUE \
             WHERE id = :id AND user_id = :user_id AND NOT is_read",
        )],
    )
    .await;
    let mut reader = agent(&node, "", "1", true);
    reader.expect_connect(TIMEOUT).await;
    let mut other = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token("1"), "broadcastArgs": "data"},
        "transports": ["websocket"],
    }));
    other.expect_connect(TIMEOUT).await;
    let mut device = notifications_socket(&node, "1", true).await;
    events_until_success(&mut device).await;
    async fn read(db: &Db) -> Vec<String> {
        let sql = "SELECT id FROM user_notifications WHERE is_read ORDER BY id";
        db.query(sql).await.concat()
    }

    let answer = reader
        .emit_ack("notification_read", json!([{"notificationId": 70}]))
        .await;
    assert_eq!(answer[0]["success"], true, "{answer}");
    assert!(
        answer[0]["readAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{answer}"
    );
    assert_eq!(read(&db).await, ["70"]);
    let got = other.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, [json!({"notificationId": 70})]);
    let got = device.expect_event("notification_read", TIMEOUT).await;
    assert_eq!(got, [json!({"notificationId": 70})]);
    // On `/notifications` as well; the count is the application's to tell.
    let answer = device
        .emit_ack("notification_read", json!([{"notificationId": "71"}]))
        .await;
    assert_eq!(answer[0]["success"], true, "{answer}");
    assert_eq!(
        other.expect_event("notification_read", TIMEOUT).await,
        [json!({"notificationId": 71})]
    );

    // Someone else's, one read before, or no number: nothing changes, nobody is told.
    for (id, why) in [
        (json!(80), "user 2's"),
        (json!(70), "read before"),
        (json!("x"), "no id"),
    ] {
        let answer = reader
            .emit_ack("notification_read", json!([{"notificationId": id}]))
            .await;
        assert_eq!(answer[0]["success"], false, "{why}: {answer}");
    }
    assert_eq!(read(&db).await, ["70", "71"]);
    // Switchboard's own table was not used.
    assert_eq!(
        db.query("SELECT COUNT(*) FROM notifications WHERE read_at IS NOT NULL")
            .await,
        [["0"]]
    );
    // Absence by order: a broadcast to user 1 after the refused reads comes first.
    let ids = send_ok(&node, note(1, "after")).await;
    assert_eq!(ids.len(), 1);
    let before = events_before(&mut other, "notification.sent", "after").await;
    assert!(
        !before.iter().any(|e| e == "notification_read"),
        "{before:?}"
    );
}

async fn database_outage_answers_503_and_loses_nothing(engine: Engine) {
    let mut db = Db::alone(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let before = send_ok(&node, note(1, "before")).await;
    let mut root = agent(&node, "", "1", true);
    root.expect_connect(TIMEOUT).await;

    db.kill().await;
    let response = send(&node, note(1, "during")).await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "database_unavailable");
    let mut refused = agent(&node, "/notifications", "1", true);
    assert_eq!(
        refused.expect_refused(TIMEOUT).await,
        "service unavailable, try again"
    );
    // The sockets stay up.
    assert_eq!(root.emit_ack("ping", json!([])).await, json!(["pong"]));

    db.restart().await;
    let after = send_ok(&node, note(1, "after")).await;
    let mut device = notifications_socket(&node, "1", true).await;
    let events = events_until_success(&mut device).await;
    let titles: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "notification:new")
        .filter_map(|e| e["args"][0]["title"].as_str())
        .collect();
    assert_eq!(
        titles,
        ["before", "after"],
        "nothing of the failed call: {events:?}"
    );
    assert_eq!(
        db.query("SELECT COUNT(*) FROM notifications").await,
        [["2"]]
    );
    assert_eq!(
        db.query("SELECT COUNT(*) FROM notification_deliveries")
            .await,
        [["2"]]
    );
    assert!(before[0] < after[0]);
}

/// Issue 19 §4: the database dies while four back-end workers post notifications for two users.
/// Each call is answered 201 or 503; a notification is stored for both users or for neither;
/// every accepted one reaches both users' devices; and posting works again after the restart.
async fn a_database_killed_mid_burst_half_writes_nothing(engine: Engine) {
    const WORKERS: usize = 4;
    const CALLS: usize = 15;
    let mut db = Db::alone(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let mut devices = Vec::new();
    for user in ["1", "2"] {
        let mut device = notifications_socket(&node, user, true).await;
        events_until_success(&mut device).await;
        devices.push(device);
    }
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (url, answered) = (node.url(), answered.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for call in 0..CALLS {
                let title = format!("w{worker}c{call}");
                let body = json!({"user_ids": [1, 2], "type": "info", "title": title,
                    "message": "burst", "data": {}});
                let response = http(
                    "POST",
                    &format!("{url}/api/notifications"),
                    &[
                        ("authorization", &format!("Bearer {API_KEY}")),
                        ("content-type", "application/json"),
                    ],
                    body.to_string().as_bytes(),
                )
                .await;
                answered.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                outcomes.push((title, response.status));
            }
            outcomes
        }));
    }
    // Killed a sixth into the burst, with calls in flight.
    while answered.load(std::sync::atomic::Ordering::Acquire) < WORKERS * CALLS / 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    db.kill().await;
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.expect("worker"));
    }
    db.restart().await;
    let accepted: Vec<&str> = outcomes
        .iter()
        .filter(|(_, status)| *status == 201)
        .map(|(title, _)| title.as_str())
        .collect();
    for (title, status) in &outcomes {
        assert!([201, 503].contains(status), "{title}: {status}");
    }
    assert!(
        !accepted.is_empty(),
        "some calls went through before the kill"
    );
    assert!(
        accepted.len() < outcomes.len(),
        "some calls met the dead database"
    );
    let stored = db
        .query("SELECT title, COUNT(*) FROM notifications GROUP BY title")
        .await;
    for row in &stored {
        assert_eq!(row[1], "2", "stored for both users or neither: {row:?}");
    }
    let stored: Vec<&str> = stored.iter().map(|row| row[0].as_str()).collect();
    for title in &accepted {
        assert!(
            stored.contains(title),
            "{title} was accepted but not stored"
        );
    }
    // Every accepted notification reached both devices (one refused with 503 whose commit
    // landed may come too: it is stored whole).
    for device in &mut devices {
        let mut missing: Vec<&str> = accepted.clone();
        while !missing.is_empty() {
            let line = device
                .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
                .await;
            let title = line["args"][0]["title"].as_str().unwrap_or_default();
            assert!(stored.contains(&title), "{title} delivered, not stored");
            missing.retain(|t| *t != title);
        }
    }
    // And the back-end can post again.
    let after = send(&node, note(1, "after")).await;
    assert_eq!(after.status, 201, "{}", after.text());
}

async fn nothing_is_lost_across_a_node_crash_and_a_redis_restart(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let mut redis = RedisServer::start().await;
    let one = node(&db, Some(&redis)).await;
    let mut two = node(&db, Some(&redis)).await;
    one.wait_ready(true).await;
    two.wait_ready(true).await;

    // Delivered to a device on node two, which crashes before the device acknowledges it.
    let mut device = notifications_socket(&two, "1", false).await;
    events_until_success(&mut device).await;
    let crashed = send_ok(&one, note(1, "before the crash")).await[0];
    let live = device
        .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
        .await;
    assert_eq!(live["args"][0]["id"], crashed);
    two.kill().await;
    drop(device);

    // Redis goes away: the notification is stored all the same, and nobody is told yet.
    redis.kill().await;
    let stored = send_ok(&one, note(1, "while Redis is down")).await[0];
    redis.restart().await;
    one.wait_ready(true).await;

    // Both are waiting for the user's next connection, in order.
    let mut device = notifications_socket(&one, "1", true).await;
    let events = events_until_success(&mut device).await;
    let ids: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "notification:new")
        .filter_map(|e| e["args"][0]["id"].as_u64())
        .collect();
    assert_eq!(ids, [crashed, stored], "{events:?}");
    db_until(
        &db,
        "SELECT COUNT(*) FROM notification_deliveries WHERE status = 'DELIVERED'",
        "2",
    )
    .await;

    // The namespace's rooms are the node's own: the channel list does not show them.
    let listed = http(
        "GET",
        &format!("{}/api/channels", one.url()),
        &[("authorization", &format!("Bearer {API_KEY}"))],
        b"",
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json(), json!({"channels": {}}));

    // The bus is back: a new one reaches the online device at once.
    let after = send_ok(&one, note(1, "after the restart")).await[0];
    let live = device
        .wait_for(|l| l["event"] == "notification:new", TIMEOUT)
        .await;
    assert_eq!(live["args"][0]["id"], after);
}

async fn a_repeated_idempotency_key_stores_nothing_twice(engine: Engine) {
    let db = Db::start(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;
    let body = json!({"user_ids": [1, 2], "type": "info", "title": "once", "message": "m"});
    let first = send_keyed(&node, body.clone(), Some("order-17-shipped")).await;
    assert_eq!(first.status, 201, "{}", first.text());
    // The caller did not see the answer (say it timed out) and tries again.
    let again = send_keyed(&node, body.clone(), Some("order-17-shipped")).await;
    assert_eq!(again.status, 200, "{}", again.text());
    let (first, again) = (first.json(), again.json());
    assert_eq!(again["repeated"], true);
    assert_eq!(again["ids"], first["ids"]);
    assert_eq!(again["notifications"], first["notifications"]);
    assert_eq!(
        db.query("SELECT COUNT(*) FROM notifications").await,
        [["2"]]
    );
    // Another key is another call; a bad key is refused before anything is stored.
    let other = send_keyed(&node, body.clone(), Some("order-18-shipped")).await;
    assert_eq!(other.status, 201, "{}", other.text());
    let long = "k".repeat(192);
    let refused = send_keyed(&node, body, Some(&long)).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        db.query("SELECT COUNT(*) FROM notifications").await,
        [["4"]]
    );
}

async fn refused_connects_and_event_floods_stop_before_the_database(engine: Engine) {
    use futures_util::SinkExt;

    let db = Db::start(engine).await;
    app_schema(&db).await;
    let node = node(&db, None).await;

    // 100 connects of an unknown user back to back: the first one's user query refuses it
    // and closes the session, so the others never reach the database.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake");
    let connect = format!("40/notifications,{}", json!({"token": token("99")}));
    for _ in 0..100 {
        let frame = tokio_tungstenite::tungstenite::Message::text(connect.clone());
        if ws.send(frame).await.is_err() {
            break;
        }
    }
    let metrics_url = format!("{}/metrics", node.url());
    let refused = r#"switchboard_auth_failures_total{reason="notification_user"} 1"#;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let metrics = http("GET", &metrics_url, &[], b"").await.text();
        // The metric says 1 once the first refusal is counted; more would follow at once.
        if metrics.contains(refused) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = tokio::time::timeout(TIMEOUT, async {
        use futures_util::StreamExt;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(closed.is_ok(), "the session stays open");
    let metrics = http("GET", &metrics_url, &[], b"").await.text();
    assert!(metrics.contains(refused), "{metrics}");

    // `mark.read` (a database write each) beyond the event rate is refused, then the session
    // is closed.
    let theirs = send_ok(&node, note(2, "not yours")).await[0];
    let mut device = notifications_socket(&node, "1", true).await;
    events_until_success(&mut device).await;
    for _ in 0..150 {
        device
            .emit("mark.read", json!([{"notificationId": theirs}]))
            .await;
    }
    let refusal = device.expect_event("error", TIMEOUT).await;
    assert_eq!(
        refusal,
        [json!({"event": "mark.read", "error": "too many events, slow down"})]
    );
    device.expect_disconnect(TIMEOUT).await;
}
