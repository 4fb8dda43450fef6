//! Start-up of the sink runtime: every `[[sinks]]` entry checked before anything runs,
//! then each sink's source, subscriptions, shared state and intake task, then the
//! supervisor that runs them.
//!
//! [`prepare`] is pure validation (the type is registered, its factory accepts the
//! options) and runs before the bus starts any actor, so a bad entry fails
//! [`crate::Bus::start`] with the field named and nothing to clean up. [`start`] runs
//! once the bus is up, because sinks subscribe through a session like any client.

use std::sync::Arc;

use ractor::{Actor, ActorRef};
use streambus_sinks::{BufferOptions, DurableBuffer, FsyncPolicy, SinkFactory, SinkRegistry, SinkSpec};
use streambus_types::config::{BufferKind, WhenFull};
use streambus_types::{BusConfig, ConfigError, OverflowPolicy, SinkConfig, SubscriptionOptions};

use super::intake;
use super::shared::{MEMORY_CHANNEL_CHUNKS, MemorySource, SinkShared, Source};
use super::supervisor::{SinkEntryArgs, SinkSupervisor, SinkSupervisorArgs, SinkSupervisorMessage};
use crate::error::BusError;
use crate::session_handle::SessionHandle;
use crate::subscription::Subscription;

/// A `[[sinks]]` entry that passed its checks: its type's factory and its options.
pub(crate) struct PreparedSink {
    /// Builds a fresh sink for each incarnation (called once more at every restart).
    factory: SinkFactory,
    /// The entry as the factory sees it.
    spec: SinkSpec,
}

/// Checks every sink entry of `config` against `registry`: its type is known and its
/// factory accepts its options. Errors name the field.
pub(crate) fn prepare(config: &BusConfig, registry: &SinkRegistry) -> Result<Vec<PreparedSink>, BusError> {
    let mut prepared = Vec::with_capacity(config.sinks.len());
    for s in &config.sinks {
        let factory = registry.get(&s.kind).ok_or_else(|| ConfigError {
            field: format!("sinks.{}.type", s.name),
            reason: format!(
                "unknown sink type {:?} (known: {})",
                s.kind,
                registry.kinds().collect::<Vec<_>>().join(", ")
            ),
        })?;
        let spec = SinkSpec {
            name: s.name.clone(),
            options: s.options.clone(),
        };
        factory(&spec)?;
        prepared.push(PreparedSink { factory, spec });
    }
    Ok(prepared)
}

/// Starts every prepared sink of `config`, subscribing through `session`, and the
/// supervisor that runs them; returns the supervisor.
///
/// `prepared` is [`prepare`]'s answer for the same `config`, in the same order.
pub(crate) async fn start(
    config: &BusConfig,
    prepared: Vec<PreparedSink>,
    session: SessionHandle,
) -> Result<ActorRef<SinkSupervisorMessage>, BusError> {
    let mut sinks = Vec::with_capacity(prepared.len());
    for (cfg, PreparedSink { factory, spec }) in config.sinks.iter().zip(prepared) {
        let shared = start_one(config, cfg, &session).await?;
        sinks.push(SinkEntryArgs { shared, factory, spec });
    }
    let (actor, _) = Actor::spawn(None, SinkSupervisor, SinkSupervisorArgs { sinks })
        .await
        .map_err(|e| BusError::Internal(format!("starting the sink supervisor: {e}")))?;
    Ok(actor)
}

/// Opens one sink's source and subscriptions and spawns its intake task.
async fn start_one(config: &BusConfig, cfg: &SinkConfig, session: &SessionHandle) -> Result<Arc<SinkShared>, BusError> {
    let b = &cfg.buffer;
    let (source, tx, overflow) = match b.kind {
        BufferKind::Memory => {
            let (tx, rx) = tokio::sync::mpsc::channel(MEMORY_CHANNEL_CHUNKS);
            let source = Source::Memory(tokio::sync::Mutex::new(MemorySource { rx, carry: Vec::new() }));
            let overflow = match b.when_full {
                WhenFull::Block => OverflowPolicy::Block,
                WhenFull::DropNewest => OverflowPolicy::DropNewest,
            };
            (source, Some(tx), overflow)
        }
        BufferKind::Disk => {
            let dir = cfg.buffer_dir(&config.storage);
            let buffer = DurableBuffer::open(BufferOptions {
                dir: dir.clone(),
                max_bytes: b.max_bytes,
                segment_bytes: b.segment_bytes,
                fsync: FsyncPolicy::from_setting(b.fsync, b.fsync_interval_ms),
                when_full: b.when_full,
            })
            // Name what the user must change: the buffer's own path, or the data dir.
            .map_err(|e| ConfigError {
                field: match b.path {
                    Some(_) => format!("sinks.{}.buffer.path", cfg.name),
                    None => "storage.data_dir".into(),
                },
                reason: format!(
                    "sink {} cannot keep its disk buffer in {}: {e}",
                    cfg.name,
                    dir.display()
                ),
            })?;
            // The intake moves records to disk quickly; the buffer's own `when_full`
            // decides what happens when the disk budget is used up.
            (Source::Disk(Arc::new(buffer)), None, OverflowPolicy::Block)
        }
    };
    // A memory sink's backlog waits in its subscription buffers, bounded by the sink's
    // own budget; a disk sink's subscriptions use the server's defaults.
    let memory = b.kind == BufferKind::Memory;
    let mut subscriptions = Vec::new();
    for filter in cfg.filters() {
        let options = SubscriptionOptions {
            queue_group: None,
            overflow: Some(overflow),
            buffer_messages: memory.then_some(b.max_events),
            buffer_bytes: memory.then_some(b.max_bytes as usize),
            // Each message is written by the node it was published on.
            local_only: true,
        };
        subscriptions.push(session.subscribe_as(filter, options, !memory).await?);
    }
    let shared = SinkShared::new(
        cfg.clone(),
        cfg.dead_letter_topic()?,
        source,
        subscriptions.iter().map(Subscription::queue).collect(),
        session.clone(),
    );
    tokio::spawn(intake::run(shared.clone(), subscriptions, tx));
    tracing::info!(sink = %cfg.name, kind = %cfg.kind, topics = ?cfg.topics, buffer = ?b.kind, "sink started");
    Ok(shared)
}
