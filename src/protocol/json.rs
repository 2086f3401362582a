//! The plain WebSocket protocol: one JSON object per text frame, `{"type", "payload"}`, with
//! `channel` where it applies and the client's `ref` echoed on answers.
//!
//! Pure encoding and decoding; what the frames do is in `crate::ws`.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A stable error code, sent in `ERROR` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not JSON.
    InvalidJson,
    /// The frame is JSON but not `{"type": …}`.
    InvalidFrame,
    /// The type is not one this server knows.
    UnknownType,
    /// A field the type needs is missing or has the wrong type.
    MissingField,
    /// The frame is larger than the configured limit.
    FrameTooLarge,
    /// Too many frames too fast.
    RateLimited,
    /// The channel name is not acceptable.
    InvalidChannel,
    /// The user may not join the channel (or send there).
    Forbidden,
    /// The socket is at its subscription limit.
    SubscriptionLimit,
    /// A service the answer needs is down; try again.
    Unavailable,
    /// The socket has not joined that channel.
    NotSubscribed,
    /// The back-end answered a forwarded event with an error, or not at all.
    BackendError,
    /// The socket's token expired; the socket closes right after.
    TokenExpired,
    /// An `AUTH_REFRESH` token that does not verify or is another user's.
    InvalidToken,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "INVALID_JSON",
            Self::InvalidFrame => "INVALID_FRAME",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::MissingField => "MISSING_FIELD",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::InvalidChannel => "INVALID_CHANNEL",
            Self::Forbidden => "FORBIDDEN",
            Self::SubscriptionLimit => "SUBSCRIPTION_LIMIT",
            Self::Unavailable => "UNAVAILABLE",
            Self::NotSubscribed => "NOT_SUBSCRIBED",
            Self::BackendError => "BACKEND_ERROR",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::InvalidToken => "INVALID_TOKEN",
        }
    }
}

/// A frame from a client, borrowed from its text.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    /// What the frame asks.
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// Its arguments.
    #[serde(borrow, default)]
    pub payload: Option<&'a RawValue>,
    /// An id the client picks, echoed on the answer.
    #[serde(borrow, default, rename = "ref")]
    pub reference: Option<&'a RawValue>,
}

/// A frame that could not be read, with the error to answer.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The stable code.
    pub code: ErrorCode,
    /// What is wrong, for humans.
    pub message: String,
}

/// Reads a client frame.
pub fn decode(text: &str) -> Result<Incoming<'_>, DecodeError> {
    let value: &RawValue = serde_json::from_str(text).map_err(|e| DecodeError {
        code: ErrorCode::InvalidJson,
        message: format!("not JSON: {e}"),
    })?;
    serde_json::from_str(value.get()).map_err(|e| DecodeError {
        code: ErrorCode::InvalidFrame,
        message: format!("expected {{\"type\": string, \"payload\"?, \"ref\"?}}: {e}"),
    })
}

/// `{"type":T,"channel":C,"payload":P,"ref":R}`, leaving out absent parts.
pub fn write_frame(
    out: &mut String,
    kind: &str,
    channel: Option<&str>,
    payload: &RawValue,
    reference: Option<&RawValue>,
) {
    out.push_str("{\"type\":");
    super::write_json_str(out, kind);
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        super::write_json_str(out, channel);
    }
    out.push_str(",\"payload\":");
    out.push_str(payload.get());
    if let Some(reference) = reference {
        out.push_str(",\"ref\":");
        out.push_str(reference.get());
    }
    out.push('}');
}

/// An `ERROR` frame.
pub fn write_error(out: &mut String, code: ErrorCode, message: &str, reference: Option<&RawValue>) {
    out.push_str("{\"type\":\"ERROR\",\"payload\":{\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"message\":");
    super::write_json_str(out, message);
    if let Some(reference) = reference {
        out.push_str(",\"ref\":");
        out.push_str(reference.get());
    }
    out.push_str("}}");
}

/// The id in a `room:{id}` or `group:{id}` channel, else the whole name.
fn room_id(channel: &str) -> &str {
    channel
        .strip_prefix("room:")
        .or_else(|| channel.strip_prefix("group:"))
        .unwrap_or(channel)
}

/// A presence member `{user_id, user_info}` as this protocol shows it:
/// `{userId, userName, userImage?}`.
pub fn member_summary(member: &RawValue) -> Value {
    let member: Value = serde_json::from_str(member.get()).unwrap_or(Value::Null);
    let info = &member["user_info"];
    let mut summary = Map::new();
    summary.insert("userId".into(), member["user_id"].clone());
    summary.insert("userName".into(), info["name"].clone());
    // `picture` is the OpenID Connect claim a token carries the user's image in.
    if let Some(image) = ["image", "avatar", "userImage", "picture"]
        .iter()
        .map(|key| &info[*key])
        .find(|v| !v.is_null())
    {
        summary.insert("userImage".into(), image.clone());
    }
    Value::Object(summary)
}

/// A broadcast as this protocol shows it: `{"type": event, "channel", "payload": data}`, except
/// presence changes, which become `USER_JOINED {userId, userName, userImage?, roomId}` and
/// `USER_LEFT {userId, roomId}` (`groupId` instead of `roomId` for a `group:` channel).
pub fn write_broadcast(out: &mut String, event: &str, channel: &str, data: &RawValue) {
    let presence = match event {
        "presence:joining" => Some("USER_JOINED"),
        "presence:leaving" => Some("USER_LEFT"),
        _ => None,
    };
    let Some(kind) = presence else {
        return write_frame(out, event, Some(channel), data, None);
    };
    let mut payload = match member_summary(data) {
        Value::Object(summary) if kind == "USER_JOINED" => summary,
        Value::Object(mut summary) => {
            summary.retain(|key, _| key == "userId");
            summary
        }
        _ => Map::new(),
    };
    let key = if channel.starts_with("group:") {
        "groupId"
    } else {
        "roomId"
    };
    payload.insert(key.into(), Value::from(room_id(channel)));
    let _ = write!(out, "{{\"type\":\"{kind}\",\"channel\":");
    super::write_json_str(out, channel);
    out.push_str(",\"payload\":");
    out.push_str(&Value::Object(payload).to_string());
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("json")
    }

    #[test]
    fn decodes_frames() {
        let frame = decode(r#"{"type":"SUBSCRIBE","payload":{"channel":"room:1"},"ref":7}"#)
            .expect("frame");
        assert_eq!(frame.kind, "SUBSCRIBE");
        assert_eq!(
            frame.payload.map(RawValue::get),
            Some(r#"{"channel":"room:1"}"#)
        );
        assert_eq!(frame.reference.map(RawValue::get), Some("7"));
        let ping = decode(r#"{"type":"PING"}"#).expect("ping");
        assert!(ping.payload.is_none() && ping.reference.is_none());
        let escaped = decode(r#"{"type":"A\"B"}"#).expect("escaped");
        assert_eq!(escaped.kind, "A\"B");
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        assert_eq!(decode("{nope").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(decode("").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(decode("[1,2]").unwrap_err().code, ErrorCode::InvalidFrame);
        assert_eq!(
            decode(r#"{"payload":1}"#).unwrap_err().code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            decode(r#"{"type":5}"#).unwrap_err().code,
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn writes_frames() {
        let mut out = String::new();
        write_frame(&mut out, "PONG", None, &raw("{}"), None);
        assert_eq!(out, r#"{"type":"PONG","payload":{}}"#);
        out.clear();
        write_frame(
            &mut out,
            "SUBSCRIBED",
            Some("room:\"1\""),
            &raw(r#"{"channel":"room:1"}"#),
            Some(&raw(r#""a""#)),
        );
        assert_eq!(
            out,
            r#"{"type":"SUBSCRIBED","channel":"room:\"1\"","payload":{"channel":"room:1"},"ref":"a"}"#
        );
        out.clear();
        write_error(
            &mut out,
            ErrorCode::UnknownType,
            "unknown type `X\"`",
            Some(&raw("3")),
        );
        assert_eq!(
            out,
            r#"{"type":"ERROR","payload":{"code":"UNKNOWN_TYPE","message":"unknown type `X\"`","ref":3}}"#
        );
    }

    #[test]
    fn broadcasts_and_presence_changes() {
        let mut out = String::new();
        write_broadcast(&mut out, "CHAT_MESSAGE", "room:9", &raw(r#"{"id":1}"#));
        assert_eq!(
            out,
            r#"{"type":"CHAT_MESSAGE","channel":"room:9","payload":{"id":1}}"#
        );
        out.clear();
        let member = raw(r#"{"user_id":"7","user_info":{"name":"Ann","avatar":"a.png"}}"#);
        write_broadcast(&mut out, "presence:joining", "room:9", &member);
        assert_eq!(
            out,
            r#"{"type":"USER_JOINED","channel":"room:9","payload":{"roomId":"9","userId":"7","userImage":"a.png","userName":"Ann"}}"#
        );
        out.clear();
        let pictured = raw(r#"{"user_id":"8","user_info":{"name":"Bo","picture":"b.png"}}"#);
        write_broadcast(&mut out, "presence:joining", "group:4", &pictured);
        assert_eq!(
            out,
            r#"{"type":"USER_JOINED","channel":"group:4","payload":{"groupId":"4","userId":"8","userImage":"b.png","userName":"Bo"}}"#
        );
        out.clear();
        write_broadcast(&mut out, "presence:leaving", "group:4", &member);
        assert_eq!(
            out,
            r#"{"type":"USER_LEFT","channel":"group:4","payload":{"groupId":"4","userId":"7"}}"#
        );
    }
}
