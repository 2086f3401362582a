//! What the HTTP serve loop ([`super::http`]) promises for any bytes a client sends, beyond not
//! panicking: the property of the fuzz target `http_head`, replayed on stable by `fuzz_replay`'s
//! unit tests. Compiled for tests and for fuzzing only (cargo-fuzz sets `--cfg fuzzing`).
//!
//! The connection is the node's own (`serve_connection`: hyper with its limits and timeouts,
//! the timed body) over an in-memory stream, answered by an echo. Its runtime's clock is paused:
//! when everything waits, time jumps to the next timer, so the head and body timeouts fire at
//! once and a run takes what the bytes take, not what the timeouts take.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::http::{MAX_HEAD_SIZE, is_body_timeout, serve_connection};

/// How long a request body may take here.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// What the client waits after its last byte before it closes its side: past every timeout
/// of the connection, so everything it will ever answer has been written.
const LINGER: Duration = Duration::from_secs(120);
/// Time by which every connection here must have ended.
const DEADLINE: Duration = Duration::from_secs(600);
/// Largest body the echo reads (far above any input's).
const MAX_BODY: usize = 1 << 20;
/// The echo's header naming the request's method: a response to HEAD has no body to read.
const ECHO_METHOD: &str = "echo-method";
/// The header the input's padding is: `x-pad: aaa…`.
const PAD_NAME: &[u8] = b"x-pad: ";
/// Headers a request may have (hyper's default); one more is refused with 431.
const MAX_HEADERS: usize = 100;

/// The serve loop, fed bytes in chunks whose sizes come from the input:
/// `pad: u16 LE, n: u8, n chunk sizes (each + 1), stream`; the chunks cover the stream in
/// order and the rest is one last chunk. With `pad` above 0, a header of `2 × pad` bytes
/// of padding follows the stream's first line, so heads reach past the limit.
///
/// Read in those chunks, the stream is answered as when it is read whole, but for how a broken
/// one is refused (see [`answered`]); everything
/// written is a well-formed response; the connection ends; every request echoed is the one
/// the client sent in that place (method, target, body), none is answered that the client did
/// not finish, and a request that is not answered follows one that closed the connection or
/// is the one refused with an error. With no padding, the first request is padded to a head of
/// exactly the limit, which is not refused for its size, and to one byte more, which is (431).
pub fn http_head(input: &[u8]) {
    let Some((pad, sizes, stream)) = split_input(input) else {
        return;
    };
    let stream = padded(stream, usize::from(pad) * 2);
    let answers = read_answers(&serve(&[&stream]));
    let in_chunks = read_answers(&serve(&chunks(&stream, sizes)));
    assert_eq!(
        answered(&answers),
        answered(&in_chunks),
        "answered in chunks as whole"
    );
    check_echoes(&answers, &sent(&stream));
    if pad == 0 {
        check_head_limit(&stream);
    }
}

/// The answers but a last refusal. Only how a connection ends may depend on how its bytes
/// arrive: a broken head read whole is refused (400) at once, while in pieces hyper parses a head
/// only once its end has arrived, so the same bytes end in the head timeout (no answer) or, past
/// the limit, in 431.
fn answered(answers: &[Answer]) -> &[Answer] {
    match answers.split_last() {
        Some((last, rest)) if last.is_refusal() => rest,
        _ => answers,
    }
}

/// The input's padding, chunk sizes and stream.
fn split_input(input: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let (pad, rest) = input.split_first_chunk::<2>()?;
    let (&n, rest) = rest.split_first()?;
    let n = usize::from(n);
    if rest.len() < n {
        return None;
    }
    let (sizes, stream) = rest.split_at(n);
    Some((u16::from_le_bytes(*pad), sizes, stream))
}

/// `stream` in chunks of the given sizes (each + 1), then the rest in one.
fn chunks<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = stream;
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((usize::from(size) + 1).min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    if !rest.is_empty() {
        chunks.push(rest);
    }
    chunks
}

/// `stream` with a padding header of `pad` bytes after its first line (as it is without one,
/// or with `pad` at 0).
fn padded(stream: &[u8], pad: usize) -> Vec<u8> {
    let Some(end) = stream.iter().position(|&b| b == b'\n').filter(|_| pad > 0) else {
        return stream.to_vec();
    };
    let mut padded = Vec::with_capacity(stream.len() + PAD_NAME.len() + pad + 2);
    padded.extend_from_slice(&stream[..=end]);
    padded.extend_from_slice(PAD_NAME);
    padded.resize(padded.len() + pad, b'a');
    padded.extend_from_slice(b"\r\n");
    padded.extend_from_slice(&stream[end + 1..]);
    padded
}

thread_local! {
    /// One runtime per thread, its clock paused (see the module's comment).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

/// Everything the serve loop writes to a client that sends `chunks` a millisecond apart,
/// waits [`LINGER`] and closes its side; panics unless the connection then ends.
fn serve(chunks: &[&[u8]]) -> Vec<u8> {
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            // Held until the connection ends: a dropped sender reads as the node's shutdown.
            let (_closing, closing) = watch::channel(false);
            let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000);
            let connection = tokio::spawn(serve_connection(
                server,
                remote,
                Router::new().fallback(echo),
                BODY_TIMEOUT,
                closing,
                (),
            ));
            let (mut reader, mut writer) = tokio::io::split(client);
            let write = async move {
                for chunk in chunks {
                    // Fails once the server has closed: what it answered is still to read.
                    if writer.write_all(chunk).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(LINGER).await;
                let _ = writer.shutdown().await;
            };
            let read = async move {
                let mut written = Vec::new();
                let _ = reader.read_to_end(&mut written).await;
                written
            };
            let ((), written) = tokio::time::timeout(DEADLINE, async { tokio::join!(write, read) })
                .await
                .expect("the connection ends after the client closes");
            tokio::time::timeout(DEADLINE, connection)
                .await
                .expect("the connection's task ends")
                .expect("the connection's task does not panic");
            written
        })
    })
}

/// Answers a request with its method and target on a line, then its body.
async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) if is_body_timeout(&e) => return StatusCode::REQUEST_TIMEOUT.into_response(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let mut echoed = format!("{} {}\n", parts.method, parts.uri).into_bytes();
    echoed.extend_from_slice(&body);
    let mut response = echoed.into_response();
    if let Ok(method) = HeaderValue::from_str(parts.method.as_str()) {
        response.headers_mut().insert(ECHO_METHOD, method);
    }
    response
}

/// One response as the client reads it: its status, its headers but the date (hyper's clock
/// ticks in real seconds), and its body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// What an echo answered with: the request's method, and but for HEAD (answered without a
/// body) its target and body.
struct Echo<'a> {
    method: &'a str,
    target_and_body: Option<(&'a str, &'a str)>,
}

impl Answer {
    /// A 1xx: written before the request's own answer.
    fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// An error the server wrote instead of the echo's answer.
    fn is_refusal(&self) -> bool {
        self.status >= 400 && self.echoed().is_none()
    }

    /// What the echo answered, if this is one of its answers.
    fn echoed(&self) -> Option<Echo<'_>> {
        let method = self
            .headers
            .iter()
            .find_map(|(name, value)| (name == ECHO_METHOD).then_some(value.as_str()))
            .filter(|_| self.status == 200)?;
        Some(Echo {
            method,
            target_and_body: self.body.split_once('\n').map(|(line, body)| {
                let target = line.split_once(' ').map_or("", |(_, target)| target);
                (target, body)
            }),
        })
    }
}

/// The responses in what the server wrote; panics on anything else, or on one cut short.
fn read_answers(mut written: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    while !written.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(written) {
            Ok(httparse::Status::Complete(head)) => head,
            other => panic!(
                "the server wrote something else than a response ({other:?}): {:?}",
                String::from_utf8_lossy(written)
            ),
        };
        let status = response.code.expect("a complete response has a status");
        let mut length = None;
        let mut method = None;
        let mut kept = Vec::new();
        for header in response.headers.iter() {
            let name = header.name.to_ascii_lowercase();
            match name.as_str() {
                "date" => continue,
                "content-length" => {
                    let text = std::str::from_utf8(header.value).expect("a length in digits");
                    length = Some(text.parse::<usize>().expect("a length in digits"));
                }
                ECHO_METHOD => method = Some(header.value),
                _ => {}
            }
            kept.push((name, String::from_utf8_lossy(header.value).into_owned()));
        }
        // A 2xx to CONNECT opens a tunnel: no body, and no HTTP after it.
        let tunnel = method == Some(b"CONNECT") && (200..300).contains(&status);
        let length = if (100..200).contains(&status) || method == Some(b"HEAD") || tunnel {
            0
        } else {
            length.expect("every response the server writes has a length")
        };
        let body = written
            .get(head..head + length)
            .expect("a response is written whole");
        answers.push(Answer {
            status,
            headers: kept,
            body: String::from_utf8_lossy(body).into_owned(),
        });
        written = &written[head + length..];
        if tunnel {
            assert!(
                written.is_empty(),
                "nothing follows the start of a tunnel that no one took"
            );
        }
    }
    answers
}

/// One request of the client's stream, as httparse reads it.
#[derive(Debug)]
struct Sent {
    method: String,
    target: String,
    /// Its body, by its `Content-Length` (none: empty).
    body: Vec<u8>,
    /// It asks the server to close after answering it.
    closes: bool,
    /// Its bytes, head and body.
    bytes: Vec<u8>,
}

/// The requests the client sent, in order, and whether the rest is unknown to this reading
/// (a request framed otherwise than by one `Content-Length`, a CONNECT or an upgrade: the
/// server may still answer what follows) rather than incomplete or invalid (it may not).
fn sent(mut stream: &[u8]) -> (Vec<Sent>, bool) {
    let mut sent = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(stream) {
            Ok(httparse::Status::Complete(head)) => head,
            _ => return (sent, false),
        };
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return (sent, false);
        };
        let mut lengths = Vec::new();
        let mut other_framing = method == "CONNECT";
        let mut connection = Vec::new();
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                lengths.push(header.value);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding")
                || header.name.eq_ignore_ascii_case("upgrade")
            {
                other_framing = true;
            } else if header.name.eq_ignore_ascii_case("connection") {
                connection.extend(
                    header
                        .value
                        .split(|&b| b == b',')
                        .map(|token| token.trim_ascii().to_ascii_lowercase()),
                );
            }
        }
        let length = match lengths.as_slice() {
            [] => Some(0),
            [value] if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            _ => None,
        };
        let Some(length) = length.filter(|_| !other_framing) else {
            return (sent, true);
        };
        let Some(body) = stream.get(head..head.saturating_add(length)) else {
            return (sent, false);
        };
        let keep_alive = if version == 0 {
            connection.iter().any(|token| token == b"keep-alive")
        } else {
            !connection.iter().any(|token| token == b"close")
        };
        sent.push(Sent {
            method: method.to_owned(),
            target: target.to_owned(),
            body: body.to_vec(),
            closes: !keep_alive,
            bytes: stream[..head + length].to_vec(),
        });
        stream = &stream[head + length..];
    }
}

/// The echoes answer the requests sent, in order and each whole; a request not answered
/// comes after one that closed the connection, or is refused: with an error where it is, or
/// when sent alone. (hyper takes a request it cannot use, an invalid URI say, off its buffer
/// before it answers 400; when what follows is HTTP/2's preface, it closes without a word,
/// leaving the switch to HTTP/2 to a server that speaks both.)
fn check_echoes(answers: &[Answer], (sent, rest_unknown): &(Vec<Sent>, bool)) {
    let echoes: Vec<Echo> = answers.iter().filter_map(Answer::echoed).collect();
    for (i, (echo, request)) in echoes.iter().zip(sent).enumerate() {
        assert_eq!(echo.method, request.method, "request {i}'s method");
        if echo.method == "HEAD" {
            continue;
        }
        let (target, body) = echo.target_and_body.expect("an echo's line");
        // Only an origin-form target is echoed as sent, without a fragment (which has no place
        // in a request): the URI type writes other forms its way.
        if request.target.starts_with('/') {
            let sent = request.target.split('#').next().unwrap_or_default();
            assert_eq!(target, sent, "request {i}'s target");
        }
        assert_eq!(
            body,
            String::from_utf8_lossy(&request.body),
            "request {i}'s body"
        );
    }
    if *rest_unknown {
        return;
    }
    assert!(
        echoes.len() <= sent.len(),
        "{} requests echoed, {} sent",
        echoes.len(),
        sent.len()
    );
    if echoes.len() < sent.len() {
        let closed = echoes.len().checked_sub(1).is_some_and(|i| sent[i].closes);
        let refused = |answers: &[Answer]| {
            answers
                .iter()
                .rev()
                .find(|answer| !answer.is_interim())
                .is_some_and(Answer::is_refusal)
        };
        assert!(
            closed
                || refused(answers)
                || refused(&read_answers(&serve(&[&sent[echoes.len()].bytes]))),
            "request {} was sent whole, and neither answered nor refused: {answers:?}",
            echoes.len()
        );
    }
}

/// With its first request's head padded to exactly the limit, the connection does not refuse
/// it for its size; padded one byte more, it does (431).
fn check_head_limit(stream: &[u8]) {
    if stream.first().is_none_or(|b| matches!(b, b'\r' | b'\n')) {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    // Room for the padding header: one fewer than the most headers allowed.
    let Ok(httparse::Status::Complete(head)) = request.parse(stream) else {
        return;
    };
    if request.headers.len() >= MAX_HEADERS {
        return;
    }
    let Some(pad) = MAX_HEAD_SIZE
        .checked_sub(head + PAD_NAME.len() + 2)
        .filter(|&pad| pad > 0)
    else {
        return;
    };
    let first_status = |pad| {
        let answers = read_answers(&serve(&[&padded(stream, pad)]));
        answers
            .iter()
            .find(|answer| !answer.is_interim())
            .map(|answer| answer.status)
    };
    assert_ne!(
        first_status(pad),
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16()),
        "a head of {MAX_HEAD_SIZE} bytes is not refused for its size"
    );
    assert_eq!(
        first_status(pad + 1),
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16()),
        "a head of {} bytes is refused for its size",
        MAX_HEAD_SIZE + 1
    );
}
