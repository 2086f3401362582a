//! The HTTP side of Engine.IO: the routes of its path, the query they read, CORS, and the
//! `{"code": N, "message": ...}` answers to requests it refuses.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::Deserialize;

use super::{Engine, Handler, Opening};
use crate::protocol::engineio::ErrorCode;
use crate::transport::origin_allowed;
use crate::transport::websocket::{NotAnUpgrade, Upgrade};

/// The routes of an Engine.IO path (`/socket.io/`, `/engine.io/`): GET (handshake, poll,
/// websocket), POST (packets from a polling client), the CORS preflight, and Engine.IO's own
/// error for any other method.
pub fn routes<H: Handler, S: Clone + Send + Sync + 'static>(
    engine: Arc<Engine<H>>,
) -> MethodRouter<S> {
    axum::routing::get(get::<H>)
        .post(post::<H>)
        .options(preflight::<H>)
        .fallback(unsupported_method::<H>)
        .with_state(engine)
}

/// The query string of an Engine.IO request.
#[derive(Debug, Deserialize)]
pub(super) struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    pub(super) sid: Option<String>,
}

/// An Engine.IO error answer: `{"code": N, "message": ...}`.
pub(super) struct EngineError {
    status: StatusCode,
    code: ErrorCode,
    message: Option<String>,
}

impl EngineError {
    pub(super) fn new(code: ErrorCode) -> Self {
        let status = match code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code,
            message: None,
        }
    }

    pub(super) fn with(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: Some(message.into()),
        }
    }

    fn response(self, cors: &Cors) -> Response {
        let body = serde_json::json!({
            "code": self.code as u8,
            "message": self.message.as_deref().unwrap_or(self.code.message()),
        });
        cors.apply((self.status, axum::Json(body)).into_response())
    }
}

/// The CORS answer for a request's Origin.
enum Cors {
    /// No Origin header (not a browser): no CORS headers needed.
    None,
    /// An origin named in the allowed origins, echoed back with credentials.
    Allow(HeaderValue),
    /// Any origin (none configured, or `*`): `*` and no credentials, so a page on another
    /// site can poll (socket.io-client's default, `withCredentials: false`) but never with
    /// the user's cookies.
    Any,
}

impl Cors {
    fn check<H: Handler>(engine: &Engine<H>, headers: &HeaderMap) -> Result<Self, EngineError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(Self::None);
        };
        let allowed = &engine.settings.allowed_origins;
        if allowed.is_empty() || allowed.contains("*") {
            Ok(Self::Any)
        } else if origin_allowed(allowed, headers, &engine.metrics) {
            Ok(Self::Allow(origin.clone()))
        } else {
            Err(EngineError::with(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "origin not allowed",
            ))
        }
    }

    fn apply(&self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        match self {
            Self::None => {}
            Self::Allow(origin) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
                headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            Self::Any => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
        response
    }
}

/// A `text/plain` answer: an open packet or a polling payload.
pub(super) fn text_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

/// `OPTIONS`: the CORS preflight of browsers' polling requests.
async fn preflight<H: Handler>(
    State(engine): State<Arc<Engine<H>>>,
    headers: HeaderMap,
) -> Response {
    let cors = match Cors::check(&engine, &headers) {
        Ok(cors) => cors,
        Err(e) => return e.response(&Cors::None),
    };
    let mut response = cors.apply(StatusCode::NO_CONTENT.into_response());
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

pub(super) fn check_query(
    query: Result<Query<EngineQuery>, QueryRejection>,
) -> Result<EngineQuery, EngineError> {
    let Query(query) = query.map_err(|_| EngineError::new(ErrorCode::BadRequest))?;
    if query.eio.as_deref() != Some("4") {
        return Err(EngineError::new(ErrorCode::UnsupportedProtocolVersion));
    }
    Ok(query)
}

/// Runs `handle` for a request whose Origin is allowed, adding the CORS headers to its answer.
async fn with_cors<H, F>(engine: &Engine<H>, headers: &HeaderMap, handle: F) -> Response
where
    H: Handler,
    F: Future<Output = Result<Response, EngineError>>,
{
    let cors = match Cors::check(engine, headers) {
        Ok(cors) => cors,
        Err(e) => return e.response(&Cors::None),
    };
    match handle.await {
        Ok(response) => cors.apply(response),
        Err(e) => e.response(&cors),
    }
}

/// `GET`: a handshake, a poll, or a websocket upgrade.
async fn get<H: Handler>(
    State(engine): State<Arc<Engine<H>>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    uri: Uri,
    query: Result<Query<EngineQuery>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<Upgrade, NotAnUpgrade>,
) -> Response {
    let handle = async {
        let query = check_query(query)?;
        let opening = Opening {
            remote,
            headers: &headers,
            uri: &uri,
        };
        match query.transport.as_deref() {
            Some("websocket") => {
                let ws = ws.map_err(|_| {
                    EngineError::with(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        "expected a websocket upgrade",
                    )
                })?;
                engine.websocket(ws, &query, &opening)
            }
            Some("polling") => match &query.sid {
                None => engine.handshake_polling(&opening),
                Some(sid) => engine.poll(sid).await,
            },
            _ => Err(EngineError::new(ErrorCode::UnknownTransport)),
        }
    };
    with_cors(&engine, &headers, handle).await
}

/// `POST`: packets from a polling client.
async fn post<H: Handler>(
    State(engine): State<Arc<Engine<H>>>,
    query: Result<Query<EngineQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let handle = async {
        engine.receive_polling(query, body).await?;
        Ok(([(header::CONTENT_TYPE, "text/html")], "ok").into_response())
    };
    with_cors(&engine, &headers, handle).await
}

/// Any other method: refused with Engine.IO's error body, as its servers do, rather than the
/// router's bare 405.
async fn unsupported_method<H: Handler>(
    State(engine): State<Arc<Engine<H>>>,
    headers: HeaderMap,
) -> Response {
    let refuse = async { Err::<Response, _>(EngineError::new(ErrorCode::BadHandshakeMethod)) };
    with_cors(&engine, &headers, refuse).await
}
