//! What a cluster backplane needs from a bus: its local interest, a way to take what
//! was published here, and a way to hand it what other nodes published.
//!
//! A bus started with `[cluster]` enabled keeps an `Interest` registry: the topic
//! supervisor counts every subscription's (filter, queue group) as it is added and
//! removed, and the backplane takes the changes (first holder, last holder gone) with
//! [`Federation::interest_changes`]. The registry holds one entry per distinct
//! (filter, group) and one pending change per entry at most, so it is bounded by the
//! subscriptions themselves, however fast they churn.
//!
//! Messages from other nodes enter through [`Federation::relay`] with a [`Relay`] that
//! says whom they are for. They take the same admission as any publish (so a fast
//! remote publisher is held back like a local one) and the same per-topic order. Relayed
//! messages never reach `local_only` subscribers: the forwarder (which would send them
//! back out) and the sinks (a message is written by the node it was published on).
//!
//! # Invariants
//!
//! - A key is in `counts` exactly while at least one live, not `local_only`
//!   subscription with that filter and group is in the topic supervisor's index.
//! - A change is pending for a key whenever its presence differs from what the last
//!   [`Federation::interest_changes`] reported for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use streambus_types::{Message, SubscriptionOptions, TopicFilter};
use tokio::sync::Notify;

use crate::error::BusError;
use crate::session_handle::SessionHandle;
use crate::subscription::Subscription;

/// Whom a batch relayed from another node is for (see [`Federation::relay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// The subscribers outside queue groups. A retained message also becomes the
    /// topic's retained value here.
    Plain,
    /// One member (round robin) of this queue group, if the node has one.
    Group(Arc<str>),
    /// `count` messages of the topic that another node published and this node never
    /// received: reported as a gap to the subscribers outside groups (or to the members
    /// of `group`), with fresh sequence numbers reserved for them. Send one message (any
    /// payload) for the topic; it is not delivered.
    Lost {
        /// How many messages were lost.
        count: u64,
        /// The queue group that lost them; `None`: the subscribers outside groups.
        group: Option<Arc<str>>,
    },
    /// The topic's retained value as another node published it: stored (an empty
    /// payload clears it), not delivered to live subscribers.
    Retain,
}

/// A (filter, queue group) some local subscription holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterestKey {
    /// The filter.
    pub filter: TopicFilter,
    /// The queue group; `None` for plain subscriptions.
    pub group: Option<Arc<str>>,
}

/// One change of interest: `held` says whether the node now holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestChange {
    /// The (filter, group).
    pub key: InterestKey,
    /// Whether at least one local subscription holds it now.
    pub held: bool,
}

#[derive(Debug, Default)]
struct InterestState {
    counts: HashMap<InterestKey, usize>,
    dirty: HashSet<InterestKey>,
}

/// Reference counts of the local (filter, group) pairs, written by the topic
/// supervisor, read by the backplane.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    state: Mutex<InterestState>,
    notify: Notify,
}

impl Interest {
    /// A subscription with `key` was added.
    pub(crate) fn add(&self, key: InterestKey) {
        let mut s = self.state.lock();
        let count = s.counts.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            s.dirty.insert(key);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// A subscription with `key` was removed.
    pub(crate) fn remove(&self, key: &InterestKey) {
        let mut s = self.state.lock();
        let Some(count) = s.counts.get_mut(key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            s.counts.remove(key);
            s.dirty.insert(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Takes the pending changes (possibly none).
    fn take(&self) -> Vec<InterestChange> {
        let mut s = self.state.lock();
        let dirty = std::mem::take(&mut s.dirty);
        dirty
            .into_iter()
            .map(|key| InterestChange {
                held: s.counts.contains_key(&key),
                key,
            })
            .collect()
    }
}

/// A federated bus as its backplane sees it ([`crate::Bus::federation`]).
#[derive(Debug)]
pub struct Federation {
    /// The bus's own session (internal: it keeps working through a drain) that relayed
    /// batches are published through and the forwarder subscribes with.
    session: SessionHandle,
    /// The local interest.
    interest: Arc<Interest>,
}

impl Federation {
    pub(crate) fn new(session: SessionHandle, interest: Arc<Interest>) -> Self {
        Federation { session, interest }
    }

    /// Waits until the local interest changed, then returns every change since the
    /// last call (the first call returns the whole current interest). Changes to one key
    /// are merged: only where it stands now is reported.
    pub async fn interest_changes(&self) -> Vec<InterestChange> {
        loop {
            let notified = self.interest.notify.notified();
            let changes = self.interest.take();
            if !changes.is_empty() {
                return changes;
            }
            notified.await;
        }
    }

    /// A subscription to every application topic (`>`) that takes only what was
    /// published on this node, for forwarding; `options` set its buffer and overflow
    /// policy (`local_only` is always set).
    pub async fn forwarder(&self, options: SubscriptionOptions) -> Result<Subscription, BusError> {
        self.session.subscribe(">", options.local_only()).await
    }

    /// Hands this node a batch relayed from another node. Order is kept per topic,
    /// and admission applies as to any publish (this waits while a topic is full).
    pub async fn relay(&self, messages: Vec<Message>, relay: Relay) -> Result<(), BusError> {
        self.session.relay(messages, relay).await
    }
}
