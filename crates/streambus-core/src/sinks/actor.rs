//! The `Sink` actor: one incarnation of one configured sink.
//!
//! The actor builds a fresh sink from its factory and runs the worker
//! ([`crate::sinks::worker::run`]) in a task, so that it stays responsive while a write
//! is in progress. When the worker ends it tells the actor: a clean end (the source is
//! drained, at shutdown) stops the actor normally; a fatal error or a panic in the sink
//! fails the actor, and its supervisor decides about a restart. Stopping the actor
//! aborts the worker; the batch it was writing stays in the sink's `pending` slot.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use streambus_sinks::{SinkFactory, SinkSpec};

use super::shared::SinkShared;
use super::worker;

/// What a sink actor is told.
#[derive(Debug)]
pub(crate) enum SinkMessage {
    /// The worker task ended (from the task itself): `Err` holds the reason.
    WorkerEnded(Result<(), String>),
}

/// Arguments of a sink actor, given by the sink supervisor for each incarnation.
pub(crate) struct SinkArgs {
    /// The sink's state shared across incarnations (source, pending batch, counters).
    pub(crate) shared: Arc<SinkShared>,
    /// Builds this incarnation's sink (`pre_start` fails, and so counts as a failure,
    /// if it refuses).
    pub(crate) factory: SinkFactory,
    /// The entry the factory is called with.
    pub(crate) spec: SinkSpec,
}

/// State of a sink actor.
pub(crate) struct SinkState {
    /// The worker task, which sends `WorkerEnded` to this actor when it ends. Aborted
    /// when the actor stops (a restart, shutdown): its batch in progress stays in the
    /// shared `pending` slot for the next incarnation.
    worker: tokio::task::JoinHandle<()>,
}

/// The sink actor.
pub(crate) struct SinkActor;

/// The message of a caught panic, for the failure reason.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Actor for SinkActor {
    type Msg = SinkMessage;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(&self, myself: ActorRef<SinkMessage>, args: SinkArgs) -> Result<SinkState, ActorProcessingErr> {
        let sink = (args.factory)(&args.spec)?;
        let shared = args.shared;
        let worker = tokio::spawn(async move {
            let result = AssertUnwindSafe(worker::run(sink, shared))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(format!("sink panicked: {}", panic_message(panic.as_ref()))));
            // The actor may be stopping already; then nobody needs to know.
            let _ = myself.cast(SinkMessage::WorkerEnded(result));
        });
        Ok(SinkState { worker })
    }

    async fn handle(
        &self,
        myself: ActorRef<SinkMessage>,
        message: SinkMessage,
        _state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SinkMessage::WorkerEnded(Ok(())) => {
                myself.stop(Some("drained".into()));
                Ok(())
            }
            SinkMessage::WorkerEnded(Err(reason)) => Err(reason.into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<SinkMessage>, state: &mut SinkState) -> Result<(), ActorProcessingErr> {
        state.worker.abort();
        Ok(())
    }
}
