//! Several streambus nodes federated over a NATS cluster.
//!
//! **Local first, forward only what originated here.** Each node delivers to its own
//! subscribers through its own topic actors exactly as a lone node does. Beside that:
//!
//! - the **forwarder** (`forward`) takes what was published on this node (a
//!   `local_only`, `block` subscription on `>`) and publishes it on NATS as
//!   `<prefix>.<topic>`, stamped with the node's id and the message's number in its
//!   topic's run, on a connection with `no_echo`, so the node never hears itself;
//! - the **receiver** (`receive`) follows the node's interest: for every filter a
//!   local subscriber holds (and no other local filter covers) it holds one NATS
//!   subscription, and one NATS queue subscription per (filter, queue group). What
//!   arrives is handed to the local topics as relayed, so it is never forwarded again:
//!   no topology can loop;
//! - a **gap** in an origin's run (NATS is at-most-once: a server that dies loses what
//!   it held) becomes the bus's own gap event for the affected subscribers, and a
//!   message that came twice (overlapping filters) is dropped;
//! - **queue groups**: the origin serves every group it has a member of and names them
//!   in the message; the other nodes serve, through NATS queue subscriptions (one
//!   member cluster-wide), only the groups the origin did not;
//! - **retained values** (`retained`): the forwarder also writes each retained publish
//!   to a JetStream stream that keeps the last message per subject; every node
//!   follows that stream and keeps the values as its topics' retained values.
//!
//! Sinks subscribe `local_only`: each message is written by the node it was
//! published on.

mod cover;
mod forward;
mod members;
mod receive;
mod retained;
mod track;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use members::Member;
use serde::Serialize;
use streambus_core::{Bus, BusError};
use streambus_types::config::ClusterConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The bus refused (it was started without `[cluster]` servers, or is closing).
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// A server URL does not parse.
    #[error("cluster.servers: {0}")]
    Server(String),
    /// NATS refused the connection options.
    #[error("connecting to NATS: {0}")]
    Connect(String),
}

/// A warning about losses logged at most every few seconds, with what was lost since
/// the last one: a backplane in trouble loses many messages on many topics, and one
/// line per topic would bury the log.
pub(crate) struct EveryFewSeconds {
    what: &'static str,
    since: std::time::Instant,
    count: u64,
    last_topic: Option<streambus_types::Topic>,
}

impl EveryFewSeconds {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    pub(crate) fn new(what: &'static str) -> Self {
        EveryFewSeconds {
            what,
            since: std::time::Instant::now() - Self::EVERY,
            count: 0,
            last_topic: None,
        }
    }

    /// Counts `n` lost messages of `topic`; logs when the last line is old enough.
    pub(crate) fn add(&mut self, n: u64, topic: &streambus_types::Topic) {
        self.count += n;
        self.last_topic = Some(topic.clone());
        if self.since.elapsed() >= Self::EVERY {
            let topic = self.last_topic.take();
            tracing::warn!(lost = self.count, last_topic = ?topic.as_ref().map(|t| t.as_str()), "{}", self.what);
            self.count = 0;
            self.since = std::time::Instant::now();
        }
    }
}

/// Counters of the backplane, read by the admin plane.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) forwarded: AtomicU64,
    pub(crate) forward_lost: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) relayed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) served_elsewhere: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) interest: AtomicU64,
    pub(crate) retained_written: AtomicU64,
    pub(crate) retained_write_failures: AtomicU64,
    pub(crate) retained_received: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) slow_consumer: AtomicU64,
}

/// A point-in-time view of the backplane.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    /// This node's name.
    pub node: String,
    /// This node's id on the backplane (name and incarnation).
    pub origin: String,
    /// The nodes of the cluster, this one first (see `members`: presence, heard from
    /// within the last five seconds).
    pub members: Vec<Member>,
    /// The NATS servers configured.
    pub servers: Vec<String>,
    /// Whether the NATS connection is up.
    pub connected: bool,
    /// The NATS server this node is connected to (its name, as it reports it).
    pub server: String,
    /// Other nodes' servers NATS reported (its cluster's routes, as the client knows them).
    pub known_servers: Vec<String>,
    /// Messages published here and forwarded to NATS.
    pub forwarded: u64,
    /// Messages published here that were not forwarded (the NATS connection was down):
    /// seen by the other nodes as a gap.
    pub forward_lost: u64,
    /// Messages received from NATS.
    pub received: u64,
    /// Received messages handed to local subscribers.
    pub relayed: u64,
    /// Received twice (overlapping subscriptions) and dropped.
    pub duplicates: u64,
    /// Gaps found in origins' runs, each reported to the affected subscribers.
    pub gaps: u64,
    /// Messages those gaps stand for.
    pub lost: u64,
    /// Queue-group copies dropped because the origin served the group.
    pub served_elsewhere: u64,
    /// Received messages that were not a topic or had a broken stamp.
    pub invalid: u64,
    /// Received messages the local bus refused (too large for its limits, too many topics).
    pub refused: u64,
    /// NATS subscriptions held for the local interest.
    pub subscriptions: u64,
    /// Distinct (filter, group) pairs local subscribers hold.
    pub interest: u64,
    /// Retained publishes written to the retained stream.
    pub retained_written: u64,
    /// Retained publishes the retained stream did not acknowledge.
    pub retained_write_failures: u64,
    /// Retained values taken from other nodes.
    pub retained_received: u64,
    /// Times the NATS connection was lost.
    pub disconnects: u64,
    /// Times NATS reported this node too slow (it dropped messages for it).
    pub slow_consumer: u64,
}

/// The backplane of a node: started by [`Cluster::start`], stopped by
/// [`Cluster::shutdown`].
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    origin: Arc<str>,
    servers: Vec<String>,
    client: async_nats::Client,
    stats: Arc<Stats>,
    roster: members::Roster,
    stop: watch::Sender<bool>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("origin", &self.inner.origin).finish()
    }
}

/// What the tasks share.
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) origin: Arc<str>,
    pub(crate) client: async_nats::Client,
    pub(crate) federation: streambus_core::Federation,
    pub(crate) stats: Arc<Stats>,
    /// The local bus's largest batch, for relays.
    pub(crate) batch_limit: usize,
}

impl Cluster {
    /// Joins the cluster named by `bus`'s `[cluster]` section: connects to NATS (in the
    /// background: a node whose NATS servers are down starts anyway, serves its own
    /// clients and joins when they come up) and starts forwarding and receiving.
    pub async fn start(bus: &Bus) -> Result<Cluster, ClusterError> {
        let config = bus.config().cluster.clone();
        let federation = bus.federation().await?;
        let node = if config.node.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "node".into())
        } else {
            config.node.clone()
        };
        // The id travels in a space-separated stamp: no spaces in it.
        let origin: Arc<str> = format!("{}/{:016x}", node.replace(char::is_whitespace, "_"), fastrand::u64(..)).into();
        let addrs = config
            .servers
            .iter()
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| ClusterError::Server(format!("{s}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stats = Arc::new(Stats::default());
        let events = stats.clone();
        let name = node.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("streambus {node}"))
            .no_echo()
            // The first server listed is the node's own (the nearest); the others are
            // where it fails over to, in order.
            .retain_servers_order()
            // What waits for the local bus, per NATS subscription; past it the client
            // drops (NATS's slow consumer) and the run numbers report the gap.
            .subscription_capacity(receive::SUBSCRIPTION_CAPACITY)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let stats = events.clone();
                let node = name.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(%node, "cluster: connected to NATS"),
                        async_nats::Event::Disconnected => {
                            stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%node, "cluster: NATS connection lost; reconnecting");
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(%node, "cluster: NATS dropped messages for this node (slow consumer)");
                        }
                        other => tracing::info!(%node, event = %other, "cluster: NATS event"),
                    }
                }
            })
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            batch_limit: bus.config().limits.max_batch_messages,
            config: config.clone(),
            origin: origin.clone(),
            client: client.clone(),
            federation,
            stats: stats.clone(),
        });
        let forwarder = shared.federation.forwarder(forward::options()).await?;
        let mut tasks = Vec::new();
        let writer = if config.retained_stream.is_empty() {
            None
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(retained::QUEUE);
            tasks.push(tokio::spawn(retained::write(shared.clone(), rx, stop_rx.clone())));
            tasks.push(tokio::spawn(retained::run(shared.clone(), stop_rx.clone())));
            Some(tx)
        };
        tasks.push(tokio::spawn(forward::run(
            shared.clone(),
            forwarder,
            writer,
            stop_rx.clone(),
        )));
        let roster = members::Roster::default();
        tasks.push(tokio::spawn(members::run(
            shared.clone(),
            node.clone(),
            roster.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(receive::run(shared, stop_rx)));
        tracing::info!(%node, %origin, servers = ?config.servers, "cluster: joined");
        Ok(Cluster {
            inner: Arc::new(Inner {
                node,
                origin,
                servers: config.servers,
                client,
                stats,
                roster,
                stop,
                tasks: parking_lot::Mutex::new(tasks),
            }),
        })
    }

    /// A snapshot of the backplane.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let i = &self.inner;
        let s = &i.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let info = i.client.server_info();
        ClusterSnapshot {
            node: i.node.clone(),
            origin: i.origin.to_string(),
            members: members::list(&i.node, &i.origin, &i.roster),
            servers: i.servers.clone(),
            connected: i.client.connection_state() == async_nats::connection::State::Connected,
            server: info.server_name,
            known_servers: info.connect_urls,
            forwarded: get(&s.forwarded),
            forward_lost: get(&s.forward_lost),
            received: get(&s.received),
            relayed: get(&s.relayed),
            duplicates: get(&s.duplicates),
            gaps: get(&s.gaps),
            lost: get(&s.lost),
            served_elsewhere: get(&s.served_elsewhere),
            invalid: get(&s.invalid),
            refused: get(&s.refused),
            subscriptions: get(&s.subscriptions),
            interest: get(&s.interest),
            retained_written: get(&s.retained_written),
            retained_write_failures: get(&s.retained_write_failures),
            retained_received: get(&s.retained_received),
            disconnects: get(&s.disconnects),
            slow_consumer: get(&s.slow_consumer),
        }
    }

    /// Stops forwarding and receiving, sends what the forwarder handed NATS, and
    /// closes the connection. Call it before the bus's own shutdown.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        // Each task stops at its next step; one stuck handing a message to a full local
        // topic (a `block` subscriber that stopped reading) or to NATS is given up on.
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(node = %self.inner.node, "cluster: a backplane task did not stop in time; stopped");
            }
        }
        if self.inner.client.connection_state() == async_nats::connection::State::Connected {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.inner.client.flush()).await;
        }
        tracing::info!(node = %self.inner.node, "cluster: left");
    }
}
