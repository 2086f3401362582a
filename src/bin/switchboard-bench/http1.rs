//! Just enough HTTP/1.1 for the bench's own requests over keep-alive connections: reading one
//! response (Content-Length or chunked body), and a one-shot GET (the node's `/metrics`).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest response header block accepted.
const MAX_HEADER_LINES: usize = 64;
/// Largest response body accepted (a `/metrics` page is some tens of KiB).
const MAX_BODY: usize = 16 << 20;

/// One response's head: its status and whether the server closes the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub close: bool,
}

/// Reads one response into `body` (replacing its content).
pub async fn read_response<R: AsyncBufRead + Unpin>(
    connection: &mut R,
    body: &mut Vec<u8>,
) -> Result<Head> {
    let mut line = String::new();
    if connection.read_line(&mut line).await? == 0 {
        bail!("the server closed the connection");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = false;
    for _ in 0..MAX_HEADER_LINES {
        line.clear();
        if connection.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            body.clear();
            if chunked {
                read_chunks(connection, body).await?;
            } else {
                if length > MAX_BODY {
                    bail!("a body of {length} bytes is over the {MAX_BODY} accepted");
                }
                body.resize(length, 0);
                connection.read_exact(body).await?;
            }
            return Ok(Head { status, close });
        }
        let Some((name, value)) = header.split_once(':') else {
            bail!("bad header line {header:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .with_context(|| format!("bad Content-Length {value:?}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                bail!("unsupported Transfer-Encoding {value:?}");
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    bail!("more than {MAX_HEADER_LINES} header lines")
}

/// Appends a chunked body to `body`, up to and including its last (empty) chunk and trailers.
async fn read_chunks<R: AsyncBufRead + Unpin>(
    connection: &mut R,
    body: &mut Vec<u8>,
) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        connection.read_line(&mut line).await?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size.trim(), 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                line.clear();
                if connection.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        if body.len() + size > MAX_BODY {
            bail!("a chunked body over the {MAX_BODY} bytes accepted");
        }
        let start = body.len();
        body.resize(start + size, 0);
        connection.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        connection.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            bail!("a chunk not followed by CRLF");
        }
    }
}

/// `GET path` on a new connection to `addr`; the body of a 2xx answer as text.
pub async fn get(addr: SocketAddr, authority: &str, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .with_context(|| format!("GET {path}: write"))?;
    let mut reader = BufReader::new(stream);
    let mut body = Vec::new();
    let head = read_response(&mut reader, &mut body)
        .await
        .with_context(|| format!("GET {path}: read the response"))?;
    if !(200..300).contains(&head.status) {
        bail!(
            "GET {path}: HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&body)
        );
    }
    String::from_utf8(body).with_context(|| format!("GET {path}: the body is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(raw: &[u8]) -> Result<(Head, Vec<u8>)> {
        let mut reader = BufReader::new(raw);
        let mut body = Vec::new();
        let head = read_response(&mut reader, &mut body).await?;
        Ok((head, body))
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies() {
        let (head, body) = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .expect("sized");
        assert_eq!(
            (head.status, head.close, &body[..]),
            (200, false, &b"ok"[..])
        );
        let (head, body) = read(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .await
        .expect("chunked");
        assert_eq!(
            (head.status, head.close, &body[..]),
            (200, true, &b"abcde"[..])
        );
        assert!(
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
                .await
                .is_err()
        );
        assert!(read(b"").await.is_err());
    }
}
