//! The `sql` rule against real, throwaway databases: `examples/mechamap-policy.toml`, the file
//! as shipped, on MariaDB holding MechaMap's tables (every line of its channel manager with
//! real socket.io-client sockets), and the same thread rule in PostgreSQL's dialect; parameters
//! bound rather than spliced, and a database outage refusing, never allowing.

use std::path::Path;

use crate::support::*;
use serde_json::json;

const SECRET: &str = "switchboard-dev-secret";

/// MechaMap's users, forums and threads. Roles are read from here, never from the token.
async fn schema(db: &Db) {
    db.exec_sql(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(100), role VARCHAR(32));
         CREATE TABLE forums (id BIGINT PRIMARY KEY, required_role VARCHAR(32) NULL);
         CREATE TABLE threads (id BIGINT PRIMARY KEY, forum_id BIGINT);
         INSERT INTO users VALUES
             (1, 'Gus', 'guest'), (2, 'Mia', 'member'), (3, 'Mo', 'moderator'),
             (4, 'Ada', 'ADMIN'), (5, 'Sue', 'super_admin'), (6, 'Ban', 'banned');
         INSERT INTO forums VALUES (10, 'member'), (20, 'moderator'), (30, NULL), (40, 'mod');
         INSERT INTO threads VALUES (100, 10), (200, 20), (300, 30), (400, 40);",
    )
    .await;
}

/// A connected socket.io-client of `user`, past its automatic user channel. The token claims
/// super_admin for everyone: the policy must not believe it.
async fn client(node: &Node, user: u64) -> Agent {
    let token = jwt_hs256(SECRET, json!({"sub": user, "role": "super_admin"}));
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token},
        "transports": ["websocket"],
    }));
    agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    agent
}

/// `ok`, or the refusal's `error: details`.
async fn verdict(agent: &mut Agent, channel: &str) -> String {
    let answer = agent
        .emit_ack("subscribe", json!([{"channel": channel}]))
        .await[0]
        .take();
    if answer["status"] == "success" {
        return "ok".into();
    }
    assert_eq!(answer["channel"], channel, "{answer}");
    format!(
        "{}: {}",
        answer["error"].as_str().unwrap_or_default(),
        answer["details"].as_str().unwrap_or_default()
    )
}

const OK: &str = "ok";
const REFUSED: &str = "Unauthorized: forbidden";

#[tokio::test]
async fn mechamaps_channel_manager_on_real_tables() {
    let mut db = Db::alone(Engine::MariaDb).await;
    schema(&db).await;
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mechamap-policy.toml");
    let node = Node::spawn(
        &["--dev"],
        &[
            (
                "SWITCHBOARD_POLICY_FILE",
                policy.to_str().expect("utf-8 path"),
            ),
            ("SWITCHBOARD_DATABASE_URL", &db.url()),
            // Every subscribe asks the database, so the outage below is seen at once.
            ("SWITCHBOARD_AUTH_CACHE_TTL", "0s"),
            ("RUST_LOG", "info,switchboard::policy=debug"),
        ],
    )
    .await;
    let mut users = Vec::new();
    for user in 1..=6 {
        users.push(client(&node, user).await);
    }

    // Each channel, then what users 1 (guest), 2 (member), 3 (moderator), 4 (ADMIN),
    // 5 (super_admin) and 6 (a role outside the hierarchy) are answered.
    let table: &[(&str, [&str; 6])] = &[
        // public.*: open to everyone.
        ("public.news", [OK; 6]),
        // Threads by their forum's required role; forum 30 has none (any known role), forum
        // 40 an unknown one (nobody); thread 999 does not exist.
        ("presence-thread.100", [REFUSED, OK, OK, OK, OK, REFUSED]),
        (
            "presence-thread.200",
            [REFUSED, REFUSED, OK, OK, OK, REFUSED],
        ),
        ("presence-thread.300", [OK, OK, OK, OK, OK, REFUSED]),
        ("presence-thread.400", [REFUSED; 6]),
        ("presence-thread.999", [REFUSED; 6]),
        // The id is a bound parameter, not SQL. `200#` is a valid channel name; pasted into
        // the query, `#` would comment out the role check. Bound, MariaDB reads thread 200.
        (
            "presence-thread.200#",
            [REFUSED, REFUSED, OK, OK, OK, REFUSED],
        ),
        // Forums by their own required role.
        ("forum.10", [REFUSED, OK, OK, OK, OK, REFUSED]),
        ("forum.20", [REFUSED, REFUSED, OK, OK, OK, REFUSED]),
        ("forum.30", [OK, OK, OK, OK, OK, REFUSED]),
        ("forum.99", [REFUSED; 6]),
        // admin.*: admin or super_admin in the database (any case), whatever the token says.
        (
            "admin.dashboard",
            [REFUSED, REFUSED, REFUSED, OK, OK, REFUSED],
        ),
        // Everything else is refused: public names, other prefixes, chat rooms (whose
        // built-in rule a deny-by-default policy drops) and another user's channel.
        ("news", [REFUSED; 6]),
        ("private-orders.1", [REFUSED; 6]),
        ("presence-chat.1", [REFUSED; 6]),
        ("room:1", [REFUSED; 6]),
        (
            "private-user.3",
            [REFUSED, REFUSED, OK, REFUSED, REFUSED, REFUSED],
        ),
    ];
    for (channel, expected) in table {
        for ((user, agent), want) in (1..).zip(users.iter_mut()).zip(expected) {
            let got = verdict(agent, channel).await;
            assert_eq!(&got, want, "{channel} for user {user}");
        }
    }
    for (user, agent) in (1..).zip(users.iter_mut()) {
        assert_eq!(verdict(agent, &format!("private-user.{user}")).await, OK);
    }
    // The log names what refused: the rule, or the default.
    let logs = node.logs();
    for by in ["#5 `admin.*`", "the default (no rule matches)"] {
        let line = logs
            .lines()
            .find(|l| l.contains("subscription refused by the policy") && l.contains(by));
        assert!(line.is_some(), "no refusal by {by} logged:\n{logs}");
    }

    // Database down: the database's rules refuse as unavailable, never allow; the others
    // decide as before.
    db.kill().await;
    let moderator = &mut users[2];
    for channel in ["presence-thread.100", "forum.10", "admin.dashboard"] {
        let refused = verdict(moderator, channel).await;
        assert!(
            refused.starts_with("Internal error: authorization unavailable"),
            "{channel}: {refused}"
        );
        assert!(!refused.contains("mysql://"), "no URL leaks: {refused}");
    }
    assert_eq!(verdict(moderator, "public.news").await, OK);
    assert_eq!(verdict(moderator, "news").await, REFUSED);

    // And back once it is.
    db.restart().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        let answer = verdict(moderator, "presence-thread.100").await;
        if answer == OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never allowed again after the restart: {answer}\n{}",
            node.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

const ROLES: &str = "'guest','member','senior_member','moderator','admin','super_admin'";

/// MechaMap's thread rule in PostgreSQL's dialect (MySQL's `FIELD` becomes `array_position`);
/// the `:user_id` and `:id` parameters are written as for MySQL.
fn postgres_policy() -> String {
    let rank = |column: &str| format!("array_position(ARRAY[{ROLES}]::text[], {column}::text)");
    format!(
        r#"
[[channel]]
pattern = "presence-thread.{{id}}"
allow = "sql"
query = """
SELECT 1 FROM threads t
JOIN forums f ON f.id = t.forum_id
JOIN users u ON u.id = :user_id
WHERE t.id = :id AND {} >= {}
"""
"#,
        rank("u.role"),
        rank("f.required_role")
    )
}

#[tokio::test]
async fn the_thread_rule_in_postgresqls_dialect() {
    let mut db = Db::alone(Engine::Postgres).await;
    schema(&db).await;
    let (_dir, policy) = policy_file(&postgres_policy());
    let node = Node::spawn(
        &["--dev"],
        &[
            (
                "SWITCHBOARD_POLICY_FILE",
                policy.to_str().expect("utf-8 path"),
            ),
            ("SWITCHBOARD_DATABASE_URL", &db.url()),
            // Every subscribe asks the database, so the outage below is seen at once.
            ("SWITCHBOARD_AUTH_CACHE_TTL", "0s"),
        ],
    )
    .await;
    // Users 2 (member) and 3 (moderator) of the schema.
    let mut member = client(&node, 2).await;
    let mut moderator = client(&node, 3).await;
    assert_eq!(verdict(&mut member, "presence-thread.100").await, OK);
    assert_eq!(verdict(&mut member, "presence-thread.200").await, REFUSED);
    assert_eq!(verdict(&mut moderator, "presence-thread.200").await, OK);
    assert_eq!(verdict(&mut moderator, "presence-thread.100").await, OK);
    // No such thread: no row.
    assert_eq!(
        verdict(&mut moderator, "presence-thread.999").await,
        REFUSED
    );
    // The id is bound, not SQL: PostgreSQL reads no bigint in `200#`, which matches no thread.
    assert_eq!(verdict(&mut member, "presence-thread.200#").await, REFUSED);

    // Database down: refused as unavailable, never allowed.
    db.kill().await;
    let refused = verdict(&mut member, "presence-thread.100").await;
    assert!(
        refused.starts_with("Internal error: authorization unavailable"),
        "{refused}"
    );
    assert!(!refused.contains("://"), "no URL leaks: {refused}");

    // And back once it is.
    db.restart().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        let answer = verdict(&mut member, "presence-thread.100").await;
        if answer == OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never allowed again after the restart: {answer}\n{}",
            node.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
