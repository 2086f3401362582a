//! The HTTP API on the client port: `POST /api/broadcast` for back-ends, and `/health`,
//! `/ready`, `/metrics` for operators (`/metrics` and the verbose health on the admin
//! listener when there is one).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::access::{AdminAccess, ApiKey};
use crate::channel;
use crate::cluster::ClusterError;
use crate::error::ApiError;
use crate::node::Node;
use crate::notifications::NAMESPACE as NOTIFICATIONS;

/// Most channels one broadcast call may name.
const MAX_CHANNELS_PER_CALL: usize = 100;
/// Longest event name accepted.
const MAX_EVENT_LENGTH: usize = 200;

/// Counts API calls by route and status, times them by route, and runs each in a span named
/// like `POST /api/broadcast`.
pub async fn track(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::debug_span!(
        "api.request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = request.method().as_str(),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("{} {route}", request.method()));
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    let metrics = &node.metrics;
    metrics
        .api_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .api_duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Reads a JSON body within the size limit.
fn json_body<'a, T: Deserialize<'a>>(
    node: &Node,
    body: &'a Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let limit = node.config.limits.max_message_size;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is larger than {limit} bytes"),
        )
    };
    let body = match body {
        Ok(body) if body.len() > limit => return Err(too_large()),
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(too_large());
        }
        Err(rejection) if crate::transport::http::is_body_timeout(rejection) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("body not sent within {:?}", node.config.limits.body_timeout),
            ));
        }
        Err(rejection) => return Err(ApiError::bad_request(rejection.body_text())),
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The body of `POST /api/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    socket_id: Option<String>,
    /// When the back-end sent it (Laravel services add one); checked, not used.
    timestamp: Option<serde_json::Value>,
    /// The Socket.IO namespace whose rooms `channel`/`channels` name: `/` (the default) or
    /// `/notifications`.
    namespace: Option<String>,
}

/// The body of `POST /api/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    user_ids: Vec<serde_json::Value>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// When the back-end sent it (Laravel services add one); checked, not used.
    timestamp: Option<serde_json::Value>,
}

/// The body of `POST /api/rooms/{room}/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomBroadcastRequest {
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    except_socket: Option<String>,
    /// When the back-end sent it (Laravel services add one); checked, not used.
    timestamp: Option<serde_json::Value>,
}

/// Most users one push may name.
const MAX_USERS_PER_PUSH: usize = 1000;
/// Most operations in one batch.
const MAX_BATCH: usize = 100;

fn bus_unavailable(e: crate::bus::BusError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "bus_unavailable",
        e.to_string(),
    )
}

/// A back-end's `timestamp`: an ISO 8601 string or a number of (milli)seconds. Only its type is
/// checked; delivery does not depend on the sender's clock.
fn check_timestamp(timestamp: Option<&serde_json::Value>) -> Result<(), ApiError> {
    match timestamp {
        None | Some(serde_json::Value::String(_) | serde_json::Value::Number(_)) => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "`timestamp` must be a string (ISO 8601) or a number",
        )),
    }
}

fn check_event(event: &str) -> Result<(), ApiError> {
    if event.is_empty() || event.len() > MAX_EVENT_LENGTH || event.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`event` must be 1 to {MAX_EVENT_LENGTH} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_channel(node: &Node, name: &str) -> Result<(), ApiError> {
    channel::validate(name, node.config.limits.max_channel_length)
        .map_err(|e| ApiError::bad_request(format!("channel `{name}`: {e}")))
}

/// A successful answer of an operation: its status and body.
type Done = (StatusCode, serde_json::Value);

async fn do_broadcast(node: &Node, request: BroadcastRequest) -> Result<Done, ApiError> {
    let channels = match (request.channel, request.channels) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many,
        (None, Some(_)) => return Err(ApiError::bad_request("`channels` is empty")),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give `channel` or `channels`, not both",
            ));
        }
        (None, None) => return Err(ApiError::bad_request("missing `channel` or `channels`")),
    };
    check_timestamp(request.timestamp.as_ref())?;
    if channels.len() > MAX_CHANNELS_PER_CALL {
        return Err(ApiError::bad_request(format!(
            "more than {MAX_CHANNELS_PER_CALL} channels"
        )));
    }
    check_event(&request.event)?;
    let targets = match request.namespace.as_deref() {
        None | Some("/") => {
            for name in &channels {
                check_channel(node, name)?;
            }
            channels
        }
        Some(NOTIFICATIONS) => notifications_rooms(node, &channels, &request.event)?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown `namespace` {other:?}: \"/\" or \"{NOTIFICATIONS}\""
            )));
        }
    };
    let data = request.data.as_deref().unwrap_or(RawValue::NULL);
    let except = request.socket_id.as_deref().filter(|s| !s.is_empty());
    for name in &targets {
        node.publish(name, &request.event, data, except)
            .await
            .map_err(bus_unavailable)?;
    }
    Ok((
        StatusCode::ACCEPTED,
        json!({"status": "accepted", "channels": targets.len()}),
    ))
}

/// The hub channels of `/notifications` rooms a broadcast names. Only the rooms its sockets
/// join are accepted, and not the namespace's own events: stored notifications go through
/// `POST /api/notifications`, which keeps their delivery and unread count right.
fn notifications_rooms(
    node: &Node,
    rooms: &[String],
    event: &str,
) -> Result<Vec<String>, ApiError> {
    if node.notifications.is_none() {
        return Err(notifications_disabled());
    }
    if crate::notifications::is_own_event(event) {
        return Err(ApiError::bad_request(format!(
            "`{event}` is an event of {NOTIFICATIONS} itself; send stored notifications with POST /api/notifications"
        )));
    }
    rooms
        .iter()
        .map(|name| {
            crate::notifications::api_room(name, node.config.limits.max_channel_length)
                .map_err(|e| ApiError::bad_request(format!("channel `{name}`: {e}")))
        })
        .collect()
}

async fn do_push(node: &Node, request: PushRequest) -> Result<Done, ApiError> {
    check_event(&request.event)?;
    check_timestamp(request.timestamp.as_ref())?;
    if request.user_ids.is_empty() || request.user_ids.len() > MAX_USERS_PER_PUSH {
        return Err(ApiError::bad_request(format!(
            "`user_ids` must name 1 to {MAX_USERS_PER_PUSH} users"
        )));
    }
    let users = request
        .user_ids
        .iter()
        .map(|id| {
            crate::protocol::id_text(id).ok_or_else(|| {
                ApiError::bad_request(format!("user id {id} is not a string or number"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = request.data.as_deref().unwrap_or(RawValue::NULL);
    // Every id checked before anything is sent, so a bad one sends nothing.
    let channels = users
        .iter()
        .map(|user| {
            let own = channel::user_channel(user);
            check_channel(node, &own).map(|()| own)
        })
        .collect::<Result<Vec<_>, _>>()?;
    futures_util::future::try_join_all(
        channels
            .iter()
            .map(|own| node.publish(own, &request.event, data, None)),
    )
    .await
    .map_err(bus_unavailable)?;
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let online = node.cluster.online(&names).await?;
    Ok((
        StatusCode::OK,
        json!({"users": users.len(), "online": online}),
    ))
}

async fn do_room_broadcast(
    node: &Node,
    room: &str,
    request: RoomBroadcastRequest,
) -> Result<Done, ApiError> {
    check_channel(node, room)?;
    check_event(&request.event)?;
    check_timestamp(request.timestamp.as_ref())?;
    let data = request.data.as_deref().unwrap_or(RawValue::NULL);
    let except = request.except_socket.as_deref().filter(|s| !s.is_empty());
    let recipients = node.cluster.channel(&node.hub, room).await?.subscriptions;
    node.publish(room, &request.event, data, except)
        .await
        .map_err(bus_unavailable)?;
    Ok((
        StatusCode::OK,
        json!({"room": room, "recipients": recipients}),
    ))
}

async fn do_disconnect(node: &Node, user: &str) -> Result<Done, ApiError> {
    check_channel(node, &channel::user_channel(user))?;
    let connections = node.cluster.user_connections(user).await?;
    node.disconnect_user(user).await.map_err(bus_unavailable)?;
    Ok((
        StatusCode::OK,
        json!({"user_id": user, "connections": connections}),
    ))
}

fn respond(done: Done) -> Response {
    (done.0, Json(done.1)).into_response()
}

/// `POST /api/broadcast`: publishes an event to channels on every node.
pub async fn broadcast(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(&node, &body)?;
    do_broadcast(&node, request).await.map(respond)
}

/// `POST /api/push`: an event to every socket of some users, on every node.
pub async fn push(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(&node, &body)?;
    do_push(&node, request).await.map(respond)
}

/// `POST /api/rooms/{room}/broadcast`: an event to a channel, answering how many sockets
/// across the cluster are subscribed to it.
pub async fn room_broadcast(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(&node, &body)?;
    do_room_broadcast(&node, &room, request).await.map(respond)
}

/// `POST /api/users/{id}/channels/{channel}`: adds every socket of the user to the channel, on
/// every node, without asking the channel's policy (the back-end is trusted).
pub async fn subscribe_user(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path((user, channel)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    user_channel_command(&node, &user, &channel, true)
        .await
        .map(respond)
}

/// `DELETE /api/users/{id}/channels/{channel}`: removes every socket of the user from the
/// channel, on every node.
pub async fn unsubscribe_user(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path((user, channel)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    user_channel_command(&node, &user, &channel, false)
        .await
        .map(respond)
}

async fn user_channel_command(
    node: &Node,
    user: &str,
    channel: &str,
    subscribe: bool,
) -> Result<Done, ApiError> {
    check_channel(node, &channel::user_channel(user))?;
    check_channel(node, channel)?;
    let connections = node.cluster.user_connections(user).await?;
    node.subscribe_user(user, channel, subscribe)
        .await
        .map_err(bus_unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        json!({"user_id": user, "channel": channel, "subscribed": subscribe, "connections": connections}),
    ))
}

/// `POST /api/channels/{channel}/members/{id}`: makes the user a member of a room or group
/// (its member set and the user's index) and puts the user's sockets in it on every node.
pub async fn add_member(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path((channel, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    membership(&node, &channel, &user, true).await.map(respond)
}

/// `DELETE /api/channels/{channel}/members/{id}`: removes the user from a room or group and
/// takes the user's sockets out of it on every node, at once.
pub async fn remove_member(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path((channel, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    membership(&node, &channel, &user, false).await.map(respond)
}

async fn membership(
    node: &Node,
    channel: &str,
    user: &str,
    member: bool,
) -> Result<Done, ApiError> {
    check_channel(node, &channel::user_channel(user))?;
    check_channel(node, channel)?;
    if !crate::members::is_membership_channel(channel) {
        return Err(ApiError::bad_request(format!(
            "channel `{channel}`: members are kept for room:{{id}} and group:{{id}} only"
        )));
    }
    let changed = if member {
        node.memberships.add(channel, user).await
    } else {
        node.memberships.remove(channel, user).await
    };
    changed.map_err(|e| match e {
        crate::members::MembershipError::Disabled => ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "memberships_disabled",
            e.to_string(),
        ),
        crate::members::MembershipError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memberships_unavailable",
            e.to_string(),
        ),
    })?;
    node.subscribe_user(user, channel, member)
        .await
        .map_err(bus_unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        json!({"channel": channel, "user_id": user, "member": member}),
    ))
}

/// `POST /api/users/{id}/disconnect`: closes that user's sockets on every node.
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    do_disconnect(&node, &user).await.map(respond)
}

/// One operation of a batch: `{"op": "broadcast" | "push" | "room_broadcast" | "disconnect",
/// …}`, the other fields being that operation's body (plus `room` / `user_id`).
async fn batch_item(node: &Node, item: &RawValue) -> Result<Done, ApiError> {
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(item.get())
            .map_err(|e| ApiError::bad_request(format!("an operation must be an object: {e}")))?;
    let op = fields.remove("op");
    let mut take = |name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| ApiError::bad_request(format!("missing `{name}`")))
    };
    let room = match op.as_ref().and_then(|op| op.as_str()) {
        Some("room_broadcast") => Some(take("room")?),
        _ => None,
    };
    let user = match op.as_ref().and_then(|op| op.as_str()) {
        Some("disconnect") => Some(take("user_id")?),
        _ => None,
    };
    // Re-read the rest as text so `data` keeps its exact JSON.
    let rest = serde_json::Value::Object(fields).to_string();
    let body = |e: serde_json::Error| ApiError::bad_request(format!("invalid operation: {e}"));
    match (op.as_ref().and_then(|op| op.as_str()), room, user) {
        (Some("broadcast"), ..) => {
            do_broadcast(node, serde_json::from_str(&rest).map_err(body)?).await
        }
        (Some("push"), ..) => do_push(node, serde_json::from_str(&rest).map_err(body)?).await,
        (Some("room_broadcast"), Some(room), _) => {
            let room = room
                .as_str()
                .ok_or_else(|| ApiError::bad_request("`room` must be a string"))?
                .to_owned();
            do_room_broadcast(node, &room, serde_json::from_str(&rest).map_err(body)?).await
        }
        (Some("disconnect"), _, Some(user)) if rest == "{}" => {
            match crate::protocol::id_text(&user) {
                Some(user) => do_disconnect(node, &user).await,
                None => Err(ApiError::bad_request(
                    "`user_id` must be a string or number",
                )),
            }
        }
        (Some("disconnect"), ..) => Err(ApiError::bad_request("disconnect takes only `user_id`")),
        _ => Err(ApiError::bad_request(
            "`op` must be broadcast, push, room_broadcast or disconnect",
        )),
    }
}

/// The body of `POST /api/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    batch: Vec<Box<RawValue>>,
}

/// `POST /api/batch`: up to 100 operations, each answered on its own.
pub async fn batch(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: BatchRequest = json_body(&node, &body)?;
    if request.batch.is_empty() || request.batch.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "`batch` must hold 1 to {MAX_BATCH} operations"
        )));
    }
    let mut results = Vec::with_capacity(request.batch.len());
    for item in &request.batch {
        let outcome = batch_item(&node, item).await;
        results.push(match outcome {
            Ok((status, body)) => json!({"status": status.as_u16(), "body": body}),
            Err(e) => json!({"status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}}),
        });
    }
    Ok(Json(json!({"results": results})).into_response())
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_unavailable",
            e.to_string(),
        )
    }
}

/// `GET /api/users/{id}`: whether a user has a socket on any node, and how many.
pub async fn user(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let connections = node.cluster.user_connections(&id).await?;
    Ok(Json(json!({
        "user_id": id,
        "online": connections > 0,
        "connections": connections,
    })))
}

/// Query of `GET /api/channels`.
#[derive(Debug, Deserialize)]
pub struct ChannelsQuery {
    /// Only channels whose name starts with this (Pusher's `filter_by_prefix`).
    #[serde(alias = "filter_by_prefix")]
    prefix: Option<String>,
}

/// `GET /api/channels`: every channel with subscribers across the cluster.
pub async fn channels(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Query(query): Query<ChannelsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    let channels: serde_json::Map<String, serde_json::Value> = node
        .cluster
        .channels(&node.hub)
        .await?
        .into_iter()
        // The node's own rooms only when the prefix asks for them.
        .filter(|(name, _)| {
            name.starts_with(&prefix)
                && (!channel::is_internal(name) || channel::is_internal(&prefix))
        })
        .map(|(name, count)| (name, json!({"subscription_count": count})))
        .collect();
    Ok(Json(json!({"channels": channels})))
}

/// `GET /api/channels/{name}`: one channel's counts across the cluster.
pub async fn channel_info(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_channel(&node, &name)?;
    let info = node.cluster.channel(&node.hub, &name).await?;
    let mut body = json!({
        "channel": name,
        "occupied": info.subscriptions > 0,
        "subscription_count": info.subscriptions,
    });
    if let Some(users) = info.users {
        body["user_count"] = users.into();
    }
    Ok(Json(body))
}

/// `GET /api/channels/{name}/users`: a presence channel's members.
pub async fn channel_users(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let members = presence_members(&node, &name).await?;
    Ok(Json(json!({"channel": name, "users": members})).into_response())
}

/// The members of presence channel `name` across the cluster; 400 for another kind of channel.
pub(crate) async fn presence_members(
    node: &Node,
    name: &str,
) -> Result<Vec<Box<RawValue>>, ApiError> {
    check_channel(node, name)?;
    if channel::kind(name) != channel::Kind::Presence {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a presence channel"
        )));
    }
    Ok(node.cluster.presence_members(name).await?)
}

/// Query of `GET /health`.
#[derive(Debug, Deserialize)]
pub struct HealthQuery {
    /// `1` asks for this node's connection and pub/sub figures ([`verbose_health`]).
    verbose: Option<String>,
}

impl HealthQuery {
    fn verbose(&self) -> bool {
        matches!(self.verbose.as_deref(), Some("1" | "true"))
    }
}

/// The public answer of `GET /health`: the process is up, and nothing about its clients.
fn minimal_health(node: &Node) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "node_id": node.config.server.node_id}))
}

/// `GET /health` on the client port: the process is up. `?verbose=1` adds the connection
/// and pub/sub figures for an admin key or admin JWT when there is no admin listener; with
/// one (`SWITCHBOARD_ADMIN_LISTEN`) the figures are served only there.
pub async fn health(
    State(node): State<Arc<Node>>,
    Query(query): Query<HealthQuery>,
    parts: Parts,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !query.verbose() || node.config.server.admin_listen.is_some() {
        return Ok(minimal_health(&node));
    }
    AdminAccess::check(&node, &parts).await?;
    Ok(Json(verbose_health(&node)))
}

/// `GET /health` on the admin listener: `?verbose=1` answers the figures without a key
/// (the admin port is reachable only from inside, as `/metrics` is).
pub async fn admin_health(
    State(node): State<Arc<Node>>,
    Query(query): Query<HealthQuery>,
) -> Json<serde_json::Value> {
    if query.verbose() {
        Json(verbose_health(&node))
    } else {
        minimal_health(&node)
    }
}

/// `GET /api/community/ws/health`: the JSON endpoint is up, and when this was answered
/// (ISO 8601, UTC); no counts.
pub async fn ws_health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "timestamp": iso8601(std::time::SystemTime::now())}))
}

/// `2026-12-05T13:42:18.123Z`: a UTC time in RFC 3339 form, to the millisecond.
fn iso8601(time: std::time::SystemTime) -> String {
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (days, ms_of_day) = ((ms / 86_400_000) as i64, (ms % 86_400_000) as u64);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// This node's connections and pub/sub state, for operators.
fn verbose_health(node: &Node) -> serde_json::Value {
    let connections = node.connection_count();
    let users = node.cluster.local_user_count();
    let bus = node.bus.is_healthy();
    let timestamp = crate::cluster::now_ms();
    json!({
        "success": true,
        "data": {
            "websocket": {
                "totalConnections": connections,
                "uniqueUsers": users,
                "averageConnectionsPerUser": if users == 0 { 0.0 } else { connections as f64 / users as f64 },
                "isHealthy": !node.is_draining(),
            },
            "pubsub": {
                "isHealthy": bus,
                "publisherConnected": bus,
                "subscriberConnected": bus,
                "subscribedChannels": node.hub.channel_count(),
                "totalSubscriptions": node.metrics.subscriptions.get(),
            },
            "node_id": node.config.server.node_id,
            "timestamp": timestamp,
        }
    })
}

/// `GET /ready`: the bus is reachable and the node is not draining.
pub async fn ready(State(node): State<Arc<Node>>) -> Response {
    let body = json!({
        "ready": node.is_ready(),
        "bus": if node.bus.is_healthy() { "up" } else { "down" },
        "draining": node.is_draining(),
        "node_id": node.config.server.node_id,
    });
    let status = if node.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.scrape(),
    )
        .into_response()
}

/// Most user ids one `POST /api/notifications` may name.
const MAX_USER_IDS: usize = 1_000;
/// Most recipients one call may reach (after a sector or role is resolved).
const MAX_RECIPIENTS: usize = 10_000;

/// The body of `POST /api/notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationRequest<'a> {
    user_ids: Option<Vec<serde_json::Value>>,
    sector_id: Option<serde_json::Value>,
    role: Option<Roles>,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    message: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// `role` of POST /api/notifications: one role, or several (`["ADMIN", "SUPER_ADMIN"]`, the
/// roles at or above the one meant, as the application lists them).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Roles {
    One(String),
    Many(Vec<String>),
}

impl Roles {
    fn list(&self) -> &[String] {
        match self {
            Roles::One(role) => std::slice::from_ref(role),
            Roles::Many(roles) => roles,
        }
    }
}

/// Roles in one `role` list.
const MAX_ROLES: usize = 20;

/// A user or sector id as JSON: a number or a non-empty string of at most 64 bytes.
fn id_text(value: &serde_json::Value, what: &str) -> Result<String, ApiError> {
    let text = match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_owned(),
        _ => String::new(),
    };
    if text.is_empty() || text.len() > 64 || text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must be a number or a string of 1 to 64 bytes"
        )));
    }
    Ok(text)
}

fn notifications_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "notifications_disabled",
        "notifications need SWITCHBOARD_DATABASE_URL",
    )
}

fn database_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the notification database is unavailable; nothing was stored, try again",
    )
}

/// `POST /api/notifications`: stores a notification for each recipient in one transaction,
/// then delivers it to their devices on every node.
pub async fn notifications(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    use crate::notifications::store::{Created, NewNotification, Target};
    let Some(store) = &node.notifications else {
        return Err(notifications_disabled());
    };
    let request: NotificationRequest<'_> = json_body(&node, &body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.chars().count() <= 191)
                .ok_or_else(|| {
                    ApiError::bad_request("`Idempotency-Key` must be 1 to 191 visible characters")
                })?,
        ),
    };
    let check = |field: &str, value: &str, max: usize| {
        if value.trim().is_empty() || value.chars().count() > max {
            Err(ApiError::bad_request(format!(
                "`{field}` must be 1 to {max} characters"
            )))
        } else {
            Ok(())
        }
    };
    check("type", &request.kind, 64)?;
    check("title", &request.title, 255)?;
    if request.message.len() > 65_535 {
        return Err(ApiError::bad_request(
            "`message` is longer than 65535 bytes",
        ));
    }
    let mut recipients = match (&request.user_ids, &request.sector_id, &request.role) {
        (Some(ids), None, None) => {
            if ids.len() > MAX_USER_IDS {
                return Err(ApiError::bad_request(format!(
                    "more than {MAX_USER_IDS} user_ids"
                )));
            }
            ids.iter()
                .map(|id| id_text(id, "each of `user_ids`"))
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, Some(sector), None) => {
            let sector = id_text(sector, "`sector_id`")?;
            store
                .recipients(Target::Sector(&sector))
                .await
                .map_err(|_| database_unavailable())?
        }
        (None, None, Some(roles)) => {
            let roles = roles.list();
            if roles.is_empty() || roles.len() > MAX_ROLES {
                return Err(ApiError::bad_request(format!(
                    "`role` must be a role or a list of 1 to {MAX_ROLES} roles"
                )));
            }
            for role in roles {
                check("role", role, 64)?;
            }
            let roles: Vec<String> = roles.iter().map(|r| r.trim().to_owned()).collect();
            store
                .recipients(Target::Roles(&roles))
                .await
                .map_err(|_| database_unavailable())?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `user_ids`, `sector_id` or `role`",
            ));
        }
    };
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|id| seen.insert(id.clone()));
    if recipients.len() > MAX_RECIPIENTS {
        return Err(ApiError::bad_request(format!(
            "{} recipients; at most {MAX_RECIPIENTS} per call",
            recipients.len()
        )));
    }
    let new = NewNotification {
        kind: request.kind.trim(),
        title: &request.title,
        message: &request.message,
        data: request.data,
    };
    let created = match store
        .create(&recipients, &new, key)
        .await
        .map_err(|_| database_unavailable())?
    {
        Created::New(created) => created,
        Created::Repeated(pairs) => {
            // Stored and announced by the first call; recipients who missed it get it on connect.
            let ids: Vec<u64> = pairs.iter().map(|(id, _)| *id).collect();
            let notifications: Vec<serde_json::Value> = pairs
                .iter()
                .map(|(id, user)| json!({"id": id, "user_id": user}))
                .collect();
            return Ok(Json(json!({"ids": ids, "recipients": pairs.len(),
                "notifications": notifications, "repeated": true}))
            .into_response());
        }
    };

    // Stored: from here on a failure only delays delivery to the recipient's next connect.
    let users: Vec<&str> = created.iter().map(|n| n.user_id.as_str()).collect();
    let counts: Option<std::collections::HashMap<String, u64>> =
        match store.unread_counts(&users).await {
            Ok(counts) => Some(counts.into_iter().collect()),
            Err(_) => None,
        };
    for notification in &created {
        let unread = counts
            .as_ref()
            .map(|c| c.get(&notification.user_id).copied().unwrap_or_default());
        crate::notifications::publish_new(&node, notification, unread).await;
    }
    let ids: Vec<u64> = created.iter().map(|n| n.id).collect();
    let notifications: Vec<serde_json::Value> = created
        .iter()
        .map(|n| json!({"id": n.id, "user_id": n.user_id}))
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({"ids": ids, "recipients": created.len(), "notifications": notifications})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::iso8601;

    #[test]
    fn iso8601_in_utc_to_the_millisecond() {
        let at = |ms: u64| iso8601(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d @1795312345.678 +%FT%T.%3NZ`
        assert_eq!(at(1_795_312_345_678), "2026-11-22T01:52:25.678Z");
        // A leap day, and the last millisecond of a leap year.
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
    }
}
