//! A Socket.IO v4 client over Engine.IO HTTP long-polling, spoken by hand over two keep-alive
//! HTTP/1.1 connections: one carries the GETs that take what the server queued (while the
//! session runs one is always pending: the long poll), the other the POSTs that bring the
//! client's packets. The handshake is the websocket client's (`client.rs`) in polling form:
//! GET open packet, POST `40{"token"}`, the subscribe event, each answer read from a poll.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cli::Protocol;
use crate::client::{self, ClientContext, Failure, HandshakeError, Read};
use crate::http1;
use crate::target;
use crate::wire::{self, Answer};

/// How long a closing client waits for its close to be answered.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

type Connection = BufReader<TcpStream>;

/// A poll in flight: its answer's body, and the connection back when it stays open.
type PendingPoll = Pin<Box<dyn Future<Output = (Result<Vec<u8>>, Option<Connection>)> + Send>>;

/// The open packet's part the client reads.
#[derive(Deserialize)]
struct OpenPacket {
    sid: String,
}

/// A connected, subscribed polling client.
pub struct PollingSession {
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    /// `GET <path>?…&sid=… HTTP/1.1` and the Host header, the whole request of a poll.
    poll_request: String,
    /// The head of a POST up to its Content-Length.
    post_head: String,
    /// The connection for polls, while no poll is in flight.
    poll_connection: Option<Connection>,
    /// The connection for POSTs; opened again when the server closed it.
    post_connection: Option<Connection>,
    poll: Option<PendingPoll>,
    /// Packets of the last poll's payload not yet read.
    pending: VecDeque<String>,
    closed: bool,
}

impl PollingSession {
    /// Runs the handshake of connection `index` (open, CONNECT with its token, subscribe to its
    /// channel) within the context's timeout.
    pub async fn open(context: &ClientContext, index: usize) -> Result<Self, HandshakeError> {
        match tokio::time::timeout(context.timeout(), Self::handshake(context, index)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(HandshakeError::new(
                Failure::Timeout,
                format!("handshake took longer than {:?}", context.timeout()),
            )),
        }
    }

    async fn handshake(context: &ClientContext, index: usize) -> Result<Self, HandshakeError> {
        let target = context.target_of(index);
        let source = context.source_of(index);
        let token = context.token(index)?;
        let path = format!("{}/socket.io/?EIO=4&transport=polling", target.path);
        let mut poll_connection = connect(target.addr, source)
            .await
            .map_err(|e| HandshakeError::new(Failure::Tcp, format!("{e:#}")))?;
        let open = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", target.authority);
        let (body, keep) = exchange(&mut poll_connection, open.as_bytes())
            .await
            .map_err(|e| HandshakeError::new(Failure::Upgrade, format!("handshake: {e:#}")))?;
        let text = String::from_utf8_lossy(&body);
        let sid = text
            .strip_prefix('0')
            .and_then(|open| serde_json::from_str::<OpenPacket>(open).ok())
            .map(|open| open.sid)
            .ok_or_else(|| {
                client::protocol_error(format!("expected the Engine.IO open packet, got {text:?}"))
            })?;
        let mut session = PollingSession {
            addr: target.addr,
            source,
            poll_request: format!(
                "GET {path}&sid={sid} HTTP/1.1\r\nHost: {}\r\n\r\n",
                target.authority
            ),
            post_head: format!(
                "POST {path}&sid={sid} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: ",
                target.authority
            ),
            poll_connection: keep.then_some(poll_connection),
            post_connection: None,
            poll: None,
            pending: VecDeque::new(),
            closed: false,
        };
        session
            .request(
                wire::socketio_connect(&token),
                Failure::ConnectError,
                wire::socketio_connect_answer,
            )
            .await?;
        let channel = context.channel_of(index);
        session
            .request(
                wire::subscribe(Protocol::Socketio, channel),
                Failure::Subscribe,
                |text| wire::subscribe_answer(Protocol::Socketio, text, channel),
            )
            .await?;
        Ok(session)
    }

    /// The next packet; cancel-safe (a poll in flight is kept for the next call), so it can be
    /// raced against commands.
    pub async fn read(&mut self) -> Read {
        loop {
            if let Some(packet) = self.pending.pop_front() {
                match packet.as_str() {
                    "2" => return Read::Ping,
                    wire::ENGINEIO_CLOSE => {
                        self.closed = true;
                        return Read::Closed;
                    }
                    // Noop: a poll released without news.
                    "6" => continue,
                    _ => return Read::Text(Utf8Bytes::from(packet)),
                }
            }
            if self.closed {
                return Read::Closed;
            }
            if self.poll.is_none() {
                let connection = match self.poll_connection.take() {
                    Some(connection) => connection,
                    None => match connect(self.addr, self.source).await {
                        Ok(connection) => connection,
                        Err(_) => {
                            self.closed = true;
                            return Read::Closed;
                        }
                    },
                };
                self.poll = Some(Box::pin(poll_once(connection, self.poll_request.clone())));
            }
            let Some(poll) = self.poll.as_mut() else {
                continue;
            };
            let (body, connection) = poll.await;
            self.poll = None;
            self.poll_connection = connection;
            let Ok(body) = body else {
                self.closed = true;
                return Read::Closed;
            };
            let Ok(payload) = String::from_utf8(body) else {
                self.closed = true;
                return Read::Closed;
            };
            self.pending
                .extend(wire::payload_packets(&payload).map(str::to_owned));
        }
    }

    /// Sends one packet in a POST.
    pub async fn send(&mut self, packet: String) -> Result<(), HandshakeError> {
        self.post(&packet)
            .await
            .map_err(|e| client::protocol_error(format!("POST {packet:?}: {e:#}")))
    }

    async fn post(&mut self, packet: &str) -> Result<()> {
        let mut connection = match self.post_connection.take() {
            Some(connection) => connection,
            None => connect(self.addr, self.source).await?,
        };
        let request = format!("{}{}\r\n\r\n{packet}", self.post_head, packet.len());
        let (body, keep) = exchange(&mut connection, request.as_bytes()).await?;
        if body != b"ok" {
            bail!("answered {:?}", String::from_utf8_lossy(&body));
        }
        if keep {
            self.post_connection = Some(connection);
        }
        Ok(())
    }

    /// Sends `packet` and reads until `answer` accepts or refuses a packet (answering pings and
    /// skipping others); a refusal is a `refused` failure.
    pub async fn request(
        &mut self,
        packet: String,
        refused: Failure,
        answer: impl Fn(&str) -> Answer,
    ) -> Result<(), HandshakeError> {
        self.send(packet).await?;
        loop {
            match self.read().await {
                Read::Ping => self.send(wire::ENGINEIO_PONG.to_owned()).await?,
                Read::Text(text) => match answer(&text) {
                    Answer::Accepted => return Ok(()),
                    Answer::Refused => {
                        return Err(HandshakeError::new(refused, text.as_str().to_owned()));
                    }
                    Answer::Other => {}
                },
                Read::Closed => {
                    return Err(client::protocol_error(
                        "the session closed during the handshake".to_owned(),
                    ));
                }
            }
        }
    }

    /// Leaves politely: Engine.IO's close packet, then the pending poll's answer (a noop), each
    /// waited for at most a second.
    pub async fn close(mut self) {
        if self.closed {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.post(wire::ENGINEIO_CLOSE)).await;
        if let Some(poll) = self.poll.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, poll).await;
        }
    }
}

/// Opens one keep-alive connection.
async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<Connection> {
    let stream = target::connect(addr, source)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    Ok(BufReader::new(stream))
}

/// Writes one request and reads its 200 answer; returns the body and whether the connection
/// stays open.
async fn exchange(connection: &mut Connection, request: &[u8]) -> Result<(Vec<u8>, bool)> {
    connection
        .get_mut()
        .write_all(request)
        .await
        .context("write")?;
    let mut body = Vec::new();
    let head = http1::read_response(connection, &mut body).await?;
    if head.status != 200 {
        bail!("HTTP {}: {}", head.status, String::from_utf8_lossy(&body));
    }
    Ok((body, !head.close))
}

/// One poll on `connection`.
async fn poll_once(
    mut connection: Connection,
    request: String,
) -> (Result<Vec<u8>>, Option<Connection>) {
    match exchange(&mut connection, request.as_bytes()).await {
        Ok((body, true)) => (Ok(body), Some(connection)),
        Ok((body, false)) => (Ok(body), None),
        Err(e) => (Err(e), None),
    }
}
