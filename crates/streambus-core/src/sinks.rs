//! The generic sink runtime: what every sink gets without writing it.
//!
//! For each `[[sinks]]` entry the bus runs:
//!
//! ```text
//! topics ──► subscription(s) ──► intake task ──► source ──► worker (in a Sink actor) ──► Sink
//!            (bounded; block or    (records;      (memory      (batching, retry, poison
//!             drop_newest)          confirms       channel or   split, dead letters,
//!                                   durable        disk         ack)
//!                                   receipts)      buffer)
//! ```
//!
//! - `intake`: one task per sink, for the bus's whole life. It turns deliveries into
//!   [`streambus_sinks::Record`]s and puts them in the sink's source: a small bounded
//!   channel (memory buffer: the subscription buffer in front of it holds the backlog),
//!   or the [`streambus_sinks::DurableBuffer`] (disk), after which it confirms durable
//!   receipts. A full source makes the intake wait, which fills the subscription buffer,
//!   whose policy (`block`: the topic waits; `drop_newest`: counted gaps) applies. Each
//!   sink has its own subscriptions, so a stalled sink stalls no other sink and, unless
//!   it is `block`, no topic.
//! - `worker`: runs one sink incarnation: open, then batches (by events, bytes, delay)
//!   written and flushed with retries (exponential backoff with jitter), poison records
//!   isolated (by index, or by splitting the batch) and published to `$dlq.<name>` with
//!   the reason while the rest lands, then acknowledged. The batch being written is kept
//!   in the sink's shared state, so the next incarnation writes it first.
//! - `actor` and `supervisor`: the `Sink` actor runs one incarnation's worker; the
//!   `SinkSupervisor` restarts a failed one with backoff after a panic or fatal error,
//!   quarantines it past the restart budget (its traffic then goes to its dead-letter
//!   topic), and answers snapshots.
//! - `start`: checks every entry before the bus starts, then opens each sink's source
//!   and subscriptions, makes its shared state (`shared`) and spawns its intake.
//!
//! The bus holds the runtime through `SinkRuntime`, a handle on the supervisor; the
//! runtime publishes dead letters through a [`crate::SessionHandle`] it is given, so
//! nothing here reaches back into the bus.
//!
//! ## Supervision
//!
//! ```text
//! SinkSupervisor ──► Sink ×K     restarted with backoff; quarantined past its budget
//! (intake ×K: plain tasks, one per sink, outliving every incarnation)
//! ```

mod actor;
mod intake;
mod shared;
mod start;
mod supervisor;
mod worker;

use std::time::Duration;

use ractor::ActorRef;

pub use shared::{SinkSnapshot, SinkStatus};
pub(crate) use start::{PreparedSink, prepare};
use supervisor::SinkSupervisorMessage;

use crate::error::{BusError, answered};
use crate::session_handle::SessionHandle;

/// How long the supervisor gets to answer an `Observe`.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running sink runtime: a handle on its supervisor.
#[derive(Debug, Clone)]
pub(crate) struct SinkRuntime {
    /// The sink supervisor. Calls only (observe, drain); stopped by [`Self::shutdown`].
    /// Dropping the handle stops nothing.
    supervisor: ActorRef<SinkSupervisorMessage>,
}

impl SinkRuntime {
    /// Starts the sinks of `config` that [`prepare`] checked, subscribing and publishing
    /// dead letters through `session`.
    pub(crate) async fn start(
        config: &streambus_types::BusConfig,
        prepared: Vec<PreparedSink>,
        session: SessionHandle,
    ) -> Result<SinkRuntime, BusError> {
        let supervisor = start::start(config, prepared, session).await?;
        Ok(SinkRuntime { supervisor })
    }

    /// Every sink's snapshot, in name order.
    pub(crate) async fn snapshots(&self) -> Result<Vec<SinkSnapshot>, BusError> {
        answered(
            self.supervisor
                .call(SinkSupervisorMessage::Observe, Some(OBSERVE_TIMEOUT))
                .await,
        )
    }

    /// Starts quarantined sink `name` again (see [`crate::Bus::restart_sink`]).
    pub(crate) async fn restart(&self, name: &str) -> Result<SinkSnapshot, BusError> {
        let name = name.to_owned();
        answered(
            self.supervisor
                .call(
                    |reply| SinkSupervisorMessage::Resume { name, reply },
                    Some(OBSERVE_TIMEOUT),
                )
                .await,
        )?
    }

    /// Waits (up to `timeout`) for every sink to write what its source holds and stop,
    /// then stops the supervisor. The sinks' subscriptions must be closed first (that
    /// ends their sources). Whatever is left is named, sink by sink: kept on disk for
    /// the next start (WARN) or lost (ERROR).
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        let drained = matches!(
            self.supervisor.call(SinkSupervisorMessage::Drain, Some(timeout)).await,
            Ok(ractor::rpc::CallResult::Success(()))
        );
        if !drained {
            for s in self
                .snapshots()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|s| s.pending > 0)
            {
                match &s.buffer {
                    Some(_) => {
                        tracing::warn!(sink = %s.name, records = s.pending, "sink did not drain in time; its records stay in its disk buffer for the next start")
                    }
                    None => {
                        tracing::error!(sink = %s.name, records = s.pending, error = ?s.last_error, "sink did not drain in time; its buffered records are lost")
                    }
                }
            }
        }
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await;
    }
}
