//! The reference server of the official protocol test suites, built on Switchboard's own
//! Engine.IO implementation and websocket layer: what the node's Socket.IO front-end runs on,
//! checked against the protocols' own tests.
//!
//! - `/socket.io/`: Socket.IO over the engine, as the socket.io-protocol suite expects:
//!   namespaces `/` and `/custom`; a connect is answered, then `auth` is emitted with the
//!   CONNECT packet's auth payload; `message` is answered by `message-back` with the same
//!   arguments, binary attachments included, and `message-with-ack` by an ack with them.
//! - `/engine.io/`: a raw Engine.IO echo (the engine.io-protocol suite): every message comes
//!   back, text as text and binary as binary.
//! - `/echo`: a plain WebSocket echo of text and binary messages up to 16 MiB, for the
//!   Autobahn fuzzing client.
//!
//! Ping interval 300 ms, ping timeout 200 ms, max payload 1,000,000 bytes, connect timeout
//! 1,000 ms, as both suites expect. It listens on 127.0.0.1 and ::1 (the suites use
//! `localhost`, which may resolve to either).
//!
//! ```sh
//! cargo run --release --example conformance -- --port 3000
//! ```

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use serde_json::value::RawValue;
use switchboard::engine::{self, Engine, Handler, Opening, Refusal, Session};
use switchboard::id::random_id;
use switchboard::metrics::Metrics;
use switchboard::outbox::{CloseReason, Frame};
use switchboard::protocol::engineio;
use switchboard::protocol::socketio::{self as codec, Kind, Packet};
use switchboard::protocol::websocket::{self as framing, Message};
use switchboard::transport::http::{Timeouts, serve};
use switchboard::transport::websocket::{NotAnUpgrade, Upgrade, WebSocket};
use switchboard::transport::{Writes, close_within};
use tokio::net::TcpListener;

/// Largest message the `/echo` endpoint takes (Autobahn's largest cases are 16 MiB).
const ECHO_MAX_MESSAGE: usize = 16 << 20;
/// The namespaces a Socket.IO client may connect.
const NAMESPACES: [&str; 2] = ["/", "/custom"];

/// The reference server of the Socket.IO and Engine.IO protocol test suites.
#[derive(Debug, Parser)]
struct Args {
    /// The port to listen on, on 127.0.0.1 and ::1.
    #[arg(long, default_value_t = 3000)]
    port: u16,
}

/// The settings both test suites expect.
fn settings() -> engine::Settings {
    engine::Settings {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        pre_connect_max_payload: 1_000_000,
        connect_timeout: Duration::from_millis(1000),
        message_timeout: Duration::from_secs(10),
        send_queue_bytes: 16 << 20,
        writes: Writes {
            delay: Duration::ZERO,
            direct: true,
        },
        allowed_origins: HashSet::new(),
        close_abandoned_polls: true,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let metrics = Metrics::new().context("metrics")?;
    let socketio = Engine::new(Reference, settings(), Arc::default(), metrics.clone());
    let engineio = Engine::new(EchoEngine, settings(), Arc::default(), metrics);
    let app: Router = Router::new()
        .route("/socket.io/", engine::routes(Arc::new(socketio)))
        .route("/engine.io/", engine::routes(Arc::new(engineio)))
        .route("/echo", get(echo));
    let timeouts = Timeouts {
        body: Duration::from_secs(10),
        write: Duration::from_secs(10),
    };
    let mut listening = Vec::new();
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let address = SocketAddr::new(ip, args.port);
        match TcpListener::bind(address).await {
            Ok(listener) => {
                let stop = std::future::pending();
                tokio::spawn(serve(listener, app.clone(), timeouts, |_| Some(()), stop));
                listening.push(address.to_string());
            }
            // A host without IPv6 still serves the suites over 127.0.0.1.
            Err(e) if ip.is_ipv6() => tracing::warn!(%address, error = %e, "cannot listen"),
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {address}")),
        }
    }
    println!(
        "conformance server listening on {}",
        listening.join(" and ")
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    Ok(())
}

/// The raw Engine.IO echo of `/engine.io/`: every session is connected from its handshake.
struct EchoEngine;

impl Handler for EchoEngine {
    type Sockets = ();

    fn open(&self, _: &Opening<'_>) -> Result<(), Refusal> {
        Ok(())
    }

    fn connected(&self, _: &()) -> bool {
        true
    }

    async fn on_message(&self, session: &Session<()>, text: &str) -> Result<(), CloseReason> {
        let mut out = engineio::message(text.len());
        out.push_str(text);
        session.send(Frame::from(out));
        Ok(())
    }

    fn on_binary(&self, session: &Session<()>, data: Vec<u8>) -> Result<(), CloseReason> {
        session.send(Frame::binary(&data));
        Ok(())
    }

    fn on_close(&self, _: &Session<()>) {}
}

/// The Socket.IO reference behaviours of `/socket.io/`.
struct Reference;

/// What `/socket.io/` keeps per session.
#[derive(Debug, Default)]
struct Client {
    /// Whether a namespace was ever connected (the connect timeout stops then).
    connected: AtomicBool,
    state: Mutex<ClientState>,
}

#[derive(Debug, Default)]
struct ClientState {
    namespaces: HashSet<String>,
    /// A binary packet whose attachments are still arriving.
    partial: Option<Partial>,
}

/// A binary packet waiting for its attachments, and its answer (if it gets one).
#[derive(Debug)]
struct Partial {
    answer: Option<String>,
    expected: usize,
    attachments: Vec<Vec<u8>>,
}

impl Client {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes the session over a malformed packet, as Socket.IO's server does.
fn malformed(session: &Session<Client>, problem: &str) -> Result<(), CloseReason> {
    tracing::info!(sid = %session.sid, problem, "closing: malformed Socket.IO packet");
    Err(CloseReason::ProtocolError)
}

/// Queues one Socket.IO packet built by `write`.
fn send(session: &Session<Client>, write: impl FnOnce(&mut String)) {
    let mut out = engineio::message(64);
    write(&mut out);
    session.send(Frame::from(out));
}

impl Reference {
    /// Connects a namespace: its acceptance, then `auth` with the auth payload.
    fn connect(&self, session: &Session<Client>, packet: &Packet<'_>) -> Result<(), CloseReason> {
        let namespace = packet.namespace;
        if !NAMESPACES.contains(&namespace) {
            send(session, |out| {
                codec::write_connect_error(out, namespace, "Invalid namespace", None)
            });
            return Ok(());
        }
        let auth = packet.data.unwrap_or("{}");
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(auth).is_err() {
            return malformed(session, "the auth payload is not an object");
        }
        let Ok(auth) = serde_json::from_str::<&RawValue>(auth) else {
            return malformed(session, "the auth payload is not JSON");
        };
        let sid = random_id().map_err(|_| CloseReason::TransportError)?;
        session
            .sockets
            .lock()
            .namespaces
            .insert(namespace.to_owned());
        session.sockets.connected.store(true, Ordering::Release);
        send(session, |out| codec::write_connect(out, namespace, &sid));
        send(session, |out| {
            codec::write_event(out, namespace, "auth", &[auth])
        });
        Ok(())
    }

    /// An event or an ack from the client; binary ones wait for their attachments.
    fn on_packet(&self, session: &Session<Client>, packet: &Packet<'_>) -> Result<(), CloseReason> {
        let connected = session.sockets.lock().namespaces.contains(packet.namespace);
        let answer = match packet.kind {
            // Events on a namespace the client has not connected are ignored, as are its acks.
            Kind::Event | Kind::BinaryEvent if connected => {
                let Ok(event) = packet.event() else {
                    return malformed(session, "an event that is not [name, ...args]");
                };
                let (namespace, attachments) = (packet.namespace, packet.attachments);
                let mut out = engineio::message(64);
                match (event.name.as_str(), packet.ack) {
                    ("message", _) => {
                        let args = &event.args;
                        codec::write_event_args(
                            &mut out,
                            namespace,
                            attachments,
                            "message-back",
                            args,
                        );
                        Some(out)
                    }
                    ("message-with-ack", Some(id)) => {
                        codec::write_ack_args(&mut out, namespace, id, attachments, &event.args);
                        Some(out)
                    }
                    // Other events get no answer (their attachments are still read).
                    _ => None,
                }
            }
            _ => None,
        };
        if packet.attachments == 0 {
            if let Some(answer) = answer {
                session.send(Frame::from(answer));
            }
            return Ok(());
        }
        session.sockets.lock().partial = Some(Partial {
            answer,
            expected: packet.attachments,
            attachments: Vec::with_capacity(packet.attachments),
        });
        Ok(())
    }

    fn on_text(&self, session: &Session<Client>, text: &str) -> Result<(), CloseReason> {
        if session.sockets.lock().partial.is_some() {
            return malformed(session, "text while binary attachments were expected");
        }
        let Ok(packet) = codec::decode(text) else {
            return malformed(session, "undecodable");
        };
        match packet.kind {
            Kind::Connect => self.connect(session, &packet),
            Kind::Disconnect => {
                session.sockets.lock().namespaces.remove(packet.namespace);
                Ok(())
            }
            Kind::Event | Kind::BinaryEvent | Kind::Ack | Kind::BinaryAck => {
                self.on_packet(session, &packet)
            }
            // Only servers refuse connects; a client's CONNECT_ERROR means nothing.
            Kind::ConnectError => Ok(()),
        }
    }
}

impl Handler for Reference {
    type Sockets = Client;

    fn open(&self, _: &Opening<'_>) -> Result<Client, Refusal> {
        Ok(Client::default())
    }

    fn connected(&self, client: &Client) -> bool {
        client.connected.load(Ordering::Acquire)
    }

    async fn on_message(&self, session: &Session<Client>, text: &str) -> Result<(), CloseReason> {
        self.on_text(session, text)
    }

    fn on_binary(&self, session: &Session<Client>, data: Vec<u8>) -> Result<(), CloseReason> {
        let complete = {
            let mut state = session.sockets.lock();
            let Some(partial) = &mut state.partial else {
                drop(state);
                return malformed(session, "a binary message that no packet announced");
            };
            partial.attachments.push(data);
            if partial.attachments.len() < partial.expected {
                return Ok(());
            }
            state.partial.take()
        };
        if let Some(Partial {
            answer: Some(answer),
            attachments,
            ..
        }) = complete
        {
            session.send(Frame::from(answer));
            for attachment in attachments {
                session.send(Frame::binary(&attachment));
            }
        }
        Ok(())
    }

    fn on_close(&self, _: &Session<Client>) {}
}

/// `GET /echo`: a websocket that sends every message back.
async fn echo(ws: Result<Upgrade, NotAnUpgrade>) -> Response {
    match ws {
        Ok(ws) => ws.accept(ECHO_MAX_MESSAGE, |socket| async move {
            match socket {
                Ok(mut socket) => echo_messages(&mut socket).await,
                Err(e) => tracing::info!(error = %e, "websocket upgrade failed"),
            }
        }),
        Err(refusal) => refusal.into_response(),
    }
}

/// Echoes messages until the client closes or breaks the protocol; the close answers the
/// client's close frame, or names its error (1002, 1007, 1009).
async fn echo_messages(socket: &mut WebSocket) {
    loop {
        let frame = match socket.recv().await {
            Some(Ok(Message::Text(text))) => Frame::from(text),
            Some(Ok(Message::Binary(data))) => Frame::binary(&data),
            Some(Ok(Message::Ping(payload))) => Frame::pong(&payload),
            Some(Ok(Message::Pong | Message::Discarded(_))) => continue,
            Some(Ok(Message::Close(_)) | Err(_)) => {
                return close_within(socket, framing::NORMAL, "").await;
            }
            None => return,
        };
        if socket.send(&frame).await.is_err() {
            return;
        }
    }
}
