//! A tiny raw HTTP/1.1 client.
//!
//! Raw on purpose: tests see exactly what the server sent (status, every
//! header, body bytes), and [`http_from`] can bind the client socket to a chosen
//! 127.0.0.x address, which is how one test plays many clients behind nginx.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, lookup_host};

/// A whole request/response exchange must finish within this; a long-poll GET
/// is held by the server for at most the ping interval, so tests that poll
/// should set a short ping interval on the node.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// In the order received; names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "response body is not JSON ({err}); status {}, body: {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request and reads the whole response; panics if that fails.
pub async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    try_http(method, url, headers, body)
        .await
        .unwrap_or_else(|err| panic!("{method} {url}: {err}"))
}

/// Like [`http`], from a socket bound to `local_ip` (e.g. "127.0.0.2").
pub async fn http_from(
    local_ip: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http_from(local_ip, method, url, headers, body)
        .await
        .unwrap_or_else(|err| panic!("{method} {url} from {local_ip}: {err}"))
}

/// Like [`http`], but returns the error (connection refused, timeout, …).
pub async fn try_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    exchange(None, method, url, headers, body).await
}

/// Like [`http_from`], but returns the error.
pub async fn try_http_from(
    local_ip: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let local: IpAddr = local_ip
        .parse()
        .map_err(|err| invalid(format!("local address {local_ip:?}: {err}")))?;
    exchange(Some(local), method, url, headers, body).await
}

async fn exchange(
    local: Option<IpAddr>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let work = async {
        let (authority, target) = split_url(url)?;
        let mut stream = connect(local, &authority).await?;
        stream
            .write_all(&encode_request(method, &authority, &target, headers, body))
            .await?;
        read_response(&mut stream, method).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete response within {EXCHANGE_TIMEOUT:?}"),
            ))
        })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// "http://host:port/path?q" → ("host:port", "/path?q"); port 80 when absent.
fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("only http:// URLs are supported: {url}")))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.is_empty() {
        return Err(invalid(format!("no host in {url}")));
    }
    let target = match target {
        "" => "/".to_owned(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_owned(),
    };
    // A port is present when the last ':' comes after any IPv6 ']'.
    let has_port = match (authority.rfind(':'), authority.rfind(']')) {
        (Some(colon), Some(bracket)) => colon > bracket,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, target))
}

async fn connect(local: Option<IpAddr>, authority: &str) -> io::Result<TcpStream> {
    let mut candidates = lookup_host(authority).await?;
    let Some(local) = local else {
        return match candidates.next() {
            Some(remote) => TcpStream::connect(remote).await,
            None => Err(invalid(format!("{authority} resolves to no address"))),
        };
    };
    let remote = candidates
        .find(|remote| remote.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| {
            invalid(format!(
                "{authority} has no address of the same family as {local}"
            ))
        })?;
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(remote).await
}

fn encode_request(
    method: &str,
    authority: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let given = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    // Defaults only where the test did not choose; a test may well want to
    // send a wrong Host or an odd Connection on purpose.
    if !given("host") {
        head.push_str(&format!("Host: {authority}\r\n"));
    }
    if !given("connection") {
        // One exchange per connection keeps the reader simple and lets a
        // body without framing end at EOF.
        head.push_str("Connection: close\r\n");
    }
    if !given("content-length") && !given("transfer-encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads until the body is complete by its framing, so a server that keeps
/// the connection open despite `Connection: close` still works.
async fn read_response(stream: &mut TcpStream, method: &str) -> io::Result<HttpResponse> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before the end of the headers; got {:?}",
                    lossy(&buf)
                ),
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| {
        invalid(format!(
            "response head is not UTF-8: {:?}",
            lossy(&buf[..head_end])
        ))
    })?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let mut body = buf.split_off(head_end + 4);

    // RFC 9112 §6.3: these never carry a body, whatever the headers say.
    if method.eq_ignore_ascii_case("HEAD") || status < 200 || status == 204 || status == 304 {
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        response.body = loop {
            if let Some(decoded) = decode_chunked(&body)? {
                break decoded;
            }
            if read_more(stream, &mut body).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated chunked body",
                ));
            }
        };
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
        while body.len() < length {
            if read_more(stream, &mut body).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body ended after {} of {length} bytes", body.len()),
                ));
            }
        }
        body.truncate(length);
        response.body = body;
    } else {
        stream.read_to_end(&mut body).await?;
        response.body = body;
    }
    Ok(response)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The decoded body once `data` holds the whole chunked encoding (through the
/// last chunk and trailers), `None` while more bytes are needed.
fn decode_chunked(data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = lossy(&data[pos..pos + line_len]);
        // Chunk extensions (";name=value") are allowed and meaningless here.
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        pos += line_len + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(len) = find(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += len + 2;
                if len == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF".to_owned()));
        }
        pos += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
