//! WebSocket framing (RFC 6455 §5), server side: unmasked frames out, masked client frames in.
//!
//! A frame going out is built once, header and payload in one buffer, so a broadcast's bytes
//! are shared by every recipient and written as they are. Frames coming in are read into a
//! [`Reader`], which reassembles fragmented messages, hands control frames over as they come,
//! and refuses a message over the size limit as soon as its header says so, before buffering it.

use bytes::{BufMut, Bytes, BytesMut};

/// Continuation of a fragmented message.
const CONTINUATION: u8 = 0x0;
/// A UTF-8 text message.
pub const TEXT: u8 = 0x1;
/// A binary message.
pub const BINARY: u8 = 0x2;
/// Close.
pub const CLOSE: u8 = 0x8;
/// Ping.
pub const PING: u8 = 0x9;
/// Pong.
pub const PONG: u8 = 0xA;
/// The last frame of a message.
const FIN: u8 = 0x80;
/// Reserved bits: set only by an extension, and none is agreed.
const RESERVED: u8 = 0x70;
/// The mask bit of the second byte.
const MASKED: u8 = 0x80;
/// The longest control frame payload.
pub(super) const MAX_CONTROL: u64 = 125;

/// Close code: a normal close.
pub const NORMAL: u16 = 1000;
/// Close code: the endpoint is going away (server shutdown).
pub const GOING_AWAY: u16 = 1001;
/// Close code: the peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message was not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Close code: the peer broke a rule of the application.
pub const POLICY_VIOLATION: u16 = 1008;
/// Close code: a message over the size limit.
pub const TOO_BIG: u16 = 1009;

/// A complete unmasked frame with `opcode`: the header, then `payload`.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(header_len(len) + len);
    out.put_u8(FIN | opcode);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A close frame: the code, then the reason (cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(CLOSE, &payload)
}

/// The header length of an unmasked frame carrying `len` bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// The opcode of a frame [`encode`] built.
pub fn opcode(frame: &[u8]) -> Option<u8> {
    frame.first().map(|b| b & 0x0F)
}

/// The payload of a frame [`encode`] built.
pub fn payload(frame: &[u8]) -> &[u8] {
    let start = match frame.get(1).map(|b| b & !MASKED) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(start..).unwrap_or_default()
}

/// A message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message, fragments joined.
    Text(String),
    /// A binary message, fragments joined.
    Binary(Vec<u8>),
    /// A message over the kept size (see [`Reader::discard_over`]) whose payload was dropped as
    /// it arrived: its length.
    Discarded(usize),
    /// A ping; the answer is a pong with the same payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The client closes, with its close code if it gave one.
    Close(Option<u16>),
}

/// Why the client's bytes are not acceptable; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frames break RFC 6455.
    #[error("websocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A message over the size limit.
    #[error("websocket message over {0} bytes")]
    TooLarge(usize),
    /// A text message or close reason that is not UTF-8.
    #[error("websocket text is not UTF-8")]
    NotUtf8,
}

impl FrameError {
    /// The close code that tells the client.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => PROTOCOL_ERROR,
            Self::TooLarge(_) => TOO_BIG,
            Self::NotUtf8 => INVALID_PAYLOAD,
        }
    }
}

/// Whether a client may close with `code`: the codes RFC 6455 §7.4.1 defines for sending and
/// the later IANA registrations (1012–1014), and the ranges for libraries and applications
/// (3000–4999). Never 1004 (reserved), 1005, 1006 or 1015 (only reported locally, §7.4.1), nor
/// anything below 1000 or unassigned (§7.4.2).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A fragmented message so far.
#[derive(Debug)]
struct Partial {
    /// `TEXT` or `BINARY`.
    opcode: u8,
    /// The fragments' payloads, joined.
    payload: Vec<u8>,
    /// How much of a text payload is known to be UTF-8 (a cut character may follow).
    valid: usize,
}

/// What a frame header says.
struct Header {
    fin: bool,
    opcode: u8,
    /// The payload length the header announces.
    len: u64,
    /// The header's own length, the masking key included.
    size: usize,
}

impl Header {
    fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// A message being dropped because it is over the kept size.
#[derive(Debug)]
struct Discard {
    /// The message's length so far, the current frame included.
    len: usize,
    /// Payload bytes of the current frame still to drop.
    left: usize,
    /// Whether the current frame ends the message.
    fin: bool,
}

/// Client bytes in, messages out. Holds no memory at rest: its buffers are allocated while a
/// frame is incomplete and released once it is taken.
#[derive(Debug)]
pub struct Reader {
    /// Bytes received and not yet taken as whole frames.
    unread: Vec<u8>,
    /// A fragmented message so far.
    fragments: Option<Partial>,
    /// A message over `max_kept` whose bytes are being dropped.
    discard: Option<Discard>,
    /// Over this a message is an error (close 1009).
    max_message: usize,
    /// Over this (and up to `max_message`) a message is dropped as it arrives.
    max_kept: usize,
}

impl Reader {
    /// A reader refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            unread: Vec::new(),
            fragments: None,
            discard: None,
            max_message,
            max_kept: usize::MAX,
        }
    }

    /// From the next frame on, refuses messages over `max_message` bytes.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message;
    }

    /// Drops messages over `max_kept` bytes (and up to the size limit) as their bytes arrive,
    /// reporting each as [`Message::Discarded`] once its last byte is in, so that a large
    /// message costs no memory yet does not end the connection.
    pub fn discard_over(&mut self, max_kept: usize) {
        self.max_kept = max_kept;
    }

    /// Adds bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.unread.extend_from_slice(bytes);
    }

    /// The memory the reader holds, in bytes: the capacity of its unread input and of the
    /// fragmented message so far (for the properties the fuzz targets check).
    #[cfg(any(test, fuzzing))]
    pub fn held(&self) -> (usize, usize) {
        let fragments = self.fragments.as_ref().map_or(0, |p| p.payload.capacity());
        (self.unread.capacity(), fragments)
    }

    /// Whether part of a frame or of a fragmented message has arrived and the rest has not.
    pub fn pending(&self) -> bool {
        !self.unread.is_empty() || self.fragments.is_some() || self.discard.is_some()
    }

    /// The next message if the bytes so far complete one.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            if let Some(discard) = &mut self.discard {
                let dropped = discard.left.min(self.unread.len());
                discard.left -= dropped;
                let (left, fin, len) = (discard.left, discard.fin, discard.len);
                self.consume(dropped);
                if left > 0 {
                    return Ok(None);
                }
                if fin {
                    self.discard = None;
                    return Ok(Some(Message::Discarded(len)));
                }
            }
            let Some(header) = self.header()? else {
                return Ok(None);
            };
            if header.is_control() {
                return match self.take_payload(&header) {
                    Some(payload) => control(header.opcode, payload).map(Some),
                    None => Ok(None),
                };
            }
            let so_far = match (header.opcode, &self.fragments, &self.discard) {
                (TEXT | BINARY, None, None) => 0,
                (TEXT | BINARY, _, _) => {
                    return Err(FrameError::Protocol(
                        "a message began before the previous one ended",
                    ));
                }
                (CONTINUATION, Some(partial), _) => partial.payload.len(),
                (CONTINUATION, None, Some(discard)) => discard.len,
                (CONTINUATION, None, None) => {
                    return Err(FrameError::Protocol(
                        "a continuation frame without a message",
                    ));
                }
                _ => return Err(FrameError::Protocol("unknown opcode")),
            };
            // Refused on the header alone: an oversized message is never buffered.
            let len = usize::try_from(header.len)
                .ok()
                .and_then(|len| Some((len, so_far.checked_add(len)?)))
                .filter(|&(_, total)| total <= self.max_message);
            let Some((len, total)) = len else {
                return Err(FrameError::TooLarge(self.max_message));
            };
            if total > self.max_kept || self.discard.is_some() {
                if self.unread.len() < header.size {
                    return Ok(None);
                }
                // Dropped from here on, what was kept of it included.
                self.consume(header.size);
                self.fragments = None;
                self.discard = Some(Discard {
                    len: total,
                    left: len,
                    fin: header.fin,
                });
                continue;
            }
            let Some(payload) = self.take_payload(&header) else {
                return Ok(None);
            };
            let mut partial = match self.fragments.take() {
                Some(mut partial) => {
                    partial.payload.extend_from_slice(&payload);
                    partial
                }
                None => Partial {
                    opcode: header.opcode,
                    payload,
                    valid: 0,
                },
            };
            if !header.fin {
                // A text message is refused at its first invalid byte, not at its end: only
                // the bytes since the last check are read, and a character cut between two
                // fragments waits for the next one.
                if partial.opcode == TEXT {
                    let unchecked = &partial.payload[partial.valid..];
                    partial.valid += match std::str::from_utf8(unchecked) {
                        Ok(_) => unchecked.len(),
                        Err(e) if e.error_len().is_none() => e.valid_up_to(),
                        Err(_) => return Err(FrameError::NotUtf8),
                    };
                }
                self.fragments = Some(partial);
                continue;
            }
            let Partial {
                opcode, payload, ..
            } = partial;
            return match opcode {
                TEXT => String::from_utf8(payload)
                    .map(|text| Some(Message::Text(text)))
                    .map_err(|_| FrameError::NotUtf8),
                _ => Ok(Some(Message::Binary(payload))),
            };
        }
    }

    /// The next frame's header, once its bytes up to the length have arrived (the masking key
    /// may still be missing, so that a length over the limit is refused at once).
    fn header(&self) -> Result<Option<Header>, FrameError> {
        let buf = &self.unread;
        let [first, second, ..] = buf[..] else {
            return Ok(None);
        };
        if first & RESERVED != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if second & MASKED == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (fin, opcode) = (first & FIN != 0, first & 0x0F);
        let (len, size) = match second & !MASKED {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            len => (u64::from(len), 2),
        };
        let header = Header {
            fin,
            opcode,
            len,
            size: size + 4,
        };
        if header.is_control() && (!fin || len > MAX_CONTROL) {
            return Err(FrameError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        Ok(Some(header))
    }

    /// The unmasked payload of the frame `header` begins, once all of it has arrived; the
    /// frame is then taken from the input.
    fn take_payload(&mut self, header: &Header) -> Option<Vec<u8>> {
        let len = usize::try_from(header.len).ok()?;
        let mask = self.unread.get(header.size - 4..header.size)?;
        let masked = self
            .unread
            .get(header.size..header.size.checked_add(len)?)?;
        let payload = masked
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key)
            .collect();
        self.consume(header.size + len);
        Some(payload)
    }

    /// Forgets the first `count` unread bytes.
    fn consume(&mut self, count: usize) {
        if count == self.unread.len() {
            // Release the buffer: an idle connection keeps none.
            self.unread = Vec::new();
        } else {
            self.unread.drain(..count);
        }
    }
}

fn control(opcode: u8, payload: Vec<u8>) -> Result<Message, FrameError> {
    match opcode {
        CLOSE => match payload[..] {
            [] => Ok(Message::Close(None)),
            [_] => Err(FrameError::Protocol("a close frame with a one-byte code")),
            [a, b, ref reason @ ..] => {
                let code = u16::from_be_bytes([a, b]);
                if !close_code_allowed(code) {
                    return Err(FrameError::Protocol("a close code that must not be sent"));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(FrameError::NotUtf8);
                }
                Ok(Message::Close(Some(code)))
            }
        },
        PING => Ok(Message::Ping(payload)),
        PONG => Ok(Message::Pong),
        _ => Err(FrameError::Protocol("unknown opcode")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(MASKED | n as u8),
            n @ 126..=0xFFFF => {
                out.push(MASKED | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(MASKED | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
        out
    }

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Message, FrameError>> {
        let mut reader = Reader::new(max);
        reader.extend(bytes);
        let mut out = Vec::new();
        loop {
            match reader.next_message() {
                Ok(Some(message)) => out.push(Ok(message)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn encodes_each_length_form() {
        assert_eq!(&encode(TEXT, b"hi")[..], b"\x81\x02hi");
        for (len, header) in [(125, 2), (126, 4), (0xFFFF, 4), (0x10000, 10)] {
            let frame = encode(TEXT, &vec![b'x'; len]);
            assert_eq!(frame.len(), header + len);
            assert_eq!(payload(&frame).len(), len);
        }
        assert_eq!(&encode(TEXT, &[b'x'; 126])[..4], [0x81, 126, 0, 126]);
        assert_eq!(&encode(PING, b"")[..], [0x89, 0]);
    }

    #[test]
    fn close_frames_carry_code_and_a_reason_cut_at_a_char_boundary() {
        assert_eq!(&encode_close(1001, "bye")[..], b"\x88\x05\x03\xe9bye");
        let long = "é".repeat(100);
        let frame = encode_close(1008, &long);
        let reason = &payload(&frame)[2..];
        assert!(reason.len() <= 123);
        assert!(std::str::from_utf8(reason).is_ok());
    }

    #[test]
    fn reads_masked_messages_of_every_length_form() {
        for len in [0, 5, 125, 126, 70_000] {
            let text = "y".repeat(len);
            let got = read_all(&client_frame(FIN | TEXT, text.as_bytes()), 100_000);
            assert_eq!(got, [Ok(Message::Text(text))]);
        }
    }

    #[test]
    fn waits_for_the_rest_of_a_frame_byte_by_byte() {
        let frame = client_frame(FIN | TEXT, b"hello");
        let mut reader = Reader::new(100);
        for (i, byte) in frame.iter().enumerate() {
            assert_eq!(reader.next_message(), Ok(None), "after {i} bytes");
            reader.extend(&[*byte]);
        }
        assert_eq!(
            reader.next_message(),
            Ok(Some(Message::Text("hello".into())))
        );
        assert_eq!(reader.unread.capacity(), 0, "no buffer kept at rest");
    }

    #[test]
    fn joins_fragments_with_control_frames_in_between() {
        let mut bytes = client_frame(TEXT, b"hel");
        bytes.extend(client_frame(FIN | PING, b"p"));
        bytes.extend(client_frame(CONTINUATION, b"lo "));
        bytes.extend(client_frame(FIN | CONTINUATION, b"world"));
        bytes.extend(client_frame(FIN | BINARY, &[1, 2]));
        bytes.extend(client_frame(FIN | PONG, b""));
        bytes.extend(client_frame(FIN | CLOSE, &1000u16.to_be_bytes()));
        assert_eq!(
            read_all(&bytes, 100),
            [
                Ok(Message::Ping(b"p".to_vec())),
                Ok(Message::Text("hello world".into())),
                Ok(Message::Binary(vec![1, 2])),
                Ok(Message::Pong),
                Ok(Message::Close(Some(1000))),
            ]
        );
    }

    #[test]
    fn refuses_what_breaks_the_protocol() {
        let unmasked = b"\x81\x02hi".to_vec();
        let reserved = client_frame(FIN | 0x40 | TEXT, b"x");
        let long_ping = client_frame(FIN | PING, &[0; 126]);
        let split_ping = client_frame(PING, b"");
        let stray = client_frame(FIN | CONTINUATION, b"x");
        let mut interleaved = client_frame(TEXT, b"a");
        interleaved.extend(client_frame(FIN | TEXT, b"b"));
        let unknown = client_frame(FIN | 0x3, b"");
        let short_close = client_frame(FIN | CLOSE, &[3]);
        for bytes in [
            unmasked,
            reserved,
            long_ping,
            split_ping,
            stray,
            interleaved,
            unknown,
            short_close,
        ] {
            let got = read_all(&bytes, 1000);
            assert!(
                matches!(got.last(), Some(Err(FrameError::Protocol(_)))),
                "{bytes:?} gave {got:?}"
            );
        }
        let got = read_all(&client_frame(FIN | TEXT, &[0xff, 0xfe]), 1000);
        assert_eq!(got, [Err(FrameError::NotUtf8)]);
        assert_eq!(FrameError::NotUtf8.close_code(), INVALID_PAYLOAD);
    }

    #[test]
    fn refuses_an_oversized_message_from_its_header_alone() {
        let frame = client_frame(FIN | TEXT, &[b'x'; 2000]);
        // Only the header has arrived: refused before the payload is buffered.
        let got = read_all(&frame[..8], 1000);
        assert_eq!(got, [Err(FrameError::TooLarge(1000))]);
        // Fragments add up against the same limit.
        let mut bytes = client_frame(TEXT, &[b'x'; 600]);
        bytes.extend(client_frame(FIN | CONTINUATION, &[b'x'; 600]));
        assert_eq!(read_all(&bytes, 1000), [Err(FrameError::TooLarge(1000))]);
        // A ping between fragments that nearly fill the limit is still read.
        let mut bytes = client_frame(TEXT, &[b'x'; 990]);
        bytes.extend(client_frame(FIN | PING, &[b'p'; 20]));
        assert_eq!(read_all(&bytes, 1000), [Ok(Message::Ping(vec![b'p'; 20]))]);
        // A 64-bit length beyond usize or the limit never allocates.
        let mut huge = vec![FIN | TEXT, MASKED | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(read_all(&huge, 1000), [Err(FrameError::TooLarge(1000))]);
    }

    #[test]
    fn close_codes_that_must_not_be_sent_break_the_protocol() {
        // Autobahn 7.9.*, and the rest RFC 6455 §7.4 keeps from the wire.
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let got = read_all(&client_frame(FIN | CLOSE, &u16::to_be_bytes(code)), 1000);
            assert_eq!(
                got,
                [Err(FrameError::Protocol(
                    "a close code that must not be sent"
                ))],
                "{code}"
            );
            assert_eq!(got[0].as_ref().map_err(FrameError::close_code), Err(1002));
        }
        // Autobahn 7.7.*, and the codes IANA registered since.
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 3999, 4000, 4999,
        ] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice("bye ✓".as_bytes());
            let got = read_all(&client_frame(FIN | CLOSE, &payload), 1000);
            assert_eq!(got, [Ok(Message::Close(Some(code)))], "{code}");
        }
    }

    #[test]
    fn a_fragmented_text_is_refused_at_its_first_invalid_fragment() {
        // Autobahn 6.4.1: the second fragment is invalid UTF-8 and the message goes on after
        // it: refused at once, not when its last fragment arrives.
        let mut reader = Reader::new(1000);
        reader.extend(&client_frame(TEXT, "κόσμε".as_bytes()));
        reader.extend(&client_frame(CONTINUATION, &[0xf4, 0x90, 0x80, 0x80]));
        assert_eq!(reader.next_message(), Err(FrameError::NotUtf8));
        // A character cut between two fragments is fine.
        let euro = "€".as_bytes();
        let mut reader = Reader::new(1000);
        reader.extend(&client_frame(TEXT, &euro[..1]));
        reader.extend(&client_frame(CONTINUATION, &euro[1..2]));
        reader.extend(&client_frame(FIN | CONTINUATION, &euro[2..]));
        assert_eq!(
            reader.next_message(),
            Ok(Some(Message::Text("€".to_owned())))
        );
    }

    #[test]
    fn a_close_reason_that_is_not_utf8_is_invalid_payload() {
        // Autobahn 7.5.1: a UTF-8 sequence cut by a surrogate.
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xed, 0xa0, 0x80, 0x65]);
        let got = read_all(&client_frame(FIN | CLOSE, &payload), 1000);
        assert_eq!(got, [Err(FrameError::NotUtf8)]);
    }

    #[test]
    fn a_message_over_the_kept_size_is_dropped_as_it_arrives() {
        let mut reader = Reader::new(10_000);
        reader.discard_over(100);
        let mut bytes = client_frame(TEXT, &[b'x'; 60]);
        bytes.extend(client_frame(FIN | PING, b"p"));
        // This fragment takes the message over 100 bytes: from here it is dropped.
        bytes.extend(client_frame(CONTINUATION, &[b'x'; 3000]));
        bytes.extend(client_frame(FIN | CONTINUATION, &[b'x'; 3000]));
        bytes.extend(client_frame(FIN | TEXT, b"next"));
        let mut got = Vec::new();
        for chunk in bytes.chunks(512) {
            reader.extend(chunk);
            assert!(reader.pending());
            while let Some(message) = reader.next_message().expect("acceptable frames") {
                got.push(message);
            }
            // Nothing is kept beyond the bytes of the chunk just read.
            assert!(reader.unread.len() <= 512, "{} kept", reader.unread.len());
            assert!(
                reader
                    .fragments
                    .as_ref()
                    .is_none_or(|p| p.payload.len() <= 100)
            );
        }
        assert_eq!(
            got,
            [
                Message::Ping(b"p".to_vec()),
                Message::Discarded(6060),
                Message::Text("next".into()),
            ]
        );
        assert!(!reader.pending());
        // A message over the size limit still ends the connection, dropped or not.
        let mut reader = Reader::new(1000);
        reader.discard_over(100);
        reader.extend(&client_frame(TEXT, &[b'x'; 600]));
        reader.extend(&client_frame(FIN | CONTINUATION, &[b'x'; 600])[..8]);
        assert_eq!(reader.next_message(), Err(FrameError::TooLarge(1000)));
    }

    #[test]
    fn a_raised_limit_applies_from_the_next_frame() {
        let mut reader = Reader::new(100);
        reader.extend(&client_frame(FIN | TEXT, b"connect"));
        let big = client_frame(FIN | TEXT, &[b'x'; 500]);
        reader.extend(&big[..8]);
        assert_eq!(
            reader.next_message(),
            Ok(Some(Message::Text("connect".into())))
        );
        reader.set_max_message(1000);
        assert_eq!(reader.next_message(), Ok(None));
        assert!(reader.pending());
        reader.extend(&big[8..]);
        assert_eq!(
            reader.next_message(),
            Ok(Some(Message::Text("x".repeat(500))))
        );
        assert!(!reader.pending());
    }
}
