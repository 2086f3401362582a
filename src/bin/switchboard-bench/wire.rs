//! What each protocol says on the wire, without I/O: the texts a bench client sends, and what
//! the server's texts mean during the handshake and once subscribed. `client.rs` does the I/O,
//! the same for both protocols.
//!
//! - Socket.IO v4: Engine.IO open `0{…}`, CONNECT `40{"token":…}` answered by `40{…}` or the
//!   connect error `44{…}`, `42["subscribe",{channel}]` answered by `42["subscribed",…]` or
//!   `42["subscription_error",…]`; events are `42["event","channel",data]`, pings the text `2`.
//! - JSON (docs/JSON-PROTOCOL.md): the token is in the upgrade URL (refusals are HTTP answers);
//!   `{"type":"SUBSCRIBE","payload":{channel}}` answered by `SUBSCRIBED` or `ERROR`; broadcasts
//!   are `{"type":event,"channel":…,"payload":data}`; pings are websocket frames, which
//!   tungstenite answers by itself.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::cli::Protocol;

/// Engine.IO's ping, sent by the server.
const ENGINEIO_PING: &str = "2";
/// Engine.IO's pong, the client's answer.
pub const ENGINEIO_PONG: &str = "3";

/// The name of the channel with index `channel`.
pub fn channel_name(channel: u32) -> String {
    format!("bench.{channel}")
}

/// Engine.IO's close packet: a client leaving politely, or the server ending the session.
pub const ENGINEIO_CLOSE: &str = "1";
/// The separator of the packets of one Engine.IO polling payload.
pub const PAYLOAD_SEPARATOR: char = '\x1e';

/// What a server text means once the client is subscribed.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// An event for the scenario.
    Event(Event<'a>),
    /// An Engine.IO ping: answer [`ENGINEIO_PONG`].
    Ping,
    /// The server closes the session (Engine.IO close).
    Close,
    /// Nothing for the scenario.
    Other,
}

/// Reads one text message from the server.
pub fn incoming(protocol: Protocol, text: &str) -> Incoming<'_> {
    match protocol {
        Protocol::Socketio => {
            if let Some(args) = text.strip_prefix("42") {
                Incoming::Event(Event::new(protocol, args))
            } else if text == ENGINEIO_PING {
                Incoming::Ping
            } else if text.starts_with('1') {
                Incoming::Close
            } else {
                Incoming::Other
            }
        }
        Protocol::Json => Incoming::Event(Event::new(protocol, text)),
    }
}

/// An event from the server, in the session's protocol: Socket.IO's arguments (the text after
/// `42`) or a whole JSON frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    protocol: Protocol,
    text: &'a str,
}

/// The part of a JSON broadcast frame a client reads.
#[derive(Deserialize)]
struct JsonBroadcast<T> {
    payload: T,
}

impl<'a> Event<'a> {
    /// `text` as `protocol` sends an event (for Socket.IO, without the `42`).
    pub fn new(protocol: Protocol, text: &'a str) -> Self {
        Self { protocol, text }
    }

    /// The data of this event if it is the broadcast `name` (`None` if it is another one), in
    /// one pass over the text.
    pub fn data<T: Deserialize<'a>>(&self, name: &str) -> Option<serde_json::Result<T>> {
        // The server writes the name first: a prefix check skips other events unparsed.
        let (open, close) = match self.protocol {
            Protocol::Socketio => ("[\"", "\","),
            Protocol::Json => ("{\"type\":\"", "\","),
        };
        let rest = self.text.strip_prefix(open)?.strip_prefix(name)?;
        if !rest.starts_with(close) {
            return None;
        }
        Some(match self.protocol {
            Protocol::Socketio => serde_json::from_str::<(IgnoredAny, IgnoredAny, T)>(self.text)
                .map(|(_, _, data)| data),
            Protocol::Json => {
                serde_json::from_str::<JsonBroadcast<T>>(self.text).map(|frame| frame.payload)
            }
        })
    }
}

/// Socket.IO: the CONNECT packet of namespace `/` with the token in its auth object.
pub fn socketio_connect(token: &str) -> String {
    format!(r#"40{{"token":"{token}"}}"#)
}

/// A handshake step's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Refused,
    /// Not the answer (yet): keep reading.
    Other,
}

/// Socket.IO: the answer to CONNECT.
pub fn socketio_connect_answer(text: &str) -> Answer {
    if text.starts_with("40") {
        Answer::Accepted
    } else if text.starts_with("44") {
        Answer::Refused
    } else {
        Answer::Other
    }
}

/// The subscribe request for channel index `channel`.
pub fn subscribe(protocol: Protocol, channel: u32) -> String {
    subscribe_to(protocol, &channel_name(channel))
}

/// The subscribe request for the channel `name` (a name needing no JSON escape).
pub fn subscribe_to(protocol: Protocol, name: &str) -> String {
    match protocol {
        Protocol::Socketio => format!(r#"42["subscribe",{{"channel":"{name}"}}]"#),
        Protocol::Json => format!(r#"{{"type":"SUBSCRIBE","payload":{{"channel":"{name}"}}}}"#),
    }
}

/// The unsubscribe request for the channel `name` (a name needing no JSON escape).
pub fn unsubscribe_from(protocol: Protocol, name: &str) -> String {
    match protocol {
        Protocol::Socketio => format!(r#"42["unsubscribe",{{"channel":"{name}"}}]"#),
        Protocol::Json => {
            format!(r#"{{"type":"UNSUBSCRIBE","payload":{{"channel":"{name}"}}}}"#)
        }
    }
}

/// The payload of Socket.IO's `subscribed` and `subscription_error`.
#[derive(Deserialize)]
struct SocketioReply<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    status: Option<Cow<'a, str>>,
}

/// The head of a JSON frame from the server.
#[derive(Deserialize)]
struct JsonReply<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
}

/// The answer to [`subscribe`] for channel index `channel`, if `text` is it.
pub fn subscribe_answer(protocol: Protocol, text: &str, channel: u32) -> Answer {
    subscribe_answer_for(protocol, text, &channel_name(channel))
}

/// The answer to [`subscribe_to`] for the channel `name`, if `text` is it.
pub fn subscribe_answer_for(protocol: Protocol, text: &str, name: &str) -> Answer {
    match protocol {
        Protocol::Socketio => {
            let Some(args) = text.strip_prefix("42") else {
                return Answer::Other;
            };
            let Ok((event, reply)) = serde_json::from_str::<(Cow<'_, str>, SocketioReply)>(args)
            else {
                return Answer::Other;
            };
            if reply.channel != name {
                return Answer::Other;
            }
            match &*event {
                "subscribed" if reply.status.as_deref() == Some("success") => Answer::Accepted,
                "subscription_error" => Answer::Refused,
                _ => Answer::Other,
            }
        }
        Protocol::Json => {
            let Ok(reply) = serde_json::from_str::<JsonReply>(text) else {
                return Answer::Other;
            };
            match &*reply.kind {
                "SUBSCRIBED" if reply.channel.as_deref() == Some(name) => Answer::Accepted,
                // The client sent nothing else: an error answers the subscribe.
                "ERROR" => Answer::Refused,
                _ => Answer::Other,
            }
        }
    }
}

/// What a server text that is not a broadcast says, once the client is subscribed and sends
/// subscribe and unsubscribe requests of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A subscription to this channel is confirmed.
    Subscribed(Cow<'a, str>),
    /// An unsubscription from this channel is confirmed.
    Unsubscribed(Cow<'a, str>),
    /// A subscribe was refused (Socket.IO's `subscription_error`, a JSON `ERROR`).
    Refused(String),
    /// A presence change or member list: `presence:subscribed`, `presence:joining`,
    /// `presence:leaving`; `USER_JOINED`, `USER_LEFT`.
    Presence,
    /// Anything else.
    Other,
}

/// Reads a server text that is not a broadcast the client counts (Socket.IO: the whole text
/// with its `42`).
pub fn reply(protocol: Protocol, text: &str) -> Reply<'_> {
    match protocol {
        Protocol::Socketio => {
            let Some(args) = text.strip_prefix("42") else {
                return Reply::Other;
            };
            if args.starts_with(r#"["presence:"#) {
                return Reply::Presence;
            }
            let Ok((event, reply)) = serde_json::from_str::<(Cow<'_, str>, SocketioReply)>(args)
            else {
                return Reply::Other;
            };
            match &*event {
                "subscribed" => Reply::Subscribed(reply.channel),
                "unsubscribed" => Reply::Unsubscribed(reply.channel),
                "subscription_error" => Reply::Refused(text.to_owned()),
                _ => Reply::Other,
            }
        }
        Protocol::Json => {
            let Ok(reply) = serde_json::from_str::<JsonReply>(text) else {
                return Reply::Other;
            };
            match (&*reply.kind, reply.channel) {
                ("SUBSCRIBED", Some(channel)) => Reply::Subscribed(channel),
                ("UNSUBSCRIBED", Some(channel)) => Reply::Unsubscribed(channel),
                ("ERROR", _) => Reply::Refused(text.to_owned()),
                ("USER_JOINED" | "USER_LEFT", _) => Reply::Presence,
                _ => Reply::Other,
            }
        }
    }
}

/// The packets of an Engine.IO polling payload.
pub fn payload_packets(payload: &str) -> impl Iterator<Item = &str> {
    payload.split(PAYLOAD_SEPARATOR).filter(|p| !p.is_empty())
}

/// The body of an HTTP refusal: `{"error": {"code": …}}`.
#[derive(Deserialize)]
struct Refusal<'a> {
    #[serde(borrow)]
    error: RefusalError<'a>,
}

#[derive(Deserialize)]
struct RefusalError<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

/// Whether an HTTP answer to the upgrade refuses the client itself (its token, or its user's
/// connection limit) rather than the upgrade: on the JSON endpoint these are checked before the
/// upgrade, where Socket.IO answers them with a connect error after it.
pub fn refuses_client(body: &[u8]) -> bool {
    serde_json::from_slice::<Refusal>(body).is_ok_and(|refusal| {
        matches!(
            &*refusal.error.code,
            "unauthorized" | "too_many_connections" | "unavailable"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Stamp {
        seq: u64,
    }

    #[test]
    fn writes_the_requests() {
        assert_eq!(socketio_connect("a.b.c"), r#"40{"token":"a.b.c"}"#);
        assert_eq!(
            subscribe(Protocol::Socketio, 3),
            r#"42["subscribe",{"channel":"bench.3"}]"#
        );
        assert_eq!(
            subscribe(Protocol::Json, 3),
            r#"{"type":"SUBSCRIBE","payload":{"channel":"bench.3"}}"#
        );
    }

    #[test]
    fn reads_socketio_answers() {
        assert_eq!(
            socketio_connect_answer(r#"40{"sid":"x"}"#),
            Answer::Accepted
        );
        assert_eq!(
            socketio_connect_answer(
                r#"44{"message":"Authentication failed","data":{"reason":"bad"}}"#
            ),
            Answer::Refused
        );
        assert_eq!(socketio_connect_answer("2"), Answer::Other);
        let answer = |text| subscribe_answer(Protocol::Socketio, text, 1);
        assert_eq!(
            answer(r#"42["subscribed",{"channel":"bench.1","status":"success"}]"#),
            Answer::Accepted
        );
        assert_eq!(
            answer(
                r#"42["subscription_error",{"channel":"bench.1","error":"Unauthorized","details":"forbidden"}]"#
            ),
            Answer::Refused
        );
        assert_eq!(
            answer(r#"42["subscribed",{"channel":"private-user.1","status":"auto"}]"#),
            Answer::Other
        );
    }

    #[test]
    fn reads_json_answers() {
        let answer = |text| subscribe_answer(Protocol::Json, text, 1);
        assert_eq!(
            answer(r#"{"type":"SUBSCRIBED","channel":"bench.1","payload":{"channel":"bench.1"}}"#),
            Answer::Accepted
        );
        assert_eq!(
            answer(r#"{"type":"SUBSCRIBED","channel":"bench.2","payload":{"channel":"bench.2"}}"#),
            Answer::Other
        );
        assert_eq!(
            answer(r#"{"type":"ERROR","payload":{"code":"FORBIDDEN","message":"no"}}"#),
            Answer::Refused
        );
        assert_eq!(answer("not json"), Answer::Other);
        assert!(refuses_client(
            br#"{"error":{"code":"unauthorized","message":"bad signature"}}"#
        ));
        assert!(!refuses_client(
            br#"{"error":{"code":"origin_not_allowed","message":"no"}}"#
        ));
        assert!(!refuses_client(b"<html>"));
    }

    #[test]
    fn reads_replies_of_both_protocols() {
        let io = |text| reply(Protocol::Socketio, text);
        assert_eq!(
            io(r#"42["subscribed",{"channel":"soak.extra.4","status":"success"}]"#),
            Reply::Subscribed("soak.extra.4".into())
        );
        assert_eq!(
            io(r#"42["unsubscribed",{"channel":"soak.extra.3"}]"#),
            Reply::Unsubscribed("soak.extra.3".into())
        );
        assert!(matches!(
            io(
                r#"42["subscription_error",{"channel":"x","error":"Unauthorized","details":"forbidden"}]"#
            ),
            Reply::Refused(_)
        ));
        assert_eq!(
            io(r#"42["presence:joining","presence-soak.1",{"user_id":"7","user_info":{}}]"#),
            Reply::Presence
        );
        assert_eq!(io("3"), Reply::Other);
        let json = |text| reply(Protocol::Json, text);
        assert_eq!(
            json(
                r#"{"type":"UNSUBSCRIBED","channel":"soak.extra.3","payload":{"channel":"soak.extra.3"}}"#
            ),
            Reply::Unsubscribed("soak.extra.3".into())
        );
        assert_eq!(
            json(
                r#"{"type":"USER_LEFT","channel":"presence-soak.1","payload":{"userId":"7","roomId":"1"}}"#
            ),
            Reply::Presence
        );
        assert!(matches!(
            json(r#"{"type":"ERROR","payload":{"code":"FORBIDDEN","message":"no"}}"#),
            Reply::Refused(_)
        ));
        assert_eq!(
            unsubscribe_from(Protocol::Socketio, "soak.extra.3"),
            r#"42["unsubscribe",{"channel":"soak.extra.3"}]"#
        );
        assert_eq!(
            unsubscribe_from(Protocol::Json, "a"),
            r#"{"type":"UNSUBSCRIBE","payload":{"channel":"a"}}"#
        );
        let packets: Vec<_> = payload_packets("2\x1e42[\"a\"]\x1e").collect();
        assert_eq!(packets, ["2", r#"42["a"]"#]);
    }

    #[test]
    fn reads_events_of_both_protocols() {
        let socketio = incoming(Protocol::Socketio, r#"42["bench","bench.0",{"seq":7}]"#);
        let json = incoming(
            Protocol::Json,
            r#"{"type":"bench","channel":"bench.0","payload":{"seq":7,"pad":"x"}}"#,
        );
        for message in [socketio, json] {
            let Incoming::Event(event) = message else {
                panic!("not an event: {message:?}");
            };
            assert_eq!(
                event.data::<Stamp>("bench").map(Result::ok),
                Some(Some(Stamp { seq: 7 }))
            );
            assert!(event.data::<Stamp>("bench2").is_none());
            assert!(event.data::<Stamp>("benc").is_none());
        }
        let bad = Event::new(
            Protocol::Json,
            r#"{"type":"bench","channel":"c","payload":1}"#,
        );
        assert!(matches!(bad.data::<Stamp>("bench"), Some(Err(_))));
        assert_eq!(incoming(Protocol::Socketio, "2"), Incoming::Ping);
        assert_eq!(incoming(Protocol::Socketio, "1"), Incoming::Close);
        assert_eq!(incoming(Protocol::Socketio, "6"), Incoming::Other);
    }
}
