//! The floor: a deliberately minimal Socket.IO v4 fan-out server, the reference Switchboard's
//! CPU cost per delivery is measured against (`scripts/bench-compare`, docs/BENCHMARKS.md).
//!
//! It speaks just enough for `switchboard-bench`: `GET /health`, the websocket upgrade on
//! `/socket.io/?EIO=4&transport=websocket`, the Engine.IO open packet and pings (`2`, one timer
//! for all sockets, every `--ping-interval-ms`), CONNECT `40` answered by `40{"sid":…}`, and
//! `42["subscribe",{"channel":…}]` / `unsubscribe` answered by `subscribed` / `unsubscribed`.
//! It PSUBSCRIBEs `<prefix>*` on Redis and turns each Laravel payload
//! `{"event":…,"data":…,"socket":…}` into `42["event","channel",data]`, encoded once per message
//! with its websocket header into one `Bytes`, written to every subscriber.
//!
//! What it costs is the point, so it is built for that: one current-thread runtime; one task
//! per socket; client frames read into a small stack buffer and decoded by Switchboard's own
//! framing codec (`protocol::websocket`, which keeps a partial frame only until it
//! completes); the Redis task writes each frame itself with `try_write`
//! when the socket has nothing queued, and only a socket the kernel will not take more from
//! gets a queue (allocated then, freed once drained) that its own task drains in order.
//!
//! What it deliberately does not do: verify the JWT (any CONNECT is accepted), check channel
//! authorization or policies, presence, client events, acks, Engine.IO long-polling, the
//! pong timeout, compressed client frames, Laravel's `socket` exclusion
//! (`toOthers()`), the HTTP API, metrics, logs beyond errors, graceful shutdown. Not for
//! production; an example of the package (`cargo build --release --example floor`).
//!
//! ```sh
//! floor --listen 127.0.0.1:6001 --redis-url redis://127.0.0.1:6379/ --redis-prefix laravel_database_
//! ```

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Buf, Bytes};
use clap::Parser;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard::protocol::websocket::{self as framing, Message, Reader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Longest HTTP request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most time a client has to send its HTTP request.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a socket at a time, into a buffer on the stack.
const READ_BUFFER: usize = 2 * 1024;
/// Reads one socket may do before its task lets the others run.
const READS_PER_TURN: usize = 8;
/// Largest client frame accepted (clients send pongs, CONNECT with a token, subscribes).
const MAX_CLIENT_FRAME: usize = 16 * 1024;
/// Bytes a socket may have queued before it is closed as too slow.
const MAX_QUEUED: usize = 64 * 1024 * 1024;
/// Channels one socket may join.
const MAX_CHANNELS: usize = 1000;
/// How long a closing socket tries to write what it still has queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Frames written in one `writev` when draining a queue.
const WRITEV_FRAMES: usize = 64;
/// Engine.IO's ping timeout announced in the open packet (not enforced).
const PING_TIMEOUT_MS: u64 = 20_000;

/// The floor's settings.
#[derive(Debug, Parser)]
#[command(about = "A minimal Socket.IO v4 fan-out server: the benchmarks' floor")]
struct Args {
    /// Address to listen on
    #[arg(long, env = "FLOOR_LISTEN", default_value = "127.0.0.1:6001")]
    listen: SocketAddr,
    /// Redis to PSUBSCRIBE on
    #[arg(
        long,
        env = "FLOOR_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    redis_url: String,
    /// Prefix of the Redis channel names (Switchboard's --redis-prefix)
    #[arg(long, env = "FLOOR_REDIS_PREFIX", default_value = "")]
    redis_prefix: String,
    /// Milliseconds between Engine.IO pings (Switchboard's default is 25 s)
    #[arg(long, env = "FLOOR_PING_INTERVAL_MS", default_value_t = 25_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    ping_interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // As Switchboard does: thousands of sockets need more than the usual 1024 descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match runtime.block_on(local.run_until(run(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Who is connected, and who is subscribed to what. Only ever borrowed between awaits.
#[derive(Default)]
struct Hub {
    /// Every socket past the websocket upgrade, for the pings.
    sockets: HashMap<u64, Rc<Socket>>,
    /// Subscribers per channel name (without the Redis prefix).
    channels: HashMap<Box<str>, Vec<Rc<Socket>>>,
}

type SharedHub = Rc<RefCell<Hub>>;

async fn run(args: Args) -> Result<()> {
    let hub = SharedHub::default();
    let pattern = format!("{}*", args.redis_prefix);
    // Subscribed before listening: once /health answers, no message is missed.
    let messages = psubscribe(&args.redis_url, &pattern).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "floor: listening on {}, PSUBSCRIBEd {pattern} on {}",
        args.listen, args.redis_url
    );
    tokio::task::spawn_local(fan_out(hub.clone(), args.redis_url, pattern, messages));
    let interval = Duration::from_millis(args.ping_interval_ms);
    tokio::task::spawn_local(ping_all(hub.clone(), interval));
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                eprintln!("floor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        tokio::task::spawn_local(serve(hub.clone(), next_id, stream, args.ping_interval_ms));
    }
}

// ---------------------------------------------------------------------------------------------
// Redis → sockets
// ---------------------------------------------------------------------------------------------

async fn psubscribe(url: &str, pattern: &str) -> Result<redis::aio::PubSubStream> {
    let client = redis::Client::open(url).with_context(|| format!("--redis-url {url}"))?;
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))?;
    pubsub
        .psubscribe(pattern)
        .await
        .with_context(|| format!("PSUBSCRIBE {pattern}"))?;
    Ok(pubsub.into_on_message())
}

/// Laravel's broadcast payload; `socket` (the sender to skip) is ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Hands every Redis message to its channel's subscribers; reconnects when Redis goes away
/// (what is published meanwhile is lost).
async fn fan_out(
    hub: SharedHub,
    url: String,
    pattern: String,
    mut messages: redis::aio::PubSubStream,
) {
    let prefix = &pattern[..pattern.len() - 1];
    loop {
        while let Some(message) = messages.next().await {
            let Some(channel) = message.get_channel_name().strip_prefix(prefix) else {
                continue;
            };
            let hub = hub.borrow();
            let Some(subscribers) = hub.channels.get(channel) else {
                continue;
            };
            let Ok(envelope) = serde_json::from_slice::<Envelope>(message.get_payload_bytes())
            else {
                continue;
            };
            let Some(frame) = broadcast_frame(&envelope, channel) else {
                continue;
            };
            for socket in subscribers {
                socket.send(&frame);
            }
        }
        eprintln!("floor: lost the Redis connection; reconnecting");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match psubscribe(&url, &pattern).await {
                Ok(stream) => {
                    messages = stream;
                    break;
                }
                Err(e) => eprintln!("floor: {e:#}"),
            }
        }
    }
}

/// Sends an Engine.IO ping to every socket every `interval`: one timer for all of them.
async fn ping_all(hub: SharedHub, interval: Duration) {
    let ping = framing::encode(framing::TEXT, b"2");
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        for socket in hub.borrow().sockets.values() {
            socket.send(&ping);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

/// `42["event","channel",data]` in a text frame (Switchboard's own framing codec).
fn broadcast_frame(envelope: &Envelope, channel: &str) -> Option<Bytes> {
    let data = envelope.data.map_or("null", RawValue::get);
    let size = 12 + envelope.event.len() + channel.len() + data.len();
    let mut buffer = Vec::with_capacity(size);
    buffer.extend_from_slice(b"42[");
    serde_json::to_writer(&mut buffer, &*envelope.event).ok()?;
    buffer.push(b',');
    serde_json::to_writer(&mut buffer, channel).ok()?;
    buffer.push(b',');
    buffer.extend_from_slice(data.as_bytes());
    buffer.push(b']');
    Some(framing::encode(framing::TEXT, &buffer))
}

// ---------------------------------------------------------------------------------------------
// A socket's write side: direct writes, else a lazily allocated queue
// ---------------------------------------------------------------------------------------------

/// One websocket client, shared by its own task and the tasks that write to it.
struct Socket {
    id: u64,
    stream: TcpStream,
    /// Frames (or the rest of one) the kernel has not taken yet, oldest first; `None`, with
    /// nothing allocated, while the socket keeps up.
    queue: RefCell<Option<Box<Queue>>>,
    /// Wakes the socket's task when its queue gets a first frame, or it must close.
    wake: Notify,
    /// Set when a write failed or too much is queued: the task closes the socket.
    broken: Cell<bool>,
}

struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Socket {
    /// Writes `frame` now if nothing is queued and the kernel takes it, else queues (the rest
    /// of) it for the socket's task. Frames go out whole and in the order they were sent.
    fn send(&self, frame: &Bytes) {
        if self.broken.get() {
            return;
        }
        let mut slot = self.queue.borrow_mut();
        if let Some(queue) = slot.as_mut() {
            queue.bytes += frame.len();
            queue.frames.push_back(frame.clone());
            if queue.bytes > MAX_QUEUED {
                self.break_off();
            }
            return;
        }
        let written = match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return self.break_off(),
        };
        let rest = frame.slice(written..);
        *slot = Some(Box::new(Queue {
            bytes: rest.len(),
            frames: VecDeque::from([rest]),
        }));
        self.wake.notify_one();
    }

    fn break_off(&self) {
        self.broken.set(true);
        self.wake.notify_one();
    }

    fn queued(&self) -> bool {
        self.queue.borrow().is_some()
    }

    /// Writes what is queued, in order: `Ok(true)` once all is written (the queue is freed),
    /// `Ok(false)` when the kernel takes no more for now.
    fn flush(&self) -> io::Result<bool> {
        let mut slot = self.queue.borrow_mut();
        let Some(queue) = slot.as_mut() else {
            return Ok(true);
        };
        while !queue.frames.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); WRITEV_FRAMES];
                let mut count = 0;
                for (slice, frame) in slices.iter_mut().zip(&queue.frames) {
                    *slice = IoSlice::new(frame);
                    count += 1;
                }
                self.stream.try_write_vectored(&slices[..count])
            };
            let mut written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            queue.bytes -= written;
            while written > 0 {
                let Some(front) = queue.frames.front_mut() else {
                    break;
                };
                if written < front.len() {
                    front.advance(written);
                    break;
                }
                written -= front.len();
                queue.frames.pop_front();
            }
        }
        *slot = None;
        Ok(true)
    }

    /// Waits until everything queued is written (or fails).
    async fn drain(&self) -> io::Result<()> {
        while !self.flush()? {
            self.stream.writable().await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// A socket's task: HTTP, then websocket frames in, Socket.IO packets
// ---------------------------------------------------------------------------------------------

async fn serve(hub: SharedHub, id: u64, mut stream: TcpStream, ping_interval_ms: u64) {
    let rest = match tokio::time::timeout(HEAD_TIMEOUT, http(&mut stream)).await {
        Ok(Ok(Some(rest))) => rest,
        _ => return,
    };
    let socket = Rc::new(Socket {
        id,
        stream,
        queue: RefCell::new(None),
        wake: Notify::new(),
        broken: Cell::new(false),
    });
    let mut session = Session {
        socket: socket.clone(),
        hub: hub.clone(),
        reader: Reader::new(MAX_CLIENT_FRAME),
        channels: Vec::new(),
        connected: false,
        closing: false,
    };
    session.send_text(&format!(
        r#"0{{"sid":"floor{id}","upgrades":[],"pingInterval":{ping_interval_ms},"pingTimeout":{PING_TIMEOUT_MS},"maxPayload":{MAX_CLIENT_FRAME}}}"#
    ));
    hub.borrow_mut().sockets.insert(id, socket.clone());
    // Bytes that came with the HTTP request (a client that did not wait for the 101).
    if !rest.is_empty() {
        session.on_bytes(&rest);
    }
    while !session.closing && !socket.broken.get() {
        let queued = socket.queued();
        tokio::select! {
            biased;
            ready = socket.stream.writable(), if queued => {
                if ready.is_err() || socket.flush().is_err() {
                    break;
                }
            }
            // A first frame queued, or the socket broken off.
            () = socket.wake.notified() => {}
            ready = socket.stream.readable() => {
                if ready.is_err() || !session.on_readable() {
                    break;
                }
            }
        }
    }
    if session.closing && !socket.broken.get() {
        // Our close frame (and anything before it) goes out before the socket does.
        let _ = tokio::time::timeout(CLOSE_FLUSH, socket.drain()).await;
    }
    session.leave();
}

/// Reads the HTTP request and answers it: `Some(bytes after the head)` once upgraded, `None`
/// when the connection is done (health check, refusal, error).
async fn http(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        head.reserve(1024);
        if stream.read_buf(&mut head).await? == 0 {
            return Ok(None);
        }
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let answer = match upgrade_key(&head[..end]) {
        Ok(Some(key)) => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        ),
        Ok(None) => "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
                     Connection: close\r\n\r\nok\n"
            .to_owned(),
        Err(status) => {
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
    };
    stream.write_all(answer.as_bytes()).await?;
    let upgraded = answer.starts_with("HTTP/1.1 101");
    Ok(upgraded.then(|| head.split_off(end)))
}

/// The `Sec-WebSocket-Key` of a Socket.IO websocket upgrade, `None` for `GET /health`, else
/// the status to refuse with.
fn upgrade_key(head: &[u8]) -> Result<Option<&str>, &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "400 Bad Request")?;
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next(), request.next().unwrap_or_default());
    if method != Some("GET") {
        return Err("405 Method Not Allowed");
    }
    if target == "/health" {
        return Ok(None);
    }
    if !target.starts_with("/socket.io/") {
        return Err("404 Not Found");
    }
    // No long-polling: the websocket transport only, from the first request.
    if !target.contains("transport=websocket") {
        return Err("400 Bad Request");
    }
    let mut key = None;
    let mut upgrade = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        }
    }
    match key {
        Some(key) if upgrade => Ok(Some(key)),
        _ => Err("400 Bad Request"),
    }
}

/// The Engine.IO and Socket.IO state of one socket, owned by its task.
struct Session {
    socket: Rc<Socket>,
    hub: SharedHub,
    /// Client frames in (it keeps only an incomplete frame).
    reader: Reader,
    /// The channels this socket joined.
    channels: Vec<Box<str>>,
    /// Whether CONNECT was answered.
    connected: bool,
    /// Set once the session should end (close frame, disconnect, bad frame).
    closing: bool,
}

/// The subscribe and unsubscribe argument.
#[derive(Deserialize)]
struct ChannelArg<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

impl Session {
    /// Reads what the socket has, a few buffers at most (a busy client waits for the next
    /// turn, the others are not held up); `false` once the connection is gone.
    fn on_readable(&mut self) -> bool {
        let mut buffer = [0u8; READ_BUFFER];
        for _ in 0..READS_PER_TURN {
            match self.socket.stream.try_read(&mut buffer) {
                Ok(0) => return false,
                Ok(n) => self.on_bytes(&buffer[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
            if self.closing {
                break;
            }
        }
        true
    }

    /// Handles the client messages `data` completes.
    fn on_bytes(&mut self, data: &[u8]) {
        self.reader.extend(data);
        while !self.closing {
            match self.reader.next_message() {
                Ok(Some(Message::Text(text))) => self.on_text(&text),
                Ok(Some(Message::Close(code))) => self.close(code.unwrap_or(framing::NORMAL)),
                Ok(Some(Message::Ping(payload))) => {
                    self.socket.send(&framing::encode(framing::PONG, &payload));
                }
                Ok(Some(Message::Pong | Message::Binary(_) | Message::Discarded(_))) => {}
                Ok(None) => break,
                Err(e) => self.close(e.close_code()),
            }
        }
    }

    /// Sends a close frame with `code` and ends the session.
    fn close(&mut self, code: u16) {
        self.socket.send(&framing::encode_close(code, ""));
        self.closing = true;
    }

    fn send_text(&self, text: &str) {
        self.socket
            .send(&framing::encode(framing::TEXT, text.as_bytes()));
    }

    /// One Engine.IO packet from the client.
    fn on_text(&mut self, text: &str) {
        if let Some(connect) = text.strip_prefix("40") {
            if connect.starts_with('/') {
                let namespace = connect.split(',').next().unwrap_or_default();
                self.send_text(&format!(
                    r#"44{namespace},{{"message":"Invalid namespace"}}"#
                ));
            } else {
                self.connected = true;
                self.send_text(&format!(r#"40{{"sid":"floor{}"}}"#, self.socket.id));
            }
        } else if text.starts_with("41") || text.starts_with('1') {
            self.close(1000);
        } else if let Some(event) = text.strip_prefix("42") {
            // An ack id may stand before the arguments; the floor sends no acks.
            let arguments = event.trim_start_matches(|c: char| c.is_ascii_digit());
            if self.connected {
                self.on_event(arguments);
            }
        }
        // `3` (pong) and anything else: nothing to do.
    }

    fn on_event(&mut self, arguments: &str) {
        let Ok((name, arg)) = serde_json::from_str::<(Cow<str>, ChannelArg)>(arguments) else {
            return;
        };
        let channel = arg.channel;
        let quoted = serde_json::to_string(&*channel).unwrap_or_default();
        match &*name {
            "subscribe" => {
                let joined = self.channels.iter().any(|c| **c == *channel);
                if !joined && self.channels.len() >= MAX_CHANNELS {
                    return;
                }
                self.send_text(&format!(
                    r#"42["subscribed",{{"channel":{quoted},"status":"success"}}]"#
                ));
                if !joined {
                    let channel: Box<str> = channel.into();
                    let mut hub = self.hub.borrow_mut();
                    let subscribers = hub.channels.entry(channel.clone()).or_default();
                    subscribers.push(self.socket.clone());
                    self.channels.push(channel);
                }
            }
            "unsubscribe" => {
                if let Some(at) = self.channels.iter().position(|c| **c == *channel) {
                    let channel = self.channels.swap_remove(at);
                    self.leave_channel(&channel);
                }
                self.send_text(&format!(r#"42["unsubscribed",{{"channel":{quoted}}}]"#));
            }
            _ => {}
        }
    }

    fn leave_channel(&self, channel: &str) {
        let mut hub = self.hub.borrow_mut();
        if let Some(subscribers) = hub.channels.get_mut(channel) {
            if let Some(at) = subscribers.iter().position(|s| s.id == self.socket.id) {
                subscribers.swap_remove(at);
            }
            if subscribers.is_empty() {
                hub.channels.remove(channel);
            }
        }
    }

    /// Removes the socket from the hub: once the task ends, the connection closes.
    fn leave(&mut self) {
        for channel in std::mem::take(&mut self.channels) {
            self.leave_channel(&channel);
        }
        self.hub.borrow_mut().sockets.remove(&self.socket.id);
    }
}
