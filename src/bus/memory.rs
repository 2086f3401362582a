//! The in-process bus of a single node: a publish is delivered straight back to this node,
//! through the same entry point the Redis bus uses.

use std::sync::Arc;

use super::Receiver;
use crate::outbox::Write;

/// A bus that only reaches this node.
pub struct MemoryBus {
    receiver: Arc<dyn Receiver>,
}

impl MemoryBus {
    /// A bus delivering to `receiver`.
    pub fn new(receiver: Arc<dyn Receiver>) -> Self {
        Self { receiver }
    }

    /// Delivers a message to this node.
    pub fn publish(&self, channel: &str, payload: &[u8]) {
        // Delivered within the publish: no backlog to batch.
        self.receiver.message(channel, payload, Write::Direct);
    }
}
