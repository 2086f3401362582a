//! What the codecs promise for any input a client can send, beyond not panicking: what decodes
//! re-encodes (with the server's own encoders where it has them) to an equivalent value, limits
//! hold before anything is buffered, and a message read in pieces reads as the whole one.
//!
//! One function per fuzz target of the same name (`fuzz/fuzz_targets/`); each panics when its
//! property fails. The unit tests of `fuzz_replay` replay the committed seeds and every input a
//! fuzzer found failing through them, on stable Rust. Compiled for tests and for fuzzing only
//! (cargo-fuzz sets `--cfg fuzzing`): the node never runs them.

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{engineio, json, socketio, websocket};

/// The longest header of a client frame: two bytes, a 64-bit length and the masking key.
const MAX_HEADER: usize = 14;

/// The masking key of the frames re-read here (any key will do).
const MASK: [u8; 4] = [0xa5, 0x17, 0x3c, 0xe8];

/// The websocket frame reader, fed bytes in chunks whose sizes come from the input:
/// `max_message: u16 LE, max_kept: u16 LE, raise: u8, n: u8, n chunk sizes (each + 1), stream`.
/// `max_kept` below `max_message` turns on [`websocket::Reader::discard_over`]; after the first
/// message the limit grows by `raise × 256` (the engine raises it once a socket connects).
///
/// Read in those chunks, the stream gives the same messages and the same error as read whole;
/// after every read the reader holds at most one incomplete frame and the last chunk (a buffer
/// may grow to twice what it needs) and no fragmented message over the limit, and nothing at all
/// when nothing is pending; a discarded message was over the kept size; the longest message
/// read is read the same with the limit at its length and refused (`TooLarge`, before anything
/// after it) with the limit one byte lower; and each message the server frames
/// ([`websocket::encode`]) and a client masks reads back as itself, and a text as the reason
/// of a close frame ([`websocket::encode_close`]) leaves a close frame a client accepts.
pub fn websocket_frames(input: &[u8]) {
    let Some(setup) = Setup::parse(input) else {
        return;
    };
    let whole = setup.read([setup.stream]);
    let chunked = setup.read(setup.chunks());
    assert_eq!(whole, chunked, "read in chunks as read whole");
    if setup.max_kept.is_none() && setup.raise == 0 {
        setup.check_limit_edge(&whole);
    }
    for message in &whole.messages {
        let Some(frame) = server_frame(message) else {
            continue;
        };
        if let Some(data) = data(message) {
            assert_eq!(
                websocket::payload(&frame),
                data,
                "payload of the server's frame"
            );
        }
        assert_eq!(read_back(&frame).as_ref(), Ok(message), "reframed");
        if let websocket::Message::Text(reason) = message {
            let close = websocket::encode_close(websocket::NORMAL, reason);
            let back = read_back(&close);
            assert_eq!(back, Ok(websocket::Message::Close(Some(websocket::NORMAL))));
        }
    }
}

/// A frame the server built, masked as a client sends it and read by a new reader.
fn read_back(frame: &[u8]) -> Result<websocket::Message, websocket::FrameError> {
    let mut reader = websocket::Reader::new(usize::MAX);
    reader.extend(&masked(frame));
    let message = reader.next_message()?;
    assert!(!reader.pending(), "one frame, read whole");
    Ok(message.expect("a whole frame is a message"))
}

/// How [`websocket_frames`] reads its input.
struct Setup<'a> {
    max_message: usize,
    max_kept: Option<usize>,
    raise: usize,
    sizes: &'a [u8],
    stream: &'a [u8],
}

/// What a reader made of a stream: its messages, then the error that ends it or whether bytes
/// wait for more.
#[derive(Debug, PartialEq, Eq)]
struct Reading {
    messages: Vec<websocket::Message>,
    end: Result<bool, websocket::FrameError>,
}

impl<'a> Setup<'a> {
    fn parse(input: &'a [u8]) -> Option<Self> {
        let [a, b, c, d, raise, count, rest @ ..] = input else {
            return None;
        };
        let max_message = usize::from(u16::from_le_bytes([*a, *b]));
        let max_kept = usize::from(u16::from_le_bytes([*c, *d]));
        let (sizes, stream) = rest.split_at(usize::from(*count).min(rest.len()));
        Some(Self {
            max_message,
            max_kept: (max_kept < max_message).then_some(max_kept),
            raise: usize::from(*raise) * 256,
            sizes,
            stream,
        })
    }

    /// The stream in chunks of the input's sizes taken in turn; byte by byte when it has none.
    fn chunks(&self) -> Vec<&'a [u8]> {
        let sizes = if self.sizes.is_empty() {
            &[0][..]
        } else {
            self.sizes
        };
        let mut rest = self.stream;
        let mut chunks = Vec::new();
        for size in sizes.iter().map(|&size| usize::from(size) + 1).cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at(size.min(rest.len()));
            chunks.push(chunk);
            rest = after;
        }
        chunks
    }

    /// Reads the chunks as the websocket layer does: all messages out before the next read.
    fn read<'c>(&self, chunks: impl IntoIterator<Item = &'c [u8]>) -> Reading {
        let mut reader = websocket::Reader::new(self.max_message);
        if let Some(max_kept) = self.max_kept {
            reader.discard_over(max_kept);
        }
        let mut limit = self.max_message;
        let mut largest_chunk = 0;
        let mut messages = Vec::new();
        for chunk in chunks {
            largest_chunk = largest_chunk.max(chunk.len());
            reader.extend(chunk);
            loop {
                match reader.next_message() {
                    Ok(Some(message)) => {
                        self.check_message(&message, limit);
                        if messages.is_empty() && self.raise > 0 {
                            limit += self.raise;
                            reader.set_max_message(limit);
                        }
                        messages.push(message);
                    }
                    Ok(None) => break,
                    Err(error) => {
                        return Reading {
                            messages,
                            end: Err(error),
                        };
                    }
                }
            }
            self.check_held(&reader, limit, largest_chunk);
        }
        Reading {
            messages,
            end: Ok(reader.pending()),
        }
    }

    /// With the limit at the longest message's length, the same messages, unless a frame over
    /// it (of a message never finished) is refused first; one byte lower, the same messages up
    /// to that one at most, then a refusal. `reading` was read with this setup.
    fn check_limit_edge(&self, reading: &Reading) {
        let Some(longest) = reading.messages.iter().filter_map(kept_len).max() else {
            return;
        };
        let at = Self {
            max_message: longest,
            ..*self
        };
        let edge = at.read(at.chunks());
        assert!(
            reading.messages.starts_with(&edge.messages),
            "limit at {longest}: {edge:?}"
        );
        if edge != *reading {
            assert_eq!(edge.end, Err(websocket::FrameError::TooLarge(longest)));
        }
        let Some(below) = longest.checked_sub(1) else {
            return;
        };
        let below = Self {
            max_message: below,
            ..*self
        };
        let refused = below.read(below.chunks());
        let before = reading
            .messages
            .iter()
            .position(|m| kept_len(m) == Some(longest))
            .unwrap_or_default();
        assert!(
            reading.messages[..before].starts_with(&refused.messages),
            "limit at {longest} - 1: {refused:?}"
        );
        assert_eq!(
            refused.end,
            Err(websocket::FrameError::TooLarge(below.max_message))
        );
    }

    /// The bytes a message kept are within the limits; a discarded one was over the kept size.
    fn check_message(&self, message: &websocket::Message, limit: usize) {
        let kept = self.max_kept.unwrap_or(usize::MAX).min(limit);
        match message {
            websocket::Message::Text(text) => assert!(text.len() <= kept, "text over {kept}"),
            websocket::Message::Binary(data) => assert!(data.len() <= kept, "binary over {kept}"),
            websocket::Message::Discarded(len) => {
                let max_kept = self.max_kept.expect("discarded only over a kept size");
                assert!(*len > max_kept && *len <= limit, "discarded {len}");
            }
            _ => {}
        }
    }

    /// What the reader holds once it waits for more bytes.
    fn check_held(&self, reader: &websocket::Reader, limit: usize, largest_chunk: usize) {
        let (unread, fragments) = reader.held();
        if !reader.pending() {
            assert_eq!((unread, fragments), (0, 0), "nothing held at rest");
        }
        // One incomplete frame and the bytes of the last read; a growing buffer doubles.
        let frame = MAX_HEADER + limit.max(websocket::MAX_CONTROL as usize);
        let bound = (2 * (frame + largest_chunk)).max(8);
        assert!(unread <= bound, "{unread} unread bytes held, over {bound}");
        let kept = self.max_kept.unwrap_or(usize::MAX).min(limit);
        let bound = 2usize.saturating_mul(kept).max(8);
        assert!(
            fragments <= bound,
            "{fragments} bytes of fragments, over {bound}"
        );
    }
}

/// The frame the server sends for `message` (with no close reason); `None` for a discarded one.
fn server_frame(message: &websocket::Message) -> Option<bytes::Bytes> {
    use websocket::Message;
    Some(match message {
        Message::Text(text) => websocket::encode(websocket::TEXT, text.as_bytes()),
        Message::Binary(data) => websocket::encode(websocket::BINARY, data),
        Message::Ping(data) => websocket::encode(websocket::PING, data),
        Message::Pong => websocket::encode(websocket::PONG, b""),
        Message::Close(Some(code)) => websocket::encode_close(*code, ""),
        Message::Close(None) => websocket::encode(websocket::CLOSE, b""),
        Message::Discarded(_) => return None,
    })
}

/// The length of a text or binary message.
fn kept_len(message: &websocket::Message) -> Option<usize> {
    match message {
        websocket::Message::Text(text) => Some(text.len()),
        websocket::Message::Binary(data) => Some(data.len()),
        _ => None,
    }
}

/// The data a text, binary or ping message carries.
fn data(message: &websocket::Message) -> Option<&[u8]> {
    match message {
        websocket::Message::Text(text) => Some(text.as_bytes()),
        websocket::Message::Binary(data) | websocket::Message::Ping(data) => Some(data),
        _ => None,
    }
}

/// A server frame as a client sends it: the mask bit, the key, the payload masked.
fn masked(frame: &[u8]) -> Vec<u8> {
    let payload = websocket::payload(frame);
    let mut out = frame[..frame.len() - payload.len()].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// An Engine.IO long-polling body (the input as UTF-8, lossily; the engine refuses a body that
/// is not). Each packet decodes as it does alone; each error is the one its first character
/// calls for; each packet re-encodes to text that decodes to it again; and the server's payload
/// encoder joins the re-encoded packets into a body that decodes to the same packets.
pub fn engineio_packets(input: &[u8]) {
    let body = String::from_utf8_lossy(input);
    let packets: Vec<_> = engineio::decode_payload(&body).collect();
    let mut texts = Vec::new();
    for (segment, packet) in body.split(engineio::RECORD_SEPARATOR).zip(&packets) {
        assert_eq!(&engineio::decode(segment), packet, "alone as in a payload");
        match packet {
            Ok(packet) => {
                let text = engineio_text(packet);
                assert_eq!(engineio::decode(&text).as_ref(), Ok(packet), "{text:?}");
                texts.push(text);
            }
            Err(error) => {
                let expected = match segment.chars().next() {
                    None => engineio::DecodeError::Empty,
                    Some('b') => engineio::DecodeError::Base64,
                    Some(other) => engineio::DecodeError::UnknownType(other),
                };
                assert_eq!(error, &expected, "{segment:?}");
            }
        }
    }
    if texts.is_empty() {
        return;
    }
    let again = engineio::encode_payload(
        texts
            .iter()
            .map(|text| engineio::Outgoing::Text(text.as_str())),
    );
    let decoded: Vec<_> = packets.iter().filter_map(|p| p.as_ref().ok()).collect();
    let redecoded: Vec<_> = engineio::decode_payload(&again).collect();
    assert_eq!(
        redecoded.iter().map(Result::as_ref).collect::<Vec<_>>(),
        decoded.into_iter().map(Ok).collect::<Vec<_>>(),
        "{again:?}"
    );
}

/// A decoded Engine.IO packet as text (the data of an open, close, upgrade or noop is dropped,
/// as the decoder drops it).
fn engineio_text(packet: &engineio::Packet<'_>) -> String {
    use engineio::Packet;
    match packet {
        Packet::Open => "0".into(),
        Packet::Close => engineio::CLOSE.into(),
        Packet::Ping(data) => format!("2{data}"),
        Packet::Pong(data) => format!("3{data}"),
        Packet::Message(data) => format!("4{data}"),
        Packet::Upgrade => "5".into(),
        Packet::Noop => engineio::NOOP.into(),
        Packet::Binary(data) => {
            format!(
                "b{}",
                base64::engine::general_purpose::STANDARD.encode(data)
            )
        }
    }
}

/// A Socket.IO packet (the input as UTF-8, lossily, as an Engine.IO message is text). What
/// decodes re-encodes to text that decodes to the same packet, its kind and attachment count
/// included (only binary kinds announce attachments); the server's own writers of events, acks
/// and disconnects, given what an event or ack decoded to, write packets that decode to the same
/// namespace, ack id, name and arguments; and each error is the one the first byte calls for.
///
/// Binary attachments themselves never reach a codec: the server refuses a binary packet and
/// discards the count it announces (`crate::socketio::on_binary`), so the count is what is
/// checked, and that decoding it allocates nothing (the fuzz script caps each allocation).
pub fn socketio_packets(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let packet = match socketio::decode(&text) {
        Ok(packet) => packet,
        Err(error) => {
            if text.is_empty() {
                assert_eq!(error, socketio::DecodeError::Empty);
            } else if !text.starts_with(|c| ('0'..='6').contains(&c)) {
                assert_eq!(error, socketio::DecodeError::UnknownKind);
            }
            return;
        }
    };
    let binary = matches!(
        packet.kind,
        socketio::Kind::BinaryEvent | socketio::Kind::BinaryAck
    );
    assert!(
        binary || packet.attachments == 0,
        "attachments of a text kind"
    );
    let again = socketio_text(&packet);
    assert_eq!(
        socketio::decode(&again),
        socketio::decode(&text),
        "{again:?}"
    );

    let mut out = String::new();
    match packet.kind {
        socketio::Kind::Event => {
            let Ok(event) = packet.event() else {
                return;
            };
            match (packet.ack, event.args.as_slice()) {
                (None, args) => {
                    socketio::write_event(&mut out, packet.namespace, &event.name, args)
                }
                (Some(_), [data]) => socketio::write_event_ack(
                    &mut out,
                    packet.namespace,
                    packet.ack,
                    &event.name,
                    data,
                ),
                (Some(_), _) => return,
            }
            let back = decode_own(&out);
            assert_eq!(
                (back.kind, back.namespace, back.ack),
                (packet.kind, packet.namespace, packet.ack),
                "{out:?}"
            );
            let back_event = back.event().expect("the server's event has a name");
            assert_eq!(back_event.name, event.name, "{out:?}");
            assert_eq!(
                raw_texts(&back_event.args),
                raw_texts(&event.args),
                "{out:?}"
            );
        }
        socketio::Kind::Ack => {
            let (Some(id), Some(data)) = (packet.ack, packet.data) else {
                return;
            };
            let Ok([value]) = serde_json::from_str::<[&RawValue; 1]>(data) else {
                return;
            };
            socketio::write_ack(&mut out, packet.namespace, id, &value);
            let back = decode_own(&out);
            assert_eq!(
                (back.kind, back.namespace, back.ack),
                (packet.kind, packet.namespace, packet.ack),
                "{out:?}"
            );
            let back_args: [&RawValue; 1] = serde_json::from_str(back.data.unwrap_or_default())
                .expect("the server's ack has one argument");
            assert_eq!(back_args[0].get(), value.get(), "{out:?}");
        }
        socketio::Kind::Disconnect => {
            socketio::write_disconnect(&mut out, packet.namespace);
            let back = decode_own(&out);
            assert_eq!(
                (back.kind, back.namespace, back.ack, back.data),
                (packet.kind, packet.namespace, None, None),
                "{out:?}"
            );
        }
        _ => {}
    }
}

/// A packet the server wrote, which must decode.
fn decode_own(text: &str) -> socketio::Packet<'_> {
    match socketio::decode(text) {
        Ok(packet) => packet,
        Err(error) => panic!("the server's own packet {text:?} does not decode: {error}"),
    }
}

/// The texts of raw JSON values.
fn raw_texts<'a>(values: &[&'a RawValue]) -> Vec<&'a str> {
    values.iter().map(|v| v.get()).collect()
}

/// A decoded Socket.IO packet as text: kind, attachment count for binary kinds, namespace
/// (written when it is not `/`, or when what follows would read as one), ack id, data.
fn socketio_text(packet: &socketio::Packet<'_>) -> String {
    use socketio::Kind;
    let mut out = String::from(match packet.kind {
        Kind::Connect => "0",
        Kind::Disconnect => "1",
        Kind::Event => "2",
        Kind::Ack => "3",
        Kind::ConnectError => "4",
        Kind::BinaryEvent => "5",
        Kind::BinaryAck => "6",
    });
    if matches!(packet.kind, Kind::BinaryEvent | Kind::BinaryAck) {
        out.push_str(&format!("{}-", packet.attachments));
    }
    let ack = packet.ack.map(|id| id.to_string()).unwrap_or_default();
    let rest = format!("{ack}{}", packet.data.unwrap_or_default());
    if packet.namespace != "/" || rest.starts_with('/') {
        out.push_str(packet.namespace);
        out.push(',');
    }
    out.push_str(&rest);
    out
}

/// A JSON endpoint frame (the input as UTF-8, lossily, as a text message is). A frame that
/// decodes, written back by the server's [`json::write_frame`], decodes to the same type,
/// payload and ref; as a broadcast ([`json::write_broadcast`], channel from a string `ref`)
/// it is still a frame with its channel. A frame that does not decode is `INVALID_JSON`
/// exactly when it is not JSON at all, and the `ERROR` frame answering it is a frame carrying
/// that code and message.
pub fn json_frames(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut out = String::new();
    let frame = match json::decode(&text) {
        Ok(frame) => frame,
        Err(error) => {
            let is_json = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            let expected = if is_json {
                json::ErrorCode::InvalidFrame
            } else {
                json::ErrorCode::InvalidJson
            };
            assert_eq!(error.code, expected, "{}", error.message);
            json::write_error(&mut out, error.code, &error.message, None);
            let back = decode_frame(&out);
            assert_eq!(back.kind, "ERROR");
            let payload: ErrorPayload =
                serde_json::from_str(back.payload.map_or("", RawValue::get))
                    .expect("an ERROR frame's payload has a code and a message");
            assert_eq!(
                (payload.code.as_ref(), payload.message.as_ref()),
                (error.code.as_str(), error.message.as_str())
            );
            return;
        }
    };
    let payload = frame.payload.unwrap_or(RawValue::NULL);
    json::write_frame(&mut out, &frame.kind, None, payload, frame.reference);
    let back = decode_frame(&out);
    assert_eq!(back.kind, frame.kind, "{out:?}");
    assert_eq!(
        back.payload.map(RawValue::get),
        frame.payload.map(RawValue::get)
    );
    assert_eq!(
        back.reference.map(RawValue::get),
        frame.reference.map(RawValue::get)
    );

    let channel = frame
        .reference
        .and_then(|r| serde_json::from_str::<Cow<'_, str>>(r.get()).ok())
        .unwrap_or(Cow::Borrowed("room:1"));
    out.clear();
    json::write_broadcast(&mut out, &frame.kind, &channel, payload);
    decode_frame(&out);
    let written: Channel = serde_json::from_str(&out).expect("a broadcast names its channel");
    assert_eq!(written.channel, channel, "{out:?}");
}

/// A frame the server wrote, which must decode.
fn decode_frame(text: &str) -> json::Incoming<'_> {
    match json::decode(text) {
        Ok(frame) => frame,
        Err(error) => panic!("the server's own frame {text:?} does not decode: {error:?}"),
    }
}

/// The payload of an `ERROR` frame.
#[derive(Deserialize)]
struct ErrorPayload<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

/// The channel of a frame.
#[derive(Deserialize)]
struct Channel<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}
