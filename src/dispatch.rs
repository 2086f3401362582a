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

/// What a node-to-node command asks of the node beyond the hub: it is handed upwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Add the user's sockets on this node to the channel (`subscribe_user`).
    Subscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
    },
    /// Remove the user's sockets on this node from the channel (`unsubscribe_user`).
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
    },
}

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
    /// Commands for the node.
    commands: mpsc::UnboundedSender<Command>,
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
        commands: mpsc::UnboundedSender<Command>,
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
            commands,
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
        let user = crate::protocol::id_field(data, "userId");
        let channel = || crate::protocol::id_field(data, "channel");
        let for_node = match (command, user) {
            ("disconnect_user", Some(user)) => {
                let closed = self.kick(&user);
                if closed > 0 {
                    tracing::info!(user, sockets = closed, "closed a user's sockets on request");
                }
                return;
            }
            ("subscribe_user", Some(user)) => {
                channel().map(|channel| Command::Subscribe { user, channel })
            }
            ("unsubscribe_user", Some(user)) => {
                channel().map(|channel| Command::Unsubscribe { user, channel })
            }
            _ => None,
        };
        match for_node {
            // The node outlives its dispatch's use; once it is gone nothing is left to join.
            Some(command) => drop(self.commands.send(command)),
            None => tracing::warn!(command, "ignoring an unknown control command"),
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::auth::Principal;
    use crate::bus::memory::MemoryBus;
    use crate::hub::{Codec, Member, Ready};
    use crate::outbox::Outbox;
    use crate::pacing::Pacing;

    fn member(id: &str, user: &str, codec: Codec) -> Arc<Member> {
        let principal = Principal {
            user_id: user.into(),
            role: None,
            claims: None,
            expires: None,
        };
        Arc::new(Member::new(
            id.into(),
            principal,
            codec,
            Arc::new(Outbox::new(1 << 20)),
        ))
    }

    fn queued(member: &Member) -> Vec<String> {
        let mut out = VecDeque::new();
        let _ = member.outbox.try_drain(&mut out);
        out.iter().map(|f| f.as_str().to_owned()).collect()
    }

    /// A node's bus → hub path alone: a hub, no block lists, an in-process bus.
    struct Rig {
        hub: Arc<Hub>,
        metrics: Metrics,
        bus: MemoryBus,
        reconnected: Arc<Notify>,
        dispatch: Arc<Dispatch>,
        commands: mpsc::UnboundedReceiver<Command>,
    }

    fn rig(user_rooms: Vec<UserRoom>) -> Rig {
        let hub = Arc::new(Hub::new(Pacing::new(0.0, Duration::ZERO)));
        let metrics = Metrics::new().expect("metrics");
        let reconnected = Arc::new(Notify::new());
        let (commands, received) = mpsc::unbounded_channel();
        let dispatch = Dispatch::start(
            hub.clone(),
            Arc::new(Blocks::new(None, String::new())),
            metrics.clone(),
            user_rooms,
            reconnected.clone(),
            commands,
        );
        let bus = MemoryBus::new(dispatch.clone());
        Rig {
            hub,
            metrics,
            bus,
            reconnected,
            dispatch,
            commands: received,
        }
    }

    fn join(hub: &Hub, member: &Arc<Member>, channel: &str) {
        hub.join(member, channel, 10, |_| Arc::new(Ready::default()))
            .expect("joins");
    }

    #[tokio::test]
    async fn a_broadcast_reaches_each_member_in_its_codec_except_the_sender() {
        let rig = rig(vec![]);
        let sio = member("a", "1", Codec::SocketIo);
        let json = member("b", "2", Codec::Json);
        let sender = member("c", "3", Codec::SocketIo);
        let elsewhere = member("d", "4", Codec::SocketIo);
        for m in [&sio, &json, &sender] {
            join(&rig.hub, m, "news");
        }
        join(&rig.hub, &elsewhere, "sport");
        rig.bus.publish(
            "news",
            br#"{"event":"posted","data":{"id":7},"socket":"c"}"#,
        );
        assert_eq!(queued(&sio), [r#"42["posted","news",{"id":7}]"#]);
        assert_eq!(
            queued(&json),
            [r#"{"type":"posted","channel":"news","payload":{"id":7}}"#]
        );
        assert!(queued(&sender).is_empty(), "the sender is left out");
        assert!(
            queued(&elsewhere).is_empty(),
            "another channel hears nothing"
        );
        assert_eq!(rig.metrics.bus_receives.get(), 1);
    }

    #[tokio::test]
    async fn what_is_not_an_envelope_is_dropped_and_counted() {
        let rig = rig(vec![]);
        let listener = member("a", "1", Codec::SocketIo);
        join(&rig.hub, &listener, "news");
        for junk in [&b"not json"[..], br#"{"data":1}"#, br#"{"event":5}"#] {
            rig.bus.publish("news", junk);
        }
        assert!(queued(&listener).is_empty());
        let dropped = rig
            .metrics
            .errors
            .with_label_values(&["bus_envelope"])
            .get();
        assert_eq!(dropped, 3);
    }

    #[tokio::test]
    async fn a_disconnect_command_closes_the_users_sockets_in_every_named_room() {
        fn notes_room(user: &str) -> String {
            format!("notes|{user}")
        }
        let rig = rig(vec![crate::channel::user_channel, notes_room]);
        let (main, notes, other) = (
            member("a", "7", Codec::SocketIo),
            member("b", "7", Codec::Json),
            member("c", "8", Codec::SocketIo),
        );
        join(&rig.hub, &main, "private-user.7");
        join(&rig.hub, &notes, "notes|7");
        join(&rig.hub, &other, "private-user.8");
        rig.bus.publish(
            CONTROL_CHANNEL,
            br#"{"event":"disconnect_user","data":{"userId":"7"}}"#,
        );
        assert_eq!(main.outbox.close_reason(), Some(CloseReason::Kicked));
        assert_eq!(queued(&main), ["41"], "told not to reconnect");
        assert_eq!(notes.outbox.close_reason(), Some(CloseReason::Kicked));
        assert_eq!(other.outbox.close_reason(), None);
        rig.bus.publish(
            CONTROL_CHANNEL,
            br#"{"event":"reboot","data":{"userId":"8"}}"#,
        );
        assert_eq!(
            other.outbox.close_reason(),
            None,
            "unknown commands do nothing"
        );
    }

    #[tokio::test]
    async fn subscription_commands_go_to_the_node() {
        let mut rig = rig(vec![]);
        rig.bus.publish(
            CONTROL_CHANNEL,
            br#"{"event":"subscribe_user","data":{"userId":7,"channel":"team.1"}}"#,
        );
        rig.bus.publish(
            CONTROL_CHANNEL,
            br#"{"event":"unsubscribe_user","data":{"userId":"7","channel":"team.1"}}"#,
        );
        rig.bus.publish(
            CONTROL_CHANNEL,
            br#"{"event":"subscribe_user","data":{"userId":"7"}}"#,
        );
        let (user, channel) = ("7".to_owned(), "team.1".to_owned());
        assert_eq!(
            rig.commands.try_recv().ok(),
            Some(Command::Subscribe {
                user: user.clone(),
                channel: channel.clone()
            })
        );
        assert_eq!(
            rig.commands.try_recv().ok(),
            Some(Command::Unsubscribe { user, channel })
        );
        assert!(rig.commands.try_recv().is_err(), "no channel, no command");
    }

    #[tokio::test]
    async fn a_reconnected_bus_wakes_the_heartbeat() {
        let rig = rig(vec![]);
        rig.dispatch.reconnected();
        tokio::time::timeout(Duration::from_secs(1), rig.reconnected.notified())
            .await
            .expect("notified");
    }
}
