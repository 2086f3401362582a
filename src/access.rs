//! Who may call the HTTP API and the admin endpoints: the [`ApiKey`] and [`AdminAccess`]
//! extractors, and the throttle on wrong credentials per client address they share.
//!
//! A handler that takes one of them runs only for an authorized caller, and since these
//! extractors read only the request's head, no body is read for anyone else. After
//! [`FAILED_ATTEMPTS`](crate::limit::FAILED_ATTEMPTS)' burst of wrong keys or tokens, an address gets 429 with
//! `Retry-After`, without its credential even being compared, until its budget refills.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use crate::auth::{bearer, find_key};
use crate::error::ApiError;
use crate::metrics::Limit;
use crate::node::Node;

/// A caller of the HTTP API with a valid API key, within that key's rate.
#[derive(Debug, Clone, Copy)]
pub struct ApiKey;

/// A caller of the admin endpoints: an admin key, or the JWT of a user with an admin role.
#[derive(Debug, Clone, Copy)]
pub struct AdminAccess;

/// Which credential an endpoint wants.
#[derive(Debug, Clone, Copy)]
enum Realm {
    Api,
    Admin,
}

impl Realm {
    /// The `reason` label of `switchboard_auth_failures_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Api => "api_key",
            Self::Admin => "admin",
        }
    }

    fn missing(self) -> &'static str {
        match self {
            Self::Api => "missing Authorization: Bearer <api key>",
            Self::Admin => "missing Authorization: Bearer <admin key or admin JWT>",
        }
    }
}

/// What a presented credential turned out to be.
enum Verdict<T> {
    /// Let in.
    Valid(T),
    /// A genuine credential without the right (a user's JWT without an admin role): refused,
    /// but not a guess, so not counted against the address.
    Insufficient(&'static str),
    /// Not a credential we know: refused and counted against the address.
    Wrong(&'static str),
}

/// The client's address as the rate limits see it (trusted proxies' forwarding headers
/// believed); requests that did not come through the node's listener (in-process tests)
/// share one bucket.
fn client_address(node: &Node, parts: &Parts) -> IpAddr {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => node.client_key(*peer, &parts.headers),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// The bearer credential of a request from an address that has failed attempts left.
fn presented<'p>(node: &Node, parts: &'p Parts, realm: Realm) -> Result<&'p str, ApiError> {
    let address = client_address(node, parts);
    if let Some(wait) = node.failed_auth.wait(&address) {
        node.metrics.rate_limited(Limit::FailedAuth);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many wrong keys or tokens from this address, try again later",
        )
        .retry_after(wait));
    }
    // A missing credential guesses nothing, so it costs the address nothing.
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| unauthorized(node, realm, realm.missing()))
}

/// Counts a refusal and builds its 401.
fn unauthorized(node: &Node, realm: Realm, message: &str) -> ApiError {
    node.metrics
        .auth_failures
        .with_label_values(&[realm.label()])
        .inc();
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Turns a verdict into the extractor's answer; a wrong credential costs the address one try.
fn judge<T>(node: &Node, parts: &Parts, realm: Realm, verdict: Verdict<T>) -> Result<T, ApiError> {
    match verdict {
        Verdict::Valid(value) => Ok(value),
        Verdict::Insufficient(message) => Err(unauthorized(node, realm, message)),
        Verdict::Wrong(message) => {
            node.failed_auth.take(&client_address(node, parts));
            Err(unauthorized(node, realm, message))
        }
    }
}

impl ApiKey {
    /// Checks the request's API key and its rate.
    pub fn check(node: &Node, parts: &Parts) -> Result<Self, ApiError> {
        let given = presented(node, parts, Realm::Api)?;
        let verdict = match find_key(&node.config.auth.api_keys, given) {
            Some(key) => Verdict::Valid(key),
            None => Verdict::Wrong("invalid API key"),
        };
        let key = judge(node, parts, Realm::Api, verdict)?;
        if node.api_limits.take(key.as_str()) {
            return Ok(Self);
        }
        node.metrics.rate_limited(Limit::ApiKey);
        let error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many API calls with this key, slow down",
        );
        Err(match node.api_limits.wait(key.as_str()) {
            Some(wait) => error.retry_after(wait),
            None => error,
        })
    }
}

impl AdminAccess {
    /// Checks the request's admin key or admin JWT.
    pub async fn check(node: &Node, parts: &Parts) -> Result<Self, ApiError> {
        let given = presented(node, parts, Realm::Admin)?;
        let verdict = if find_key(&node.config.auth.admin_keys, given).is_some() {
            Verdict::Valid(Self)
        } else {
            match node.jwt.verify(given).await {
                Ok(principal)
                    if principal
                        .role
                        .as_deref()
                        .is_some_and(|role| node.config.notifications.is_admin(role)) =>
                {
                    Verdict::Valid(Self)
                }
                Ok(_) => Verdict::Insufficient("this token's role is not an admin role"),
                Err(_) => Verdict::Wrong("invalid admin key or token"),
            }
        };
        judge(node, parts, Realm::Admin, verdict)
    }
}

impl<S> FromRequestParts<S> for ApiKey
where
    Arc<Node>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Self::check(&Arc::<Node>::from_ref(state), parts)
    }
}

impl<S> FromRequestParts<S> for AdminAccess
where
    Arc<Node>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Self::check(&Arc::<Node>::from_ref(state), parts).await
    }
}
