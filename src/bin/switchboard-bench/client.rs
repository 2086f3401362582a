//! One bench client over websocket, spoken by hand, in either protocol (`wire.rs` has what
//! each one says): the handshake up to a confirmed subscription, then a loop that answers pings
//! and hands every event to the scenario.
//!
//! Kept small on purpose: 19,000 of these live in one process, so a client is one task, a
//! websocket with a 4 KiB read buffer, and nothing else allocated per connection.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::cli::{Common, Protocol};
use crate::target::{self, Target};
use crate::wire::{self, Answer, Event, Incoming};

/// How long a closing client waits for its close frame to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Smallest websocket read buffer. Going lower saves nothing: tungstenite keeps its 4 KiB
/// handshake buffer as the read buffer.
const MIN_READ_BUFFER: usize = 4096;
/// Largest websocket read buffer.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// The websocket read buffer for messages of about `message_size` bytes.
///
/// Small, because every client has one and tungstenite zero-fills it before each read.
pub fn read_buffer_for(message_size: usize) -> usize {
    (message_size + 256)
        .next_power_of_two()
        .clamp(MIN_READ_BUFFER, MAX_READ_BUFFER)
}

/// Why a handshake failed, as counted in the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection could not be opened.
    Tcp,
    /// The websocket upgrade was refused or broke.
    Upgrade,
    /// The server refused the client: Socket.IO's `44` connect error to CONNECT; on the JSON
    /// endpoint an HTTP refusal of the token or of the user's connection limit.
    ConnectError,
    /// The server refused the subscribe: `subscription_error`, or a JSON `ERROR` frame.
    Subscribe,
    /// The whole handshake took longer than the timeout.
    Timeout,
    /// The connection closed or carried something unexpected during the handshake.
    Protocol,
}

/// Handshake failures by kind.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Failures {
    pub tcp: u64,
    pub upgrade: u64,
    pub connect_error: u64,
    pub subscribe: u64,
    pub timeout: u64,
    pub protocol: u64,
}

impl Failures {
    /// Counts one failure.
    pub fn add(&mut self, failure: Failure) {
        let count = match failure {
            Failure::Tcp => &mut self.tcp,
            Failure::Upgrade => &mut self.upgrade,
            Failure::ConnectError => &mut self.connect_error,
            Failure::Subscribe => &mut self.subscribe,
            Failure::Timeout => &mut self.timeout,
            Failure::Protocol => &mut self.protocol,
        };
        *count += 1;
    }

    /// All failures together.
    pub fn total(&self) -> u64 {
        self.tcp + self.upgrade + self.connect_error + self.subscribe + self.timeout + self.protocol
    }
}

/// A handshake failure with the detail for the first-error line on stderr.
#[derive(Debug)]
pub struct HandshakeError {
    pub failure: Failure,
    pub detail: String,
}

impl HandshakeError {
    /// A failure of kind `failure`, with its detail.
    pub fn new(failure: Failure, detail: impl Into<String>) -> Self {
        Self {
            failure,
            detail: detail.into(),
        }
    }
}

/// What every client of a run shares: where to connect, what to speak and how to authenticate.
pub struct ClientContext {
    protocol: Protocol,
    targets: Vec<Target>,
    sources: Vec<Ipv4Addr>,
    key: EncodingKey,
    config: WebSocketConfig,
    channels: u32,
    timeout: Duration,
}

/// Claims of a bench token.
#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl ClientContext {
    /// A context for the clients `common` describes, connecting to `targets` from `sources`
    /// and receiving messages of about `message_size` bytes, read `read_buffer` bytes at a time.
    pub fn new(
        common: &Common,
        targets: Vec<Target>,
        sources: Vec<Ipv4Addr>,
        timeout: Duration,
        message_size: usize,
        read_buffer: usize,
    ) -> Self {
        let max_message = message_size.saturating_mul(2).saturating_add(64 * 1024);
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            // Write each frame at once: clients only send pongs and the odd subscribe.
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        Self {
            protocol: common.protocol,
            targets,
            sources,
            key: EncodingKey::from_secret(common.jwt_secret.as_bytes()),
            config,
            channels: common.channels,
            timeout,
        }
    }

    /// The channel connection `index` subscribes to.
    pub fn channel_of(&self, index: usize) -> u32 {
        (index % self.channels as usize) as u32
    }

    /// Runs the full handshake of connection `index`, within the timeout.
    pub async fn open(&self, index: usize) -> Result<Session, HandshakeError> {
        self.open_as(index, self.protocol).await
    }

    /// Runs the full handshake of connection `index` in `protocol`, within the timeout.
    pub async fn open_as(
        &self,
        index: usize,
        protocol: Protocol,
    ) -> Result<Session, HandshakeError> {
        match tokio::time::timeout(self.timeout, self.handshake(index, protocol)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(HandshakeError::new(
                Failure::Timeout,
                format!("handshake took longer than {:?}", self.timeout),
            )),
        }
    }

    /// How long one handshake may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server connection `index` goes to.
    pub fn target_of(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
    }

    /// The source address connection `index` binds to, if any.
    pub fn source_of(&self, index: usize) -> Option<Ipv4Addr> {
        (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()])
    }

    async fn handshake(&self, index: usize, protocol: Protocol) -> Result<Session, HandshakeError> {
        let target = self.target_of(index);
        let source = self.source_of(index);
        let token = self.token(index)?;
        let stream = target::connect(target.addr, source).await.map_err(|e| {
            HandshakeError::new(Failure::Tcp, format!("connect to {}: {e}", target.addr))
        })?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            target.websocket_url(protocol, &token),
            stream,
            Some(self.config),
        )
        .await
        .map_err(upgrade_failure)?;
        let channel = self.channel_of(index);
        let mut session = Session {
            ws,
            channel,
            protocol,
        };

        if protocol == Protocol::Socketio {
            let open = session.next_text().await?;
            if !open.starts_with('0') {
                return Err(protocol_error(format!(
                    "expected the Engine.IO open packet, got {open:?}"
                )));
            }
            session.send(wire::socketio_connect(&token)).await?;
            session
                .expect(Failure::ConnectError, wire::socketio_connect_answer)
                .await?;
        }
        session.send(wire::subscribe(protocol, channel)).await?;
        session
            .expect(Failure::Subscribe, |text| {
                wire::subscribe_answer(protocol, text, channel)
            })
            .await?;
        Ok(session)
    }

    /// A token for user `index`, valid for an hour.
    pub fn token(&self, index: usize) -> Result<String, HandshakeError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: index.to_string(),
            exp: now + 3600,
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .map_err(|e| protocol_error(format!("cannot sign a token: {e}")))
    }
}

/// A handshake that broke off or carried something unexpected.
pub fn protocol_error(detail: String) -> HandshakeError {
    HandshakeError::new(Failure::Protocol, detail)
}

/// A failed websocket upgrade: a refusal of the client itself (JSON endpoint) or of the upgrade.
fn upgrade_failure(error: tungstenite::Error) -> HandshakeError {
    if let tungstenite::Error::Http(response) = &error {
        let body = response.body().as_deref().unwrap_or_default();
        let failure = if wire::refuses_client(body) {
            Failure::ConnectError
        } else {
            Failure::Upgrade
        };
        return HandshakeError::new(
            failure,
            format!(
                "websocket upgrade: HTTP {}: {}",
                response.status(),
                String::from_utf8_lossy(body)
            ),
        );
    }
    HandshakeError::new(Failure::Upgrade, format!("websocket upgrade: {error}"))
}

/// A connected, subscribed client.
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    channel: u32,
    protocol: Protocol,
}

/// One read of a subscribed session.
pub enum Read {
    /// A text message (Socket.IO: the whole packet, `42…` for an event).
    Text(Utf8Bytes),
    /// An Engine.IO ping: send [`wire::ENGINEIO_PONG`].
    Ping,
    /// The server or the network ended the session.
    Closed,
}

/// How a held session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The bench asked it to stop; it was still open.
    Stopped,
    /// The server or the network closed it first.
    Dropped,
}

impl Session {
    /// The index of the channel this client subscribed to (`bench.{channel}`).
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Answers pings and hands every event to `on_event` until `stop` is sent or the
    /// connection ends; then closes the connection.
    ///
    /// Websocket pings (the JSON endpoint's heartbeat) are answered by tungstenite while the
    /// loop reads; Engine.IO's text pings here.
    pub async fn hold(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut on_event: impl FnMut(Event<'_>),
    ) -> End {
        // One future for the whole loop: a fresh `changed()` per message would register and
        // unregister a waiter under the channel's lock every time.
        let stopped = stop.changed();
        tokio::pin!(stopped);
        loop {
            let message = tokio::select! {
                biased;
                message = self.ws.next() => message,
                _ = &mut stopped => {
                    // Boxed: its timer would otherwise take room in every client's task.
                    Box::pin(self.close()).await;
                    return End::Stopped;
                }
            };
            let ping = match message {
                Some(Ok(Message::Text(text))) => match wire::incoming(self.protocol, &text) {
                    Incoming::Event(event) => {
                        on_event(event);
                        false
                    }
                    Incoming::Ping => true,
                    Incoming::Close => return End::Dropped,
                    Incoming::Other => false,
                },
                Some(Ok(Message::Close(_)) | Err(_)) | None => return End::Dropped,
                Some(Ok(_)) => false,
            };
            // The message is gone before this await, so the task need not keep room for it.
            if ping
                && self
                    .ws
                    .send(Message::text(wire::ENGINEIO_PONG))
                    .await
                    .is_err()
            {
                return End::Dropped;
            }
        }
    }

    /// Closes the connection politely: a close frame, then reading until the server's close
    /// answers it or the connection ends, at most a second in all. Waiting for the answer (as
    /// RFC 6455 asks) lets the server close the TCP connection first, so the TIME_WAIT stays on
    /// its side rather than taking the bench's ports, which matters when clients churn.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.send(Message::Close(None)).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }

    /// The next message; cancel-safe (nothing is lost if the future is dropped), so it can be
    /// raced against commands.
    pub async fn read(&mut self) -> Read {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return match wire::incoming(self.protocol, &text) {
                        Incoming::Ping => Read::Ping,
                        Incoming::Close => Read::Closed,
                        Incoming::Event(_) | Incoming::Other => Read::Text(text),
                    };
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Read::Closed,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends `text` and reads until `answer` accepts or refuses a message (skipping others);
    /// a refusal is a `refused` failure.
    pub async fn request(
        &mut self,
        text: String,
        refused: Failure,
        answer: impl Fn(&str) -> Answer,
    ) -> Result<(), HandshakeError> {
        self.send(text).await?;
        self.expect(refused, answer).await
    }

    /// Sends one text message.
    pub async fn send(&mut self, text: String) -> Result<(), HandshakeError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| protocol_error(format!("send: {e}")))
    }

    /// Reads until `answer` accepts or refuses a message; a refusal is a `refused` failure.
    async fn expect(
        &mut self,
        refused: Failure,
        answer: impl Fn(&str) -> Answer,
    ) -> Result<(), HandshakeError> {
        loop {
            let text = self.next_text().await?;
            match answer(&text) {
                Answer::Accepted => return Ok(()),
                Answer::Refused => return Err(HandshakeError::new(refused, text)),
                Answer::Other => {}
            }
        }
    }

    /// The next text message of the handshake, answering Engine.IO pings on the way.
    async fn next_text(&mut self) -> Result<String, HandshakeError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text)))
                    if wire::incoming(self.protocol, &text) == Incoming::Ping =>
                {
                    self.send(wire::ENGINEIO_PONG.to_owned()).await?;
                }
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(protocol_error(format!("closed by the server: {frame:?}")));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(protocol_error(format!("read: {e}"))),
                None => return Err(protocol_error("connection closed".to_owned())),
            }
        }
    }
}
