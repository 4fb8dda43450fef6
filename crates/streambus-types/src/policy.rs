//! What happens when a subscriber falls behind.
//!
//! Every subscription has a bounded buffer (messages and bytes). When a delivery does
//! not fit, the subscription's [`OverflowPolicy`] decides. Whatever it decides, nothing
//! is lost silently: every dropped message is counted in the subscription's snapshot and
//! reported to the subscriber as a gap event before its next delivery.

use serde::{Deserialize, Serialize};

/// The policy applied when a subscriber's buffer is full.
///
/// The default is [`OverflowPolicy::DropOldest`]: a slow live subscriber can neither stall
/// the publishers and the other subscribers of a topic (as `block` would) nor be cut off
/// (as `disconnect` would), and it always sees the freshest values, which is what a
/// dashboard or a telemetry consumer wants. Consumers that must not lose anything choose
/// `block` explicitly and accept that they slow the topic down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// The topic waits for room: publishers to it are held back once its own mailbox
    /// fills. Nothing is dropped; a stalled subscriber stalls the topic.
    Block,
    /// The oldest buffered messages are dropped to make room for the new ones.
    #[default]
    DropOldest,
    /// The new messages that do not fit are dropped; the buffered ones are kept.
    DropNewest,
    /// The subscription is ended with [`crate::CloseReason::SlowConsumer`]; what was
    /// buffered is still delivered before the end.
    Disconnect,
}

impl OverflowPolicy {
    /// The policy as a stable snake_case string.
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::Block => "block",
            OverflowPolicy::DropOldest => "drop_oldest",
            OverflowPolicy::DropNewest => "drop_newest",
            OverflowPolicy::Disconnect => "disconnect",
        }
    }
}

/// Options of one subscription. Unset buffer sizes take the bus's configured defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionOptions {
    /// Queue group: each message goes to exactly one member of the group.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// What to do when the buffer is full; the bus default when unset.
    #[serde(default)]
    pub overflow: Option<OverflowPolicy>,
    /// Buffer capacity in messages; the bus default when unset.
    #[serde(default)]
    pub buffer_messages: Option<usize>,
    /// Buffer capacity in bytes (payload plus headers); the bus default when unset.
    #[serde(default)]
    pub buffer_bytes: Option<usize>,
    /// Only messages published on this node: on a federated bus, what other nodes relay
    /// is not delivered to it. Sinks and the cluster's forwarder subscribe this way, so
    /// that each message is written (and forwarded) by the one node it was published on.
    #[serde(default)]
    pub local_only: bool,
}

impl SubscriptionOptions {
    /// Sets the queue group.
    pub fn queue_group(mut self, group: impl Into<String>) -> Self {
        self.queue_group = Some(group.into());
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = Some(policy);
        self
    }

    /// Takes only messages published on this node (see [`SubscriptionOptions::local_only`]).
    pub fn local_only(mut self) -> Self {
        self.local_only = true;
        self
    }

    /// Sets the buffer capacity in messages and bytes.
    pub fn buffer(mut self, messages: usize, bytes: usize) -> Self {
        self.buffer_messages = Some(messages);
        self.buffer_bytes = Some(bytes);
        self
    }
}
