//! The bus: how a broadcast reaches every node, this one included.
//!
//! Two implementations with the same behaviour: [`memory`] for a single node, [`redis`] for a
//! cluster. Both hand every message to a [`Receiver`] (the node implements it), so nothing
//! shortcuts the path socket → bus → node → hub → socket, and the bus knows nothing above it.
//! A message is Laravel's Redis broadcast envelope, `{"event": E, "data": D, "socket": S}`, on
//! a channel named `<prefix><channel>`.

pub mod memory;
pub mod redis;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::Ready;
use crate::outbox::Write;

/// What the bus reports to: the node's delivery of messages, the bus's one seam upwards.
pub trait Receiver: Send + Sync + 'static {
    /// A message on `channel` (the prefix stripped); `write` is `Queued` when more messages
    /// are already waiting behind it, so its frames go through the sockets' tasks.
    fn message(&self, channel: &str, payload: &[u8], write: Write);

    /// The bus (re)connected: whatever it carries about the cluster may have been lost.
    fn reconnected(&self);
}

/// Laravel's broadcast envelope, as published and as received.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// The event name (e.g. `App\Events\OrderShipped`, or `client-typing` for a whisper).
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The event data; Laravel sends the event's public properties.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// A socket id to leave out, or null.
    #[serde(borrow, default)]
    pub socket: Option<Cow<'a, str>>,
    /// The user who sent it, for what clients send each other (whispers, typing): block lists
    /// apply to it. Only nodes write it; Laravel's envelopes have none.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Cow<'a, str>>,
}

impl Envelope<'_> {
    /// Serialises the envelope for publishing.
    pub fn to_bytes(&self) -> Bytes {
        // An envelope of strings and valid raw JSON always serialises.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A publish that did not reach the bus.
#[derive(Debug, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

/// The node's bus.
pub enum Bus {
    /// In-process, single node.
    Memory(memory::MemoryBus),
    /// Redis pub/sub, cluster.
    Redis(redis::RedisBus),
}

impl Bus {
    /// Publishes an envelope on a channel, to every node.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        match self {
            Self::Memory(bus) => {
                bus.publish(channel, &payload);
                Ok(())
            }
            Self::Redis(bus) => bus.publish(channel, payload).await,
        }
    }

    /// Starts receiving a channel; the returned handle resolves once that is confirmed.
    pub fn subscribe(&self, channel: Arc<str>) -> Arc<Ready> {
        match self {
            Self::Memory(_) => {
                let ready = Arc::new(Ready::default());
                ready.set();
                ready
            }
            Self::Redis(bus) => bus.subscribe(channel),
        }
    }

    /// Stops receiving a channel; never one of the node's own (`switchboard.…`), which it
    /// hears for its whole life whatever the hub's bookkeeping says.
    pub fn unsubscribe(&self, channel: Arc<str>) {
        if channel.starts_with(crate::channel::RESERVED_PREFIX) {
            return;
        }
        match self {
            Self::Memory(_) => {}
            Self::Redis(bus) => bus.unsubscribe(channel),
        }
    }

    /// Whether the bus can deliver right now.
    pub fn is_healthy(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(bus) => bus.is_healthy(),
        }
    }

    /// A name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_laravel_envelopes() {
        let payload =
            br#"{"event":"App\\Events\\Sent","data":{"id":1,"socket":null},"socket":"abc"}"#;
        let env: Envelope = serde_json::from_slice(payload).expect("laravel envelope");
        assert_eq!(env.event, "App\\Events\\Sent");
        assert_eq!(
            env.data.map(RawValue::get),
            Some(r#"{"id":1,"socket":null}"#)
        );
        assert_eq!(env.socket.as_deref(), Some("abc"));

        let env: Envelope = serde_json::from_slice(br#"{"event":"e"}"#).expect("minimal");
        assert!(env.data.is_none() && env.socket.is_none());
        let env: Envelope = serde_json::from_slice(br#"{"event":"e","data":[1],"socket":null}"#)
            .expect("null socket");
        assert!(env.socket.is_none());
    }

    #[test]
    fn writes_laravel_envelopes() {
        let data = RawValue::from_string("{\"a\":1}".into()).expect("json");
        let env = Envelope {
            event: "update".into(),
            data: Some(&data),
            socket: None,
            author: None,
        };
        assert_eq!(
            &env.to_bytes()[..],
            br#"{"event":"update","data":{"a":1},"socket":null}"#
        );
    }
}
