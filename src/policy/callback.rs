//! `allow = "callback"`: ask the application, the way Laravel Echo's own server does.
//!
//! A `POST` of `{"channel_name", "socket_id"}` to the rule's URL, carrying the headers the
//! client put in the subscribe payload's `auth.headers` (Echo sends its `Authorization` and
//! `X-CSRF-TOKEN` there). 2xx allows, 4xx refuses, anything else (5xx, a redirect, a timeout,
//! no connection) means the application cannot answer, which is never an allow.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::{Grant, Request};
use crate::channel::{self, Kind, Refusal};

/// Request headers from the client forwarded to the application: the credentials Laravel Echo
/// and the usual session set-ups send. Anything else (`X-Forwarded-For`, `X-Real-IP`, `Host`,
/// hop-by-hop headers…) is dropped, so a client cannot tell the application who it is
/// connecting from; an operator adds more with `SWITCHBOARD_AUTH_FORWARD_HEADERS`.
pub const FORWARDED: [&str; 5] = [
    "authorization",
    "cookie",
    "x-csrf-token",
    "x-xsrf-token",
    "x-requested-with",
];

/// Most bytes of an answer read; `channel_data` is small, an HTML error page need not be read.
const BODY_LIMIT: usize = 64 * 1024;

/// The HTTP client of `callback` rules: one per node, so connections are pooled and kept alive.
pub struct Callback {
    client: reqwest::Client,
    timeout: Duration,
    /// Headers forwarded beside [`FORWARDED`].
    extra: Vec<HeaderName>,
}

impl Callback {
    /// A client whose every request, connect to last body byte, takes at most `timeout`, and
    /// that forwards the `extra` headers beside [`FORWARDED`].
    pub fn new(timeout: Duration, extra: Vec<HeaderName>) -> Result<Self, String> {
        let client = crate::http_client::build("callback rules", timeout)?;
        Ok(Self {
            client,
            timeout,
            extra,
        })
    }

    /// Asks `url` whether the request's user may join its channel.
    pub async fn ask(
        &self,
        url: &reqwest::Url,
        request: &Request<'_>,
        label: &str,
    ) -> Result<Grant, Refusal> {
        let channel = request.channel;
        let sent = self
            .client
            .post(url.clone())
            .timeout(self.timeout)
            .headers(forwarded_headers(request.auth, &self.extra))
            .json(&json!({"channel_name": channel, "socket_id": request.socket_id}))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Err(unavailable(e, label, channel)),
        };
        let status = response.status();
        // Read the answer even when only the status matters, so the connection goes back to the pool.
        let body = read_body(response).await;
        if status.is_client_error() {
            return Err(Refusal::Forbidden);
        }
        if !status.is_success() {
            tracing::warn!(
                rule = label,
                channel,
                status = status.as_u16(),
                "auth callback did not answer 2xx or 4xx"
            );
            return Err(Refusal::Unavailable(format!(
                "auth callback answered {}",
                status.as_u16()
            )));
        }
        if channel::kind(channel) != Kind::Presence {
            return Ok(Grant::default());
        }
        match body {
            Ok(body) => Ok(Grant {
                member: body.as_deref().and_then(member),
            }),
            Err(e) => Err(unavailable(e, label, channel)),
        }
    }
}

/// The client's `auth.headers` named in [`FORWARDED`] or `extra`, string values only; we ask
/// for JSON (unless the operator let the client choose `Accept`).
pub fn forwarded_headers(auth: Option<&Value>, extra: &[HeaderName]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let given = auth
        .and_then(|auth| auth.get("headers"))
        .and_then(Value::as_object);
    for (name, value) in given.into_iter().flatten() {
        let (Some(value), Ok(name)) = (value.as_str(), HeaderName::from_bytes(name.as_bytes()))
        else {
            continue;
        };
        if !FORWARDED.contains(&name.as_str()) && !extra.contains(&name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers
        .entry(ACCEPT)
        .or_insert(HeaderValue::from_static("application/json"));
    headers
}

/// The presence member in an answer: its `channel_data`, an object or (as Pusher-style
/// back-ends send it) a JSON string of one, with a `user_id`. `None` when there is none.
pub fn member(body: &[u8]) -> Option<Value> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let data = match answer.get("channel_data")? {
        Value::String(text) => serde_json::from_str(text).ok()?,
        object @ Value::Object(_) => object.clone(),
        _ => return None,
    };
    let user_id = data
        .get("user_id")
        .filter(|id| id.is_string() || id.is_number())?;
    let user_info = data.get("user_info").cloned().unwrap_or_else(|| json!({}));
    Some(json!({"user_id": user_id, "user_info": user_info}))
}

/// The body, or `None` past [`BODY_LIMIT`].
async fn read_body(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > BODY_LIMIT {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A failed exchange as the client sees it; the log gets the cause (never the headers, nor
/// the URL, which may carry credentials: the rule's label says which one it was).
fn unavailable(error: reqwest::Error, label: &str, channel: &str) -> Refusal {
    let error = error.without_url();
    let what = if error.is_timeout() {
        "auth callback timed out"
    } else if error.is_connect() {
        "auth callback unreachable"
    } else {
        "auth callback failed"
    };
    let mut cause = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        cause = format!("{cause}: {e}");
        source = e.source();
    }
    tracing::warn!(rule = label, channel, error = %cause, "{what}");
    Refusal::Unavailable(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_allowed_string_headers_only() {
        let auth = json!({"headers": {
            "Authorization": "Bearer abc",
            "X-CSRF-TOKEN": "t",
            "X-XSRF-TOKEN": "x",
            "Cookie": "laravel_session=s",
            "X-Requested-With": "XMLHttpRequest",
            "X-Forwarded-For": "10.0.0.1",
            "X-Real-IP": "10.0.0.1",
            "Forwarded": "for=10.0.0.1",
            "X-Tenant": "acme",
            "Host": "evil",
            "Content-Length": "5",
            "Content-Type": "text/plain",
            "Connection": "close",
            "Transfer-Encoding": "chunked",
            "Upgrade": "websocket",
            "X-Number": 5,
            "X-Bad": "a\nb",
            "bad name": "x",
        }});
        let names = |extra: &[HeaderName]| {
            let headers = forwarded_headers(Some(&auth), extra);
            let mut names: Vec<_> = headers.keys().map(|n| n.to_string()).collect();
            names.sort_unstable();
            names
        };
        assert_eq!(
            names(&[]),
            [
                "accept",
                "authorization",
                "cookie",
                "x-csrf-token",
                "x-requested-with",
                "x-xsrf-token"
            ]
        );
        let headers = forwarded_headers(Some(&auth), &[]);
        assert_eq!(headers["authorization"], "Bearer abc");
        assert_eq!(headers["accept"], "application/json");
        // The operator's additions, and only those.
        let tenant = HeaderName::from_static("x-tenant");
        assert!(names(std::slice::from_ref(&tenant)).contains(&"x-tenant".to_owned()));
        assert!(!names(&[tenant]).contains(&"x-forwarded-for".to_owned()));

        let chosen = json!({"headers": {"Accept": "text/plain"}});
        assert_eq!(
            forwarded_headers(Some(&chosen), &[])["accept"],
            "application/json"
        );
        assert_eq!(
            forwarded_headers(Some(&chosen), &[ACCEPT])["accept"],
            "text/plain"
        );
        assert_eq!(forwarded_headers(None, &[]).len(), 1);
        assert_eq!(
            forwarded_headers(Some(&json!({"headers": "x"})), &[]).len(),
            1
        );
    }

    #[test]
    fn channel_data_as_object_or_string() {
        let expected = json!({"user_id": 7, "user_info": {"name": "Ann"}});
        let object =
            json!({"channel_data": {"user_id": 7, "user_info": {"name": "Ann"}, "extra": 1}});
        assert_eq!(
            member(object.to_string().as_bytes()),
            Some(expected.clone())
        );
        let string = json!({"channel_data": "{\"user_id\":7,\"user_info\":{\"name\":\"Ann\"}}"});
        assert_eq!(member(string.to_string().as_bytes()), Some(expected));
        let no_info = json!({"channel_data": {"user_id": "u-1"}});
        assert_eq!(
            member(no_info.to_string().as_bytes()),
            Some(json!({"user_id": "u-1", "user_info": {}}))
        );
    }

    #[test]
    fn missing_channel_data_is_none() {
        for body in [
            "",
            "OK",
            "{}",
            "{\"auth\":\"x\"}",
            "{\"channel_data\":5}",
            "{\"channel_data\":\"not json\"}",
            "{\"channel_data\":{\"user_info\":{}}}",
            "{\"channel_data\":{\"user_id\":null}}",
        ] {
            assert_eq!(member(body.as_bytes()), None, "{body}");
        }
    }
}
