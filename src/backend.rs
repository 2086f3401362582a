//! The back-end bridge: client events Switchboard does not handle itself are forwarded to the
//! application (`POST <backend>/events`), signed, and its JSON answer goes back to the client.
//!
//! The body is `{event, data, userId, socketId, nodeId, ts}`, serialised once; the header
//! `X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of those exact bytes>` is keyed with the
//! shared secret, and `ts` (milliseconds since the epoch, inside the signed bytes) lets the
//! back-end refuse replays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;

/// The signature header on every request Switchboard makes to the application.
pub const SIGNATURE_HEADER: &str = "X-Switchboard-Signature";

/// Why a forwarded event got no answer from the back-end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// `SWITCHBOARD_BACKEND_EVENTS` does not list the event.
    #[error("event `{0}` is not handled")]
    NotAllowed(String),
    /// The socket has as many forwards in flight as allowed.
    #[error("too many events waiting for the back-end, slow down")]
    Busy,
    /// The back-end answered with an error status.
    #[error("back-end answered {0}")]
    Status(u16),
    /// The back-end did not answer in time.
    #[error("back-end timed out")]
    Timeout,
    /// The back-end could not be reached.
    #[error("back-end unreachable")]
    Unreachable,
    /// The back-end's answer is not JSON.
    #[error("back-end answer is not JSON")]
    BadAnswer,
}

/// The forwarding client.
pub struct Backend {
    client: reqwest::Client,
    events_url: reqwest::Url,
    secret: Vec<u8>,
    /// Names or `prefix.*` patterns; empty = every event.
    allowed: Vec<String>,
    timeout: Duration,
    /// Most forwards one socket may have in flight.
    pub max_in_flight: u32,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret; the URL without credentials.
        f.debug_struct("Backend")
            .field("host", &self.events_url.host_str())
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// What is posted for one event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Forwarded<'a> {
    event: &'a str,
    data: &'a RawValue,
    user_id: &'a str,
    socket_id: &'a str,
    node_id: &'a str,
    ts: u64,
}

impl Backend {
    /// A client for the back-end at `base` (`/events` is appended).
    pub fn new(
        base: &str,
        secret: &str,
        allowed: Vec<String>,
        timeout: Duration,
        max_in_flight: u32,
    ) -> Result<Self, String> {
        let base = reqwest::Url::parse(base.trim()).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("must be http:// or https://".into());
        }
        let events_url = base
            .join(&format!("{}/events", base.path().trim_end_matches('/')))
            .map_err(|e| format!("cannot add /events ({e})"))?;
        Ok(Self {
            client: crate::http_client::build("the back-end", timeout)?,
            events_url,
            secret: secret.as_bytes().to_vec(),
            allowed,
            timeout,
            max_in_flight,
        })
    }

    /// Whether an event is forwarded.
    pub fn allows(&self, event: &str) -> bool {
        self.allowed.is_empty()
            || self
                .allowed
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => event.starts_with(prefix),
                    None => pattern == event,
                })
    }

    /// Posts one event and returns the back-end's JSON answer.
    pub async fn forward(
        &self,
        event: &str,
        data: &RawValue,
        user_id: &str,
        socket_id: &str,
        node_id: &str,
    ) -> Result<Box<RawValue>, ForwardError> {
        if !self.allows(event) {
            return Err(ForwardError::NotAllowed(event.to_owned()));
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = serde_json::to_vec(&Forwarded {
            event,
            data,
            user_id,
            socket_id,
            node_id,
            ts,
        })
        .map_err(|_| ForwardError::BadAnswer)?;
        let response = self
            .client
            .post(self.events_url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.secret, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ForwardError::Status(status.as_u16()));
        }
        let bytes = response.bytes().await.map_err(|e| classify(&e))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return RawValue::from_string("null".into()).map_err(|_| ForwardError::BadAnswer);
        }
        serde_json::from_slice::<Box<RawValue>>(&bytes).map_err(|_| ForwardError::BadAnswer)
    }
}

fn classify(error: &reqwest::Error) -> ForwardError {
    if error.is_timeout() {
        ForwardError::Timeout
    } else {
        ForwardError::Unreachable
    }
}

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn event_lists() {
        let backend = |allowed: &[&str]| {
            Backend::new(
                "http://app.internal/hooks/",
                "s",
                allowed.iter().map(|s| (*s).to_owned()).collect(),
                Duration::from_secs(1),
                4,
            )
            .expect("backend")
        };
        let all = backend(&[]);
        assert!(all.allows("anything"));
        assert_eq!(all.events_url.as_str(), "http://app.internal/hooks/events");
        let some = backend(&["chat.*", "order.created"]);
        assert!(some.allows("chat.send") && some.allows("order.created"));
        assert!(!some.allows("order.deleted") && !some.allows("chatter"));
        assert!(Backend::new("ftp://x", "s", vec![], Duration::from_secs(1), 1).is_err());
    }
}
