//! State of one sink shared by its supervisor entry, its intake, its workers and
//! snapshots: counters, status, the source, and the batch being written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use streambus_sinks::{BufferSnapshot, DurableBuffer, Record};
use streambus_types::{Message, SinkConfig, Topic};
use tokio::sync::mpsc;

use crate::queue::SubscriberQueue;
use crate::session_handle::SessionHandle;

/// What a sink is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkStatus {
    /// Opening its destination.
    Starting,
    /// Writing (or waiting for records).
    Running,
    /// A write failed and is being retried.
    Retrying,
    /// Waiting to be started again after a panic or a fatal error.
    Restarting,
    /// Past its restart budget: its traffic goes to its dead-letter topic.
    Quarantined,
    /// Drained and closed (shutdown).
    Stopped,
}

/// A point-in-time view of one sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSnapshot {
    /// The sink's name.
    pub name: String,
    /// Its type.
    pub kind: String,
    /// What it is doing.
    pub status: SinkStatus,
    /// Records written and acknowledged.
    pub written: u64,
    /// Successful writes.
    pub batches: u64,
    /// Failed write attempts retried.
    pub retries: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records lost before reaching the sink (a buffer full under `drop_newest`, disk
    /// errors), each also logged.
    pub dropped: u64,
    /// Restarts after a panic or fatal error.
    pub restarts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Records on their way to the sink: in its subscription buffers, its intake
    /// channel or disk buffer, or the batch being written.
    pub pending: u64,
    /// The disk buffer, for a durable sink.
    pub buffer: Option<BufferSnapshot>,
}

/// Where the worker takes records from.
pub(crate) enum Source {
    /// Chunks from the intake; `None` from `recv` means the intake ended.
    Memory(tokio::sync::Mutex<MemorySource>),
    /// The disk buffer (acknowledged by id).
    Disk(Arc<DurableBuffer>),
}

/// The receiving end of a memory sink's intake channel, with what was received beyond
/// the last batch.
pub(crate) struct MemorySource {
    /// Delivery runs from the intake task, the only sender; capacity
    /// [`MEMORY_CHANNEL_CHUNKS`]. Only the running worker receives (it holds the
    /// source's lock while cutting a batch). `None` from `recv`: the intake ended
    /// (shutdown) and everything it sent has been received.
    pub(crate) rx: mpsc::Receiver<Vec<Record>>,
    /// Records received beyond the last batch's `batch.max_events`; the next batch
    /// starts with them. At most one run's worth.
    pub(crate) carry: Vec<Record>,
}

/// Delivery runs in flight between a memory sink's intake and its worker; the real
/// backlog waits in the subscription buffer in front. A run is at most a subscription
/// buffer's worth, so a memory sink holds at most four times `buffer.max_events`: the
/// subscription buffer, the run the intake holds, one in the channel, and the run the
/// worker is cutting batches from.
pub(crate) const MEMORY_CHANNEL_CHUNKS: usize = 1;

/// A batch taken from the source: its records and, for a disk source, the highest id.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// The records, in source order.
    pub(crate) records: Vec<Record>,
    /// The disk buffer's id of the last record (what is acknowledged once it is
    /// written); `None` for a memory source.
    pub(crate) last_id: Option<u64>,
}

/// One sink's shared state: made once at start-up by [`SinkShared::new`], then held by
/// its supervisor entry, its intake task, each incarnation's worker, and the quarantine
/// drain. It outlives every incarnation, which is what lets a restart resume where the
/// last one stopped.
pub(crate) struct SinkShared {
    /// The sink's `[[sinks]]` entry (name, type, batching, retry, restart budget).
    pub(crate) config: SinkConfig,
    /// `$dlq.<name>`: where poison records and a quarantined sink's traffic are
    /// published.
    pub(crate) dlq: Topic,
    /// Where the worker takes records from; the intake is the only writer.
    pub(crate) source: Source,
    /// The sink's subscription buffers, read for snapshots only (their backlog and
    /// drops); the intake task owns the subscriptions themselves.
    pub(crate) buffers: Vec<Arc<SubscriberQueue>>,
    /// The batch being written, taken from the source and not yet acknowledged. A new
    /// incarnation (or the quarantine drain) writes it before taking anything else, so a
    /// crash mid-write loses nothing.
    pub(crate) pending: tokio::sync::Mutex<Option<Batch>>,
    /// The bus's `sinks` session, shared by every sink: publishes dead letters. Never
    /// closed by a sink; the bus closes it at shutdown.
    pub(crate) session: SessionHandle,
    /// What the sink is doing, for snapshots; written by the worker and the supervisor.
    pub(crate) status: Mutex<SinkStatus>,
    /// The last failure's message, for snapshots.
    pub(crate) last_error: Mutex<Option<String>>,
    /// Records written and acknowledged.
    pub(crate) written: AtomicU64,
    /// Successful batch writes.
    pub(crate) batches: AtomicU64,
    /// Failed write attempts that were retried.
    pub(crate) retries: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub(crate) dead_lettered: AtomicU64,
    /// Records lost after the intake took them (disk buffer full or failing, source
    /// gone); drops in the subscription buffers are counted there.
    pub(crate) dropped: AtomicU64,
    /// Records the intake took from the subscription buffers.
    pub(crate) received: AtomicU64,
    /// Restarts after a panic or a fatal error.
    pub(crate) restarts: AtomicU32,
}

impl SinkShared {
    /// The shared state of the sink configured by `config`, reading from `source`, with
    /// its subscriptions' buffers and the session that publishes its dead letters.
    pub(crate) fn new(
        config: SinkConfig,
        dlq: Topic,
        source: Source,
        buffers: Vec<Arc<SubscriberQueue>>,
        session: SessionHandle,
    ) -> Arc<Self> {
        Arc::new(SinkShared {
            config,
            dlq,
            source,
            buffers,
            pending: tokio::sync::Mutex::new(None),
            session,
            status: Mutex::new(SinkStatus::Starting),
            last_error: Mutex::new(None),
            written: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
        })
    }

    pub(crate) fn set_status(&self, status: SinkStatus) {
        *self.status.lock() = status;
    }

    pub(crate) fn set_error(&self, error: impl Into<String>) {
        *self.last_error.lock() = Some(error.into());
    }

    /// Sends records to the dead-letter topic with the reason; returns once published.
    pub(crate) async fn dead_letter(&self, records: &[Record], reason: &str) {
        if records.is_empty() {
            return;
        }
        let name = &self.config.name;
        let messages: Vec<Message> = records
            .iter()
            .map(|r| {
                let mut headers: Vec<(String, String)> = r.headers.as_slice().to_vec();
                headers.retain(|(k, _)| k != streambus_sinks::MESSAGE_ID_HEADER);
                headers.extend([
                    (streambus_sinks::MESSAGE_ID_HEADER.to_owned(), r.message_id.clone()),
                    ("dlq-sink".to_owned(), name.clone()),
                    ("dlq-reason".to_owned(), reason.to_owned()),
                    ("dlq-topic".to_owned(), r.topic.to_string()),
                    ("dlq-sequence".to_owned(), r.sequence.to_string()),
                ]);
                Message::new(self.dlq.clone(), Bytes::clone(&r.payload)).with_headers(headers)
            })
            .collect();
        self.dead_lettered.fetch_add(records.len() as u64, Ordering::Relaxed);
        tracing::warn!(sink = %name, records = records.len(), reason, "records sent to the dead-letter topic");
        for chunk in messages.chunks(self.session.batch_limit()) {
            if let Err(e) = self.session.publish_batch(chunk.to_vec()).await {
                tracing::error!(sink = %name, records = chunk.len(), error = %e, "dead letters could not be published; they are lost");
            }
        }
    }

    /// Backoff before attempt `attempt` (from 1): between half and all of an exponential
    /// cap ("equal jitter"), so that sinks failing together do not retry in lockstep.
    pub(crate) fn backoff(initial_ms: u64, max_ms: u64, attempt: u32) -> Duration {
        let cap = initial_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms);
        Duration::from_millis(fastrand::u64(cap / 2..=cap))
    }

    pub(crate) fn snapshot(&self) -> SinkSnapshot {
        let written = self.written.load(Ordering::Relaxed);
        let dead = self.dead_lettered.load(Ordering::Relaxed);
        let lost = self.dropped.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        let (queued, queue_dropped) = self
            .buffers
            .iter()
            .map(|q| q.snapshot())
            .fold((0, 0), |(m, d), s| (m + s.queued_messages as u64, d + s.dropped));
        SinkSnapshot {
            name: self.config.name.clone(),
            kind: self.config.kind.clone(),
            status: *self.status.lock(),
            written,
            batches: self.batches.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_lettered: dead,
            dropped: lost + queue_dropped,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            pending: received.saturating_sub(written + dead + lost) + queued,
            buffer: match &self.source {
                Source::Disk(b) => Some(b.snapshot()),
                Source::Memory(_) => None,
            },
        }
    }
}
