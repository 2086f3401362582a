//! Bus → hub: every message the bus hands over is decoded once here and delivered to the
//! local members of its channel. Chat messages wait, in order, for their author's block list;
//! node-to-node commands and block-list changes are handled here too. The bus holds this part
//! as its [`Receiver`]; it holds the hub, never the node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};

use crate::blocks::{self, Blocks};
use crate::bus::{Envelope, Receiver};
use crate::hub::{Broadcast, Hub};
use crate::metrics::{Metrics, Protocol};
use crate::outbox::{CloseReason, Write};

/// The bus channel of node-to-node commands (e.g. closing a user's sockets everywhere).
pub const CONTROL_CHANNEL: &str = "switchboard.control";

/// Names the room of a user's sockets in one feature (the user channel, the notifications
/// user room): a kicked user's sockets are found through every one of them.
pub type UserRoom = fn(&str) -> String;

/// The bus → hub path of one node.
pub struct Dispatch {
    hub: Arc<Hub>,
    blocks: Arc<Blocks>,
    metrics: Metrics,
    user_rooms: Vec<UserRoom>,
    /// Wakes the shared state's heartbeat when the bus has reconnected: Redis may have come
    /// back empty.
    reconnected: Arc<Notify>,
    /// Chat messages waiting for their author's block list, delivered in order.
    chat: mpsc::UnboundedSender<ChatMessage>,
    /// Chat messages sent to that queue and not yet delivered.
    chat_waiting: AtomicUsize,
}

impl Dispatch {
    /// Builds the path and starts the task that delivers waiting chat messages; must run
    /// inside a tokio runtime.
    pub fn start(
        hub: Arc<Hub>,
        blocks: Arc<Blocks>,
        metrics: Metrics,
        user_rooms: Vec<UserRoom>,
        reconnected: Arc<Notify>,
    ) -> Arc<Self> {
        let (chat, queue) = mpsc::unbounded_channel();
        let dispatch = Arc::new(Self {
            hub,
            blocks,
            metrics,
            user_rooms,
            reconnected,
            chat,
            chat_waiting: AtomicUsize::new(0),
        });
        tokio::spawn(deliver_chat(Arc::downgrade(&dispatch), queue));
        dispatch
    }

    /// Delivers a bus message to the local members of its channel; `write` says whether the
    /// sockets may be written to at once (`Queued` when more messages are already waiting).
    fn on_message(&self, channel: &str, payload: &[u8], write: Write) {
        let received = Instant::now();
        self.metrics.bus_receives.inc();
        let envelope: Envelope<'_> = match serde_json::from_slice(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.metrics
                    .errors
                    .with_label_values(&["bus_envelope"])
                    .inc();
                // Not `%e`: serde's message can quote the payload (`invalid type: string "…"`).
                tracing::warn!(channel, problem = ?e.classify(), column = e.column(), "ignoring a bus message that is not a broadcast envelope");
                return;
            }
        };
        let data = envelope.data.unwrap_or(RawValue::NULL);
        if channel == blocks::CHANGED_CHANNEL {
            self.on_blocks_changed(data);
            return;
        }
        if channel == CONTROL_CHANNEL {
            self.on_control(&envelope.event, data);
            return;
        }
        if let Some(author) = self.blocks.enabled().then(|| author(&envelope)).flatten() {
            // At once when the author's list is known and nothing waits before it; else by one
            // task, in order, once the list is loaded.
            if self.chat_waiting.load(Ordering::Acquire) == 0 && self.blocks.is_cached(&author) {
                self.deliver(channel, &envelope, Some(&author), received, write);
                return;
            }
            self.chat_waiting.fetch_add(1, Ordering::AcqRel);
            let _ = self.chat.send(ChatMessage {
                channel: channel.to_owned(),
                payload: Bytes::copy_from_slice(payload),
                received,
            });
            return;
        }
        self.deliver(channel, &envelope, None, received, write);
    }

    /// Hands a broadcast to the hub, leaving out recipients who blocked `author` or whom the
    /// author blocked; `received` is when the bus handed it over.
    fn deliver(
        &self,
        channel: &str,
        envelope: &Envelope<'_>,
        author: Option<&str>,
        received: Instant,
        write: Write,
    ) {
        // A root span on a node that received the message from Redis; under the publish's
        // span when the in-process bus delivers it within the publish.
        let span = tracing::debug_span!(
            "bus.deliver",
            otel.kind = "consumer",
            messaging.destination.name = channel,
            switchboard.event = &*envelope.event,
            switchboard.recipients = tracing::field::Empty,
            switchboard.slow = tracing::field::Empty,
        );
        let _span = span.enter();
        let data = envelope.data.unwrap_or(RawValue::NULL);
        let mut message =
            Broadcast::new(channel, &envelope.event, data, envelope.socket.as_deref());
        message.write = write;
        let fanout = self.hub.broadcast(&message, |member| {
            author.is_none_or(|author| !self.blocks.between(&member.principal.user_id, author))
        });
        span.record("switchboard.recipients", fanout.delivered);
        let metrics = &self.metrics;
        metrics.fanout.observe(fanout.delivered as f64);
        metrics.direct_writes.inc_by(fanout.written as u64);
        for protocol in [Protocol::SocketIo, Protocol::Json] {
            let sent = fanout.by_protocol[protocol as usize];
            if sent > 0 {
                metrics
                    .messages_out
                    .inc_by(protocol, "broadcast", sent as u64);
            }
        }
        metrics
            .delivery_latency
            .observe(received.elapsed().as_secs_f64());
        if fanout.slow > 0 {
            span.record("switchboard.slow", fanout.slow);
            tracing::warn!(
                channel,
                sockets = fanout.slow,
                "disconnecting slow consumers"
            );
        }
    }

    /// `{"userId": …}` on the block-list channel: reload that list if this node uses it.
    fn on_blocks_changed(&self, data: &RawValue) {
        let Some(user) = crate::protocol::id_field(data, "userId") else {
            tracing::warn!("ignoring a block-list change without a userId");
            return;
        };
        let blocks = self.blocks.clone();
        tokio::spawn(async move { blocks.changed(&user).await });
    }

    /// A command from another node (or this one) on the control channel.
    fn on_control(&self, command: &str, data: &RawValue) {
        match (command, crate::protocol::id_field(data, "userId")) {
            ("disconnect_user", Some(user)) => {
                let closed = self.kick(&user);
                if closed > 0 {
                    tracing::info!(user, sockets = closed, "closed a user's sockets on request");
                }
            }
            _ => tracing::warn!(command, "ignoring an unknown control command"),
        }
    }

    /// Closes this node's sockets of `user`, telling Socket.IO clients not to reconnect.
    fn kick(&self, user: &str) -> usize {
        let sockets: Vec<_> = self
            .user_rooms
            .iter()
            .flat_map(|room| self.hub.members(&room(user)))
            .collect();
        for socket in &sockets {
            if let Some(farewell) = socket.codec.farewell() {
                let _ = socket.outbox.push(farewell);
            }
            socket.outbox.close(CloseReason::Kicked);
        }
        sockets.len()
    }
}

impl Receiver for Dispatch {
    fn message(&self, channel: &str, payload: &[u8], write: Write) {
        self.on_message(channel, payload, write);
    }

    fn reconnected(&self) {
        self.reconnected.notify_one();
    }
}

/// A chat message from the bus waiting for its author's block list.
struct ChatMessage {
    channel: String,
    payload: Bytes,
    /// When the bus handed it over: its delivery latency includes the wait.
    received: Instant,
}

/// The user whose messages block lists filter: a client's (whisper, typing), or the author of
/// a back-end chat message.
fn author(envelope: &Envelope<'_>) -> Option<String> {
    match &envelope.author {
        Some(author) => Some(author.to_string()),
        None if blocks::FILTERED_EVENTS.contains(&&*envelope.event) => {
            envelope.data.and_then(blocks::author)
        }
        None => None,
    }
}

/// Delivers chat messages in arrival order, each once its author's block list is loaded.
async fn deliver_chat(dispatch: Weak<Dispatch>, mut queue: mpsc::UnboundedReceiver<ChatMessage>) {
    while let Some(message) = queue.recv().await {
        let Some(dispatch) = dispatch.upgrade() else {
            return;
        };
        let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(&message.payload) else {
            continue;
        };
        let author = author(&envelope);
        if let Some(author) = &author {
            dispatch.blocks.ensure(author).await;
        }
        dispatch.deliver(
            &message.channel,
            &envelope,
            author.as_deref(),
            message.received,
            Write::Direct,
        );
        dispatch.chat_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
