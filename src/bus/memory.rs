//! The in-process bus of a single node: a publish is delivered straight back to this node,
//! through the same entry point the Redis bus uses.

use std::sync::Weak;

use crate::node::Node;
use crate::outbox::Write;

/// A bus that only reaches this node.
pub struct MemoryBus {
    node: Weak<Node>,
}

impl MemoryBus {
    /// A bus delivering to `node`.
    pub fn new(node: Weak<Node>) -> Self {
        Self { node }
    }

    /// Delivers a message to this node.
    pub fn publish(&self, channel: &str, payload: &[u8]) {
        if let Some(node) = self.node.upgrade() {
            // Delivered within the publish: no backlog to batch.
            node.on_bus_message(channel, payload, Write::Direct);
        }
    }
}
