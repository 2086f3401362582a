//! Traces and logs: a node exporting over OTLP/HTTP to a stand-in collector (the spans of one
//! broadcast, their parents, both protocols, the last spans sent at SIGTERM, unsupported
//! settings refused), and JSON logs at debug level that never carry a token, a secret, an API
//! key, an email address or a message body.
//!
//! The collector decodes the default protocol, http/protobuf, with `opentelemetry-proto`'s own
//! types, so the test reads exactly what a real collector would; http/json is read as plain
//! JSON.

use std::time::Duration;

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};

const SECRET: &str = "switchboard-dev-secret";
const API_KEY: &str = "telemetry-key";

/// A stand-in OTLP/HTTP collector: records every export and answers 200 with an empty
/// `ExportTraceServiceResponse` in the request's encoding.
async fn collector() -> AppServer {
    AppServer::start(|request: Received| -> Answer {
        let empty = match request.header("content-type") {
            Some("application/json") => "{}",
            _ => "",
        };
        Box::pin(async move { (200, empty.to_owned()) })
    })
    .await
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<(String, String)>,
    service: String,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(attribute: &KeyValue) -> String {
    match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every span of every protobuf export the collector received so far.
fn exported_spans(collector: &AppServer) -> Vec<Span> {
    let mut spans = Vec::new();
    for request in collector.received() {
        assert_eq!(request.path, "/v1/traces", "{request:?}");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(&request.raw[..])
            .unwrap_or_else(|e| panic!("not an OTLP protobuf export: {e}"));
        for resource in export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(text)
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Span {
                    name: span.name,
                    trace: span.trace_id,
                    id: span.span_id,
                    parent: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    spans
}

/// Polls the collector until `done` holds for the spans, or fails after a deadline.
async fn wait_for_spans(collector: &AppServer, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = exported_spans(collector);
        if done(&spans) {
            return spans;
        }
        if tokio::time::Instant::now() > deadline {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            panic!("the expected spans were not exported; got {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST <path>` on the node's API with a bearer key and a JSON body.
async fn api(node: &Node, key: &str, path: &str, body: Value) -> HttpResponse {
    http(
        "POST",
        &format!("{}{path}", node.url()),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

/// A socket.io-client connected over websocket, past its automatic user channel.
async fn agent(node: &Node, token: &str) -> Agent {
    let mut agent = Agent::spawn(json!({
        "url": node.url(),
        "auth": {"token": token},
        "transports": ["websocket"],
    }));
    agent.expect_connect(TIMEOUT).await;
    agent.expect_event("subscribed", TIMEOUT).await;
    agent
}

async fn join(agent: &mut Agent, request: Value) {
    let reply = agent.emit_ack("subscribe", json!([request])).await;
    assert_eq!(reply[0]["status"], "success", "{reply}");
}

fn one<'a>(spans: &'a [Span], name: &str, channel: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == name
                && (channel.is_empty()
                    || s.attribute("messaging.destination.name") == Some(channel))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span for {channel:?}: {spans:#?}"
    );
    found[0]
}

#[tokio::test]
async fn one_broadcast_is_traced_from_the_api_call_to_the_delivery() {
    let collector = collector().await;
    let endpoint = collector.url("");
    let node = Node::spawn(
        &["--dev", "--api-keys", API_KEY, "--node-id", "traced-node"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    let token = jwt_hs256(SECRET, json!({"sub": "7"}));
    let mut client = agent(&node, &token).await;
    join(&mut client, json!({"channel": "orders"})).await;
    let marker = "traced-body-marker";
    let response = api(
        &node,
        API_KEY,
        "/api/broadcast",
        json!({"channel": "orders", "event": "OrderShipped", "data": {"note": marker}}),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
    client.expect_event("OrderShipped", TIMEOUT).await;

    let spans = wait_for_spans(&collector, |spans| {
        [
            "engineio.handshake",
            "socketio.connect",
            "subscribe",
            "POST /api/broadcast",
            "bus.publish",
            "bus.deliver",
        ]
        .iter()
        .all(|name| spans.iter().any(|s| s.name == *name))
            && spans.iter().any(|s| {
                s.name == "bus.deliver"
                    && s.attribute("messaging.destination.name") == Some("orders")
            })
    })
    .await;

    // The API call is the root; the publish its child; the in-process bus delivers within
    // the publish, so the delivery is the publish's child.
    let call = one(&spans, "POST /api/broadcast", "");
    let publish = one(&spans, "bus.publish", "orders");
    let deliver = one(&spans, "bus.deliver", "orders");
    assert!(call.parent.is_empty(), "{call:?}");
    assert_eq!(publish.parent, call.id);
    assert_eq!(deliver.parent, publish.id);
    assert!(call.trace == publish.trace && publish.trace == deliver.trace);
    assert_eq!(call.attribute("http.route"), Some("/api/broadcast"));
    assert_eq!(call.attribute("http.request.method"), Some("POST"));
    assert_eq!(call.attribute("http.response.status_code"), Some("202"));
    assert_eq!(publish.attribute("messaging.system"), Some("memory"));
    assert_eq!(deliver.attribute("switchboard.event"), Some("OrderShipped"));
    assert_eq!(deliver.attribute("switchboard.recipients"), Some("1"));

    let subscribe = one(&spans, "subscribe", "orders");
    assert_eq!(subscribe.attribute("switchboard.refusal"), None);
    let connect = one(&spans, "socketio.connect", "");
    assert_eq!(connect.attribute("enduser.id"), Some("7"));
    assert_eq!(connect.attribute("switchboard.namespace"), Some("/"));
    assert_eq!(
        one(&spans, "engineio.handshake", "").attribute("switchboard.transport"),
        Some("websocket")
    );

    for span in &spans {
        assert_eq!(span.service, "switchboard", "{span:?}");
        for (key, value) in &span.attributes {
            for secret in [token.as_str(), API_KEY, marker] {
                assert!(
                    !value.contains(secret),
                    "{key} of {} carries {secret}",
                    span.name
                );
            }
        }
    }
}

#[tokio::test]
async fn http_json_service_name_and_the_last_spans_at_shutdown() {
    let collector = collector().await;
    let endpoint = collector.url("");
    // A schedule far beyond the test: only the flush at shutdown can send the spans.
    let mut node = Node::spawn(
        &["--dev", "--api-keys", API_KEY, "--drain-time", "1s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ],
    )
    .await;
    let response = api(
        &node,
        API_KEY,
        "/api/broadcast",
        json!({"channel": "news", "event": "Posted", "data": {}}),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        collector.received().is_empty(),
        "exported before the schedule or the shutdown"
    );
    node.sigterm();
    let status = node.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    let received = collector.received();
    assert!(!received.is_empty(), "nothing exported at shutdown");
    let mut names = Vec::new();
    for request in &received {
        assert_eq!(request.path, "/v1/traces");
        assert_eq!(request.header("content-type"), Some("application/json"));
        for resource in request.body["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let attributes = resource["resource"]["attributes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let attribute = |key: &str| {
                attributes
                    .iter()
                    .find(|a| a["key"] == key)
                    .map(|a| a["value"]["stringValue"].clone())
            };
            assert_eq!(attribute("service.name"), Some(json!("edge-gateway")));
            assert_eq!(attribute("deployment.environment"), Some(json!("test")));
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    names.push(span["name"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    }
    for name in ["POST /api/broadcast", "bus.publish", "bus.deliver"] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
}

#[tokio::test]
async fn unsupported_otel_settings_stop_the_start() {
    let (status, output) = Node::spawn_expect_failure(
        &["--dev"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains(
            "invalid configuration: OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` is not supported"
        ),
        "{output}"
    );
    // Without an endpoint there is no exporter, so nothing to refuse.
    let node = Node::spawn(&["--dev"], &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).await;
    assert!(!node.logs().contains("OTLP"), "{}", node.logs());
}

mod hygiene {
    //! Every kind of secret and private data the node handles, driven through it at debug
    //! level, then looked for in every log line.

    use super::*;

    const JWT_SECRET: &str = "jwt-secret-hygiene-5f2c";
    const KEY: &str = "api-key-hygiene-9d41";
    const WRONG_KEY: &str = "api-key-wrong-0e77";
    const BACKEND_SECRET: &str = "backend-secret-hygiene-77ab";
    const CALLBACK_TOKEN: &str = "callback-session-token-b00c";
    const EMAIL: &str = "ana.hygiene@example.com";
    const BODY: &str = "body-marker-3141";

    fn token(user: &str) -> String {
        jwt_hs256(
            JWT_SECRET,
            json!({"sub": user, "name": format!("User {user}")}),
        )
    }

    /// The application: `/auth` allows every channel, `/app/events` echoes forwarded events.
    async fn application() -> AppServer {
        AppServer::start(|request: Received| -> Answer {
            Box::pin(async move {
                match request.path.as_str() {
                    "/auth" => (200, "{}".to_owned()),
                    _ => (200, json!({"echo": request.body["data"]}).to_string()),
                }
            })
        })
        .await
    }

    async fn database() -> MariaDb {
        let db = MariaDb::start().await;
        let (status, output) =
            run_switchboard(&["migrate"], &[("SWITCHBOARD_DATABASE_URL", &db.url())]).await;
        assert!(status.success(), "switchboard migrate failed: {output}");
        db.exec_sql(&format!(
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(100), email VARCHAR(100),
                 role VARCHAR(32), sector_id BIGINT NULL, is_active TINYINT(1) NOT NULL DEFAULT 1);
             INSERT INTO users VALUES (1, 'Ana', '{EMAIL}', 'MEMBER', 10, 1);"
        ))
        .await;
        db
    }

    #[tokio::test]
    async fn logs_carry_no_secret_and_every_line_is_json() {
        let (app, redis, db) = tokio::join!(application(), RedisServer::start(), database());
        let policy = format!(
            "[[channel]]\npattern = \"private-orders.*\"\nallow = \"callback\"\nurl = \"{}\"\n",
            app.url("/auth")
        );
        let (_policy_dir, policy_path) = policy_file(&policy);
        let backend = app.url("/app");
        let mut node = Node::spawn(
            &[
                "--log-format",
                "json",
                "--jwt-secret",
                JWT_SECRET,
                "--api-keys",
                KEY,
                "--backend-url",
                &backend,
                "--backend-secret",
                BACKEND_SECRET,
                "--policy-file",
                &policy_path.to_string_lossy(),
                "--drain-time",
                "1s",
            ],
            &[
                ("RUST_LOG", "debug,switchboard=trace"),
                ("SWITCHBOARD_REDIS_URL", &redis.url()),
                ("SWITCHBOARD_DATABASE_URL", &db.url()),
            ],
        )
        .await;
        let tokens = [token("1"), token("2"), token("3")];
        let forged = jwt_hs256("not-the-secret", json!({"sub": "9"}));

        // Socket.IO over websocket with `auth.token`; a callback channel with the client's
        // Authorization header; a whisper and a forwarded event with bodies.
        let mut ana = agent(&node, &tokens[0]).await;
        join(&mut ana, json!({"channel": "orders"})).await;
        join(
            &mut ana,
            json!({"channel": "private-orders.5",
                   "auth": {"headers": {"Authorization": format!("Bearer {CALLBACK_TOKEN}")}}}),
        )
        .await;
        ana.emit(
            "client event",
            json!([{"channel": "private-orders.5", "event": "client-typing", "data": {"text": BODY}}]),
        )
        .await;
        let echoed = ana.emit_ack("chat.send", json!([{"text": BODY}])).await;
        assert_eq!(echoed[0]["echo"]["text"], BODY, "{echoed}");

        // Socket.IO over polling with the token in the query string; a forged token.
        let mut polling = Agent::spawn(json!({
            "url": node.url(),
            "query": {"token": tokens[1]},
            "transports": ["polling"],
        }));
        polling.expect_connect(TIMEOUT).await;
        let mut refused = Agent::spawn(json!({
            "url": node.url(),
            "auth": {"token": forged},
            "transports": ["websocket"],
        }));
        refused.expect_refused(TIMEOUT).await;

        // The JSON endpoint with a token in the query, and with a forged one.
        let ws = format!("ws://{}/ws?token=", node.addr());
        let (_json, _) = tokio_tungstenite::connect_async(format!("{ws}{}", tokens[2]))
            .await
            .expect("json websocket");
        assert!(
            tokio_tungstenite::connect_async(format!("{ws}{forged}"))
                .await
                .is_err()
        );

        // The API with bodies and an email address; a wrong key.
        let data = json!({"text": BODY, "email": EMAIL});
        for (key, status) in [(KEY, 202), (WRONG_KEY, 401)] {
            let said = json!({"channel": "orders", "event": "Said", "data": data});
            let sent = api(&node, key, "/api/broadcast", said).await;
            assert_eq!(sent.status, status, "{}", sent.text());
        }
        ana.expect_event("Said", TIMEOUT).await;
        let bad_body = api(&node, KEY, "/api/broadcast", json!(BODY)).await;
        assert_eq!(bad_body.status, 400);

        // A notification, to a socket whose user row holds the email address.
        let mut notified = Agent::spawn(json!({
            "url": format!("{}/notifications", node.url()),
            "auth": {"token": tokens[0]},
            "transports": ["websocket"],
        }));
        notified.expect_connect(TIMEOUT).await;
        notified.expect_event("connection:success", TIMEOUT).await;
        let stored = api(
            &node,
            KEY,
            "/api/notifications",
            json!({"user_ids": [1], "type": "info", "title": BODY, "message": BODY, "data": data}),
        )
        .await;
        assert_eq!(stored.status, 201, "{}", stored.text());
        notified.expect_event("notification:new", TIMEOUT).await;

        // Something on the bus that is not an envelope, quoting a body.
        redis.publish("orders", json!(BODY).to_string()).await;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !node.logs().contains("not a broadcast envelope") {
            assert!(tokio::time::Instant::now() < deadline, "{}", node.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.sigterm();
        assert!(node.wait_exit(Duration::from_secs(10)).await.is_some());

        let logs = node.logs();
        let mut secrets = vec![
            JWT_SECRET,
            KEY,
            WRONG_KEY,
            BACKEND_SECRET,
            CALLBACK_TOKEN,
            EMAIL,
            BODY,
        ];
        for token in tokens.iter().chain([&forged]) {
            secrets.push(token);
            // The signature alone would do as much harm.
            secrets.push(token.rsplit('.').next().unwrap_or_default());
        }
        for line in logs.lines().filter(|l| !l.trim().is_empty()) {
            for secret in &secrets {
                assert!(
                    !line.contains(secret),
                    "a log line carries {secret}: {line}"
                );
            }
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            assert!(entry["level"].is_string(), "{line}");
            assert!(entry["target"].is_string(), "{line}");
            assert!(entry["fields"].is_object(), "{line}");
        }
        // The test saw what it drove: debug lines, spans as their context, refusals.
        for expected in [
            "connection refused: bad token",
            "\"name\":\"socketio.connect\"",
            "\"name\":\"subscribe\"",
            "\"name\":\"ws.connect\"",
            "not a broadcast envelope",
        ] {
            assert!(
                logs.contains(expected),
                "no {expected} in the logs:\n{logs}"
            );
        }
    }
}
