//! Engine.IO v4 packets and HTTP long-polling payloads.
//!
//! A text packet is one type digit followed by its data (`4hello`, `2probe`); a long-polling
//! payload joins packets with the record separator `\x1e`; a binary packet travelling over
//! long-polling is `b` followed by base64.

use base64::Engine as _;
use serde::Serialize;

/// Separates packets inside one long-polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';
/// The close packet.
pub const CLOSE: &str = "1";
/// The ping packet the server sends on every ping interval.
pub const PING: &str = "2";
/// The answer to the client's upgrade probe.
pub const PONG_PROBE: &str = "3probe";
/// The packet that releases a pending poll while the transport is being upgraded.
pub const NOOP: &str = "6";

/// One decoded Engine.IO packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0`: sent by the server only; a client sending it is a protocol error we report.
    Open,
    /// `1`: the peer closes the session.
    Close,
    /// `2`, with `probe` during an upgrade.
    Ping(&'a str),
    /// `3`, with `probe` during an upgrade.
    Pong(&'a str),
    /// `4`: a text message for the layer above.
    Message(&'a str),
    /// A binary message (a websocket binary frame, or `b<base64>` over polling).
    Binary(Vec<u8>),
    /// `5`: the client switches to the probed transport.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Why a packet could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet was empty.
    #[error("empty packet")]
    Empty,
    /// The first character is not a known packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A `b` packet whose base64 does not decode.
    #[error("invalid base64 in binary packet")]
    Base64,
}

/// Decodes one text packet.
pub fn decode(text: &str) -> Result<Packet<'_>, DecodeError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(DecodeError::Empty)?;
    let rest = chars.as_str();
    Ok(match kind {
        '0' => Packet::Open,
        '1' => Packet::Close,
        '2' => Packet::Ping(rest),
        '3' => Packet::Pong(rest),
        '4' => Packet::Message(rest),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        'b' => Packet::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| DecodeError::Base64)?,
        ),
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// Decodes a long-polling payload: packets separated by `\x1e`.
pub fn decode_payload(body: &str) -> impl Iterator<Item = Result<Packet<'_>, DecodeError>> {
    body.split(RECORD_SEPARATOR).map(decode)
}

/// A packet the server sends: text, or a binary message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing<'a> {
    /// A text packet, as it is (`4hello`, `2`).
    Text(&'a str),
    /// A binary message, base64-encoded behind `b` in a long-polling payload.
    Binary(&'a [u8]),
}

/// Encodes queued packets as one long-polling payload.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = Outgoing<'a>>) -> String {
    let mut out = String::new();
    for (i, packet) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(RECORD_SEPARATOR);
        }
        match packet {
            Outgoing::Text(text) => out.push_str(text),
            Outgoing::Binary(data) => {
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut out);
            }
        }
    }
    out
}

/// Starts a message packet (`4`); the layer above appends its own packet.
pub fn message(capacity: usize) -> String {
    let mut out = String::with_capacity(capacity + 1);
    out.push('4');
    out
}

/// The data of the open packet that starts every session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    /// The session id.
    pub sid: &'a str,
    /// Transports the client may upgrade to.
    pub upgrades: &'a [&'a str],
    /// Milliseconds between server pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong.
    pub ping_timeout: u64,
    /// Largest payload the server accepts, in bytes.
    pub max_payload: usize,
}

impl Handshake<'_> {
    /// Encodes the open packet (`0{...}`).
    pub fn encode(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("0{json}")
    }
}

/// Error codes of Engine.IO's HTTP error answers (`{"code": N, "message": ...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The `transport` parameter is missing or unknown.
    UnknownTransport = 0,
    /// The `sid` names no live session.
    UnknownSid = 1,
    /// A handshake with a method other than GET.
    BadHandshakeMethod = 2,
    /// Anything else the request got wrong.
    BadRequest = 3,
    /// The origin is not allowed, or the node is full.
    Forbidden = 4,
    /// `EIO` is not 4.
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    /// The message Engine.IO servers send with this code.
    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_packet_type() {
        assert_eq!(decode("0"), Ok(Packet::Open));
        assert_eq!(decode("1"), Ok(Packet::Close));
        assert_eq!(decode("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(decode("3"), Ok(Packet::Pong("")));
        assert_eq!(decode("42[\"a\"]"), Ok(Packet::Message("2[\"a\"]")));
        assert_eq!(decode("5"), Ok(Packet::Upgrade));
        assert_eq!(decode("6"), Ok(Packet::Noop));
        assert_eq!(decode("bAQI="), Ok(Packet::Binary(vec![1, 2])));
    }

    #[test]
    fn refuses_bad_packets() {
        assert_eq!(decode(""), Err(DecodeError::Empty));
        assert_eq!(decode("9x"), Err(DecodeError::UnknownType('9')));
        assert_eq!(decode("b!!"), Err(DecodeError::Base64));
        assert_eq!(decode("é"), Err(DecodeError::UnknownType('é')));
    }

    #[test]
    fn payload_round_trip() {
        let body = encode_payload(["2", "4hello", "40"].map(Outgoing::Text));
        assert_eq!(body, "2\u{1e}4hello\u{1e}40");
        let packets: Vec<_> = decode_payload(&body).collect();
        assert_eq!(
            packets,
            vec![
                Ok(Packet::Ping("")),
                Ok(Packet::Message("hello")),
                Ok(Packet::Message("0"))
            ]
        );
        assert_eq!(encode_payload([]), "");
        let mixed = encode_payload([Outgoing::Text("4hello"), Outgoing::Binary(&[1, 2, 3, 4])]);
        assert_eq!(mixed, "4hello\u{1e}bAQIDBA==");
        assert_eq!(
            decode_payload(&mixed).nth(1),
            Some(Ok(Packet::Binary(vec![1, 2, 3, 4])))
        );
    }

    #[test]
    fn open_packet_matches_the_protocol() {
        let open = Handshake {
            sid: "abc",
            upgrades: &["websocket"],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 1_000_000,
        }
        .encode();
        assert_eq!(
            open,
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
    }
}
