//! Socket.IO v5 packets (the protocol of socket.io 3.x/4.x), carried inside Engine.IO messages.
//!
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]`, for example
//! `2["subscribe",{"channel":"news"}]`, `21["ping"]` (ack id 1), `0/admin,{"token":"…"}`.
//! The namespace is written only when it is not `/`.

use serde::Serialize;
use serde_json::value::RawValue;

/// The kind of a Socket.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: connect to a namespace (client) or its acceptance (server).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event with arguments.
    Event,
    /// `3`: the acknowledgement of an event.
    Ack,
    /// `4`: the server refused the namespace connection.
    ConnectError,
    /// `5`: an event whose arguments include binary attachments.
    BinaryEvent,
    /// `6`: an acknowledgement with binary attachments.
    BinaryAck,
}

/// One decoded packet, borrowing from the text it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// What the packet is.
    pub kind: Kind,
    /// The namespace, `/` when absent.
    pub namespace: &'a str,
    /// The acknowledgement id the sender asks for (events) or answers (acks).
    pub ack: Option<u64>,
    /// How many binary attachments follow (binary kinds only).
    pub attachments: usize,
    /// The JSON data, not yet parsed; `None` when absent.
    pub data: Option<&'a str>,
}

/// Why a packet could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet was empty.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet kind.
    #[error("unknown packet type")]
    UnknownKind,
    /// The attachment count of a binary packet is missing or not a number.
    #[error("bad attachment count")]
    Attachments,
    /// The ack id does not fit in 64 bits.
    #[error("bad ack id")]
    AckId,
    /// The namespace is not terminated by `,`.
    #[error("unterminated namespace")]
    Namespace,
    /// An event's data is not a JSON array starting with the event name.
    #[error("event data must be a JSON array starting with the event name")]
    EventShape,
}

/// Decodes one packet.
pub fn decode(text: &str) -> Result<Packet<'_>, DecodeError> {
    let kind = match text.as_bytes().first().ok_or(DecodeError::Empty)? {
        b'0' => Kind::Connect,
        b'1' => Kind::Disconnect,
        b'2' => Kind::Event,
        b'3' => Kind::Ack,
        b'4' => Kind::ConnectError,
        b'5' => Kind::BinaryEvent,
        b'6' => Kind::BinaryAck,
        _ => return Err(DecodeError::UnknownKind),
    };
    let mut rest = &text[1..];

    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let dash = rest.find('-').ok_or(DecodeError::Attachments)?;
        attachments = rest[..dash].parse().map_err(|_| DecodeError::Attachments)?;
        rest = &rest[dash + 1..];
    }

    let mut namespace = "/";
    if rest.starts_with('/') {
        // A namespace with no data after it may end without the comma (`1/admin`).
        match rest.find(',') {
            Some(comma) => {
                namespace = &rest[..comma];
                rest = &rest[comma + 1..];
            }
            None if !rest.contains(['[', '{', '"']) => {
                namespace = rest;
                rest = "";
            }
            None => return Err(DecodeError::Namespace),
        }
    }

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits > 0 {
        Some(rest[..digits].parse().map_err(|_| DecodeError::AckId)?)
    } else {
        None
    };
    rest = &rest[digits..];

    Ok(Packet {
        kind,
        namespace,
        ack,
        attachments,
        data: (!rest.is_empty()).then_some(rest),
    })
}

/// An event split into its name and raw JSON arguments.
#[derive(Debug)]
pub struct Event<'a> {
    /// The event name.
    pub name: String,
    /// The arguments after the name, unparsed.
    pub args: Vec<&'a RawValue>,
}

impl<'a> Packet<'a> {
    /// Splits an event packet's data into the event name and its arguments.
    pub fn event(&self) -> Result<Event<'a>, DecodeError> {
        let data = self.data.ok_or(DecodeError::EventShape)?;
        let mut items: Vec<&'a RawValue> =
            serde_json::from_str(data).map_err(|_| DecodeError::EventShape)?;
        if items.is_empty() {
            return Err(DecodeError::EventShape);
        }
        let name: String =
            serde_json::from_str(items[0].get()).map_err(|_| DecodeError::EventShape)?;
        items.remove(0);
        Ok(Event { name, args: items })
    }
}

/// Writes the packet header: kind (the binary one when attachments follow, with their count),
/// namespace (when not `/`) and ack id. `kind` is the text kind's digit.
fn write_header(
    out: &mut String,
    kind: char,
    attachments: usize,
    namespace: &str,
    ack: Option<u64>,
) {
    if attachments == 0 {
        out.push(kind);
    } else {
        // BINARY_EVENT (5) and BINARY_ACK (6) are EVENT (2) and ACK (3) plus three.
        out.push(if kind == '2' { '5' } else { '6' });
        out.push_str(&attachments.to_string());
        out.push('-');
    }
    if namespace != "/" {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(id) = ack {
        out.push_str(&id.to_string());
    }
}

/// Appends an EVENT packet whose arguments are already JSON.
pub fn write_event(out: &mut String, namespace: &str, event: &str, args: &[&RawValue]) {
    write_event_args(out, namespace, 0, event, args);
}

/// Appends an EVENT packet whose arguments are already JSON, as a BINARY_EVENT when
/// `attachments` binary messages follow it (each in `args` as `{"_placeholder":true,"num":N}`).
pub fn write_event_args(
    out: &mut String,
    namespace: &str,
    attachments: usize,
    event: &str,
    args: &[&RawValue],
) {
    write_header(out, '2', attachments, namespace, None);
    out.push('[');
    super::write_json_str(out, event);
    for arg in args {
        out.push(',');
        out.push_str(arg.get());
    }
    out.push(']');
}

/// Appends an ACK packet answering `ack` with arguments already JSON, as a BINARY_ACK when
/// `attachments` binary messages follow it.
pub fn write_ack_args(
    out: &mut String,
    namespace: &str,
    ack: u64,
    attachments: usize,
    args: &[&RawValue],
) {
    write_header(out, '3', attachments, namespace, Some(ack));
    out.push('[');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(arg.get());
    }
    out.push(']');
}

/// Appends an EVENT packet `[event, value]` for a value we serialise ourselves.
pub fn write_event_value(out: &mut String, namespace: &str, event: &str, value: &impl Serialize) {
    write_header(out, '2', 0, namespace, None);
    out.push('[');
    super::write_json_str(out, event);
    out.push(',');
    out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
    out.push(']');
}

/// Appends an EVENT packet `[event, data]` that asks for an acknowledgement `ack` when given:
/// `2/notifications,7["notification:new",{…}]`.
pub fn write_event_ack(
    out: &mut String,
    namespace: &str,
    ack: Option<u64>,
    event: &str,
    data: &RawValue,
) {
    write_header(out, '2', 0, namespace, ack);
    out.push('[');
    super::write_json_str(out, event);
    out.push(',');
    out.push_str(data.get());
    out.push(']');
}

/// Appends the broadcast form Laravel Echo listens for: `[event, channel, data]`.
pub fn write_broadcast(
    out: &mut String,
    namespace: &str,
    event: &str,
    channel: &str,
    data: &RawValue,
) {
    write_header(out, '2', 0, namespace, None);
    out.push('[');
    super::write_json_str(out, event);
    out.push(',');
    super::write_json_str(out, channel);
    out.push(',');
    out.push_str(data.get());
    out.push(']');
}

/// Appends an ACK packet answering `ack` with one argument.
pub fn write_ack(out: &mut String, namespace: &str, ack: u64, value: &impl Serialize) {
    write_header(out, '3', 0, namespace, Some(ack));
    out.push('[');
    out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
    out.push(']');
}

/// Appends the server's acceptance of a namespace connection.
pub fn write_connect(out: &mut String, namespace: &str, sid: &str) {
    write_header(out, '0', 0, namespace, None);
    out.push_str("{\"sid\":");
    super::write_json_str(out, sid);
    out.push('}');
}

/// Appends a CONNECT_ERROR; socket.io-client surfaces `message` and `data` (when given) as the
/// `connect_error`'s `err.message` and `err.data`.
pub fn write_connect_error(
    out: &mut String,
    namespace: &str,
    message: &str,
    data: Option<&serde_json::Value>,
) {
    write_header(out, '4', 0, namespace, None);
    out.push_str("{\"message\":");
    super::write_json_str(out, message);
    if let Some(data) = data {
        out.push_str(",\"data\":");
        out.push_str(&data.to_string());
    }
    out.push('}');
}

/// Appends a DISCONNECT: the client leaves the namespace and does not reconnect on its own.
pub fn write_disconnect(out: &mut String, namespace: &str) {
    write_header(out, '1', 0, namespace, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("valid JSON")
    }

    #[test]
    fn decodes_connect_with_and_without_auth() {
        let p = decode("0").expect("connect");
        assert_eq!(
            (p.kind, p.namespace, p.ack, p.data),
            (Kind::Connect, "/", None, None)
        );
        let p = decode(r#"0{"token":"abc"}"#).expect("connect with auth");
        assert_eq!(p.data, Some(r#"{"token":"abc"}"#));
        let p = decode(r#"0/admin,{"token":"abc"}"#).expect("namespaced connect");
        assert_eq!(
            (p.namespace, p.data),
            ("/admin", Some(r#"{"token":"abc"}"#))
        );
        let p = decode("1/admin,").expect("namespaced disconnect");
        assert_eq!((p.kind, p.namespace), (Kind::Disconnect, "/admin"));
        let p = decode("1/admin").expect("namespaced disconnect without comma");
        assert_eq!(p.namespace, "/admin");
    }

    #[test]
    fn writes_events_asking_for_an_ack() {
        let data = RawValue::from_string(r#"{"id":7}"#.to_owned()).expect("json");
        let mut out = String::new();
        write_event_ack(
            &mut out,
            "/notifications",
            Some(7),
            "notification:new",
            &data,
        );
        assert_eq!(out, r#"2/notifications,7["notification:new",{"id":7}]"#);
        out.clear();
        write_event_ack(
            &mut out,
            "/notifications",
            None,
            "notification:count",
            &data,
        );
        assert_eq!(out, r#"2/notifications,["notification:count",{"id":7}]"#);
    }

    #[test]
    fn decodes_events_with_ack_ids() {
        let p = decode(r#"212["subscribe",{"channel":"news"}]"#).expect("event");
        assert_eq!((p.kind, p.ack), (Kind::Event, Some(12)));
        let e = p.event().expect("event shape");
        assert_eq!(e.name, "subscribe");
        assert_eq!(e.args.len(), 1);
        assert_eq!(e.args[0].get(), r#"{"channel":"news"}"#);

        let p = decode(r#"2/chat,7["ping"]"#).expect("namespaced event");
        assert_eq!((p.namespace, p.ack), ("/chat", Some(7)));
        assert!(p.event().expect("event").args.is_empty());
    }

    #[test]
    fn decodes_binary_headers() {
        let p = decode(r#"51-["upload",{"_placeholder":true,"num":0}]"#).expect("binary event");
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = decode(r#"62-/x,3[{"_placeholder":true,"num":0}]"#).expect("binary ack");
        assert_eq!(
            (p.kind, p.attachments, p.namespace, p.ack),
            (Kind::BinaryAck, 2, "/x", Some(3))
        );
    }

    #[test]
    fn refuses_malformed_packets() {
        assert_eq!(decode(""), Err(DecodeError::Empty));
        assert_eq!(decode("9"), Err(DecodeError::UnknownKind));
        assert_eq!(decode("5[]"), Err(DecodeError::Attachments));
        assert_eq!(decode("5x-[]"), Err(DecodeError::Attachments));
        assert_eq!(
            decode("299999999999999999999999[]"),
            Err(DecodeError::AckId)
        );
        assert_eq!(decode(r#"2/nsp["a"]"#), Err(DecodeError::Namespace));
        for bad in ["2", "2{}", "2[]", "2[1]", "2[\"a\"", "2not json"] {
            let packet = decode(bad).expect("header decodes");
            assert_eq!(packet.event().err(), Some(DecodeError::EventShape), "{bad}");
        }
    }

    #[test]
    fn encodes_exact_wire_strings() {
        let mut out = String::new();
        write_broadcast(
            &mut out,
            "/",
            "App\\Events\\Sent",
            "news",
            &raw(r#"{"a":1}"#),
        );
        assert_eq!(out, r#"2["App\\Events\\Sent","news",{"a":1}]"#);

        let mut out = String::new();
        write_event_value(
            &mut out,
            "/notifications",
            "count",
            &serde_json::json!({"count": 2}),
        );
        assert_eq!(out, r#"2/notifications,["count",{"count":2}]"#);

        let mut out = String::new();
        write_event_ack(
            &mut out,
            "/notifications",
            Some(7),
            "new",
            &raw(r#"{"id":7}"#),
        );
        assert_eq!(out, r#"2/notifications,7["new",{"id":7}]"#);

        let mut out = String::new();
        write_event(&mut out, "/", "pong", &[]);
        assert_eq!(out, r#"2["pong"]"#);

        let mut out = String::new();
        write_ack(&mut out, "/", 5, &serde_json::json!({"ok": true}));
        assert_eq!(out, r#"35[{"ok":true}]"#);

        let mut out = String::new();
        write_connect(&mut out, "/", "s1");
        assert_eq!(out, r#"0{"sid":"s1"}"#);

        let mut out = String::new();
        let reason = serde_json::json!({"reason": "Invalid namespace"});
        write_connect_error(&mut out, "/nope", "Authentication failed", Some(&reason));
        assert_eq!(
            out,
            r#"4/nope,{"message":"Authentication failed","data":{"reason":"Invalid namespace"}}"#
        );
        out.clear();
        write_connect_error(&mut out, "/nope", "Invalid namespace", None);
        assert_eq!(out, r#"4/nope,{"message":"Invalid namespace"}"#);

        let mut out = String::new();
        write_disconnect(&mut out, "/");
        assert_eq!(out, "1");
    }

    #[test]
    fn encodes_binary_events_and_acks_with_their_attachment_count() {
        let placeholder = raw(r#"{"_placeholder":true,"num":0}"#);
        let mut out = String::new();
        write_event_args(&mut out, "/", 1, "back", &[&placeholder]);
        assert_eq!(out, r#"51-["back",{"_placeholder":true,"num":0}]"#);

        let mut out = String::new();
        write_event_args(&mut out, "/custom", 0, "back", &[&raw("1")]);
        assert_eq!(out, r#"2/custom,["back",1]"#);

        let mut out = String::new();
        write_ack_args(&mut out, "/custom", 789, 2, &[&placeholder, &raw("2")]);
        assert_eq!(out, r#"62-/custom,789[{"_placeholder":true,"num":0},2]"#);

        let mut out = String::new();
        write_ack_args(&mut out, "/", 456, 0, &[&raw("1"), &raw(r#""2""#)]);
        assert_eq!(out, r#"3456[1,"2"]"#);
        let back = decode(&out).expect("an ack decodes");
        assert_eq!((back.kind, back.ack), (Kind::Ack, Some(456)));
    }
}
