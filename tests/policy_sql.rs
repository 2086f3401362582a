//! The `sql` rule against a real, throwaway database, MariaDB and PostgreSQL: the
//! MechaMap-style rule from the README (a thread's presence channel is open to users whose
//! role reaches its forum's required role), parameters bound rather than spliced, and a
//! database outage refusing, never allowing.

mod support;

use serde_json::{Value, json};
use support::*;

on_both_databases!(mechamap_thread_rule_on_real_tables);

const SECRET: &str = "switchboard-dev-secret";

const ROLES: &str = "'guest','member','senior_member','moderator','admin','super_admin'";

/// The same rule in each dialect: only the rank function differs (MySQL's `FIELD`), the
/// `:user_id` and `:id` parameters are written the same.
fn policy(engine: Engine) -> String {
    let rank = |column: &str| match engine {
        Engine::MariaDb => format!("FIELD({column}, {ROLES})"),
        Engine::Postgres => format!("array_position(ARRAY[{ROLES}]::text[], {column}::text)"),
    };
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

async fn schema(db: &Db) {
    db.exec_sql(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(100), role VARCHAR(32));
         CREATE TABLE forums (id BIGINT PRIMARY KEY, required_role VARCHAR(32));
         CREATE TABLE threads (id BIGINT PRIMARY KEY, forum_id BIGINT);
         INSERT INTO users VALUES (1, 'Mia', 'member'), (2, 'Mod', 'moderator');
         INSERT INTO forums VALUES (10, 'member'), (20, 'moderator');
         INSERT INTO threads VALUES (100, 10), (200, 20);",
    )
    .await;
}

async fn client(node: &Node, user: u64) -> Agent {
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": jwt_hs256(SECRET, json!({"sub": user}))},
        "transports": ["websocket"],
    }));
    agent.expect_connect(TIMEOUT).await;
    agent
}

async fn subscribe(agent: &mut Agent, channel: &str) -> Value {
    agent
        .emit_ack("subscribe", json!([{"channel": channel}]))
        .await[0]
        .take()
}

async fn mechamap_thread_rule_on_real_tables(engine: Engine) {
    let mut db = Db::alone(engine).await;
    schema(&db).await;
    let (_dir, policy) = policy_file(&policy(engine));
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

    let mut member = client(&node, 1).await;
    let mut moderator = client(&node, 2).await;
    assert_eq!(
        subscribe(&mut member, "presence-thread.100").await["status"],
        "success"
    );
    let refused = subscribe(&mut member, "presence-thread.200").await;
    assert_eq!(refused["error"], "forbidden", "{refused}");
    assert_eq!(
        subscribe(&mut moderator, "presence-thread.200").await["status"],
        "success"
    );
    assert_eq!(
        subscribe(&mut moderator, "presence-thread.100").await["status"],
        "success"
    );
    // No such thread: no row.
    let refused = subscribe(&mut moderator, "presence-thread.999").await;
    assert_eq!(refused["error"], "forbidden", "{refused}");
    // The id is a bound parameter, not SQL. `200#` is a valid channel name; pasted into the
    // query, `#` would comment out the role check and let the member in. Bound, MariaDB reads
    // the string as thread 200 and the role check refuses; PostgreSQL reads no bigint in it,
    // which matches no thread.
    let refused = subscribe(&mut member, "presence-thread.200#").await;
    assert_eq!(refused["error"], "forbidden", "{refused}");

    // Database down: refused with a clear error, never allowed.
    db.kill().await;
    let refused = subscribe(&mut member, "presence-thread.100").await;
    let error = refused["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.starts_with("authorization unavailable"), "{refused}");
    assert!(!error.contains("://"), "no URL leaks: {error}");

    // And back once it is.
    db.restart().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        let answer = subscribe(&mut member, "presence-thread.100").await;
        if answer["status"] == "success" {
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
