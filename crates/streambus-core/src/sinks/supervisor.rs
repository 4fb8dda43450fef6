//! The `SinkSupervisor` actor: starts one [`SinkActor`] per configured sink, restarts a
//! failed one with backoff, and quarantines one that keeps failing.
//!
//! A sink that fails (fatal error or panic) is started again after
//! `restart.initial_backoff_ms`, doubled for each failure within `restart.window_ms`
//! (with jitter, capped at `restart.max_backoff_ms`). More than `restart.max_restarts`
//! failures within the window quarantine it: no more restarts, and a task sends
//! everything it receives (starting with the batch it failed on) to `$dlq.<name>` with
//! the reason, so nothing is lost silently and nothing piles up. Other sinks are never
//! touched, and the supervisor itself never fails because of a sink.
//!
//! ## Supervision
//!
//! Supervises every `Sink` actor (linked at spawn): a failure schedules a restart with
//! backoff or quarantines the sink, as above; a normal stop (its source drained at
//! shutdown) is only recorded. The sinks' intake tasks are not actors: they run for the
//! bus's whole life and do not depend on any incarnation.
//!
//! # Invariants
//!
//! - At most one incarnation of a sink runs at a time (a restart is only scheduled when
//!   the previous actor has failed, and only spawned if none is running).
//! - `by_actor` holds exactly the live sink actors.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use streambus_sinks::{SinkFactory, SinkSpec};

use super::actor::{SinkActor, SinkArgs, SinkMessage};
use super::shared::{SinkShared, SinkSnapshot, SinkStatus};
use super::worker;
use crate::error::BusError;

/// What the sink supervisor is asked to do.
pub(crate) enum SinkSupervisorMessage {
    /// Start sink `name` again (from a timer set when it failed).
    Restart(String),
    /// Report every sink.
    Observe(RpcReplyPort<Vec<SinkSnapshot>>),
    /// An operator's restart: a quarantined sink gets a fresh restart budget and a new
    /// incarnation (its dead-letter drain stops); any other is left as it is.
    Resume {
        name: String,
        reply: RpcReplyPort<Result<SinkSnapshot, BusError>>,
    },
    /// Answer once every sink has drained its source and stopped (shutdown; the sources
    /// end when the bus closes the sinks' subscriptions).
    Drain(RpcReplyPort<()>),
}

/// One configured sink, as the supervisor starts it.
pub(crate) struct SinkEntryArgs {
    /// The sink's state that outlives its incarnations; its intake already runs.
    pub(crate) shared: Arc<SinkShared>,
    /// Builds each incarnation's sink.
    pub(crate) factory: SinkFactory,
    /// The entry the factory is called with.
    pub(crate) spec: SinkSpec,
}

/// Arguments of the sink supervisor, given by the sink runtime's start-up.
pub(crate) struct SinkSupervisorArgs {
    /// Every configured sink, each started at once.
    pub(crate) sinks: Vec<SinkEntryArgs>,
}

/// One sink as the supervisor keeps it.
struct Entry {
    /// What each incarnation is started from.
    args: SinkEntryArgs,
    /// The running incarnation, linked to the supervisor; `None` while a restart waits
    /// or after it stopped or was quarantined.
    actor: Option<ActorRef<SinkMessage>>,
    /// Failure times within the restart window.
    failures: VecDeque<Instant>,
    /// The dead-letter drain of a quarantined sink: a task reading the sink's source
    /// into its dead-letter topic for the bus's whole life. Aborted when the supervisor
    /// stops.
    quarantine: Option<tokio::task::JoinHandle<()>>,
}

/// State of the sink supervisor.
pub(crate) struct SinkSupervisorState {
    /// Every configured sink by name (snapshots come out in name order).
    entries: BTreeMap<String, Entry>,
    /// Live sink actors by actor id (the key supervision events carry) to their name.
    by_actor: HashMap<ActorId, String>,
    /// Set by `Drain` (shutdown): no restart is scheduled or spawned from then on.
    draining: bool,
    /// `Drain` callers, answered once no sink actor is left running.
    drain_waiters: Vec<RpcReplyPort<()>>,
}

/// The sink supervisor actor.
pub(crate) struct SinkSupervisor;

impl SinkSupervisorState {
    /// Starts an incarnation of sink `name`, unless one runs or it is quarantined.
    async fn spawn(&mut self, myself: &ActorRef<SinkSupervisorMessage>, name: &str) {
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        if entry.actor.is_some() || entry.quarantine.is_some() {
            return;
        }
        let args = SinkArgs {
            shared: entry.args.shared.clone(),
            factory: entry.args.factory.clone(),
            spec: entry.args.spec.clone(),
        };
        match Actor::spawn_linked(None, SinkActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), name.to_owned());
                entry.actor = Some(actor);
            }
            Err(e) => {
                // A factory that fails now (it validated at start) counts as a failure.
                tracing::warn!(sink = name, error = %e, "sink failed to start");
                let reason = e.to_string();
                self.failed(myself, name, reason);
            }
        }
    }

    /// Schedules a restart of `name`, or quarantines it past its budget.
    fn failed(&mut self, myself: &ActorRef<SinkSupervisorMessage>, name: &str, reason: String) {
        let draining = self.draining;
        let Some(entry) = self.entries.get_mut(name) else {
            return;
        };
        entry.actor = None;
        let shared = entry.args.shared.clone();
        shared.set_error(reason.clone());
        let restart = &shared.config.restart;
        let now = Instant::now();
        let window = Duration::from_millis(restart.window_ms);
        entry.failures.push_back(now);
        while entry.failures.front().is_some_and(|t| now.duration_since(*t) > window) {
            entry.failures.pop_front();
        }
        if draining {
            shared.set_status(SinkStatus::Stopped);
            return;
        }
        if entry.failures.len() as u32 > restart.max_restarts {
            tracing::error!(
                sink = name,
                failures = entry.failures.len(),
                window_ms = restart.window_ms,
                error = %reason,
                "sink quarantined past its restart budget; its records go to its dead-letter topic"
            );
            let reason = format!("sink quarantined: {reason}");
            entry.quarantine = Some(tokio::spawn(worker::drain_to_dead_letters(shared, reason)));
            return;
        }
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        shared.set_status(SinkStatus::Restarting);
        let delay = SinkShared::backoff(
            restart.initial_backoff_ms,
            restart.max_backoff_ms,
            entry.failures.len() as u32 - 1,
        );
        tracing::warn!(sink = name, error = %reason, delay_ms = delay.as_millis() as u64, "sink failed; restarting");
        let name = name.to_owned();
        myself.send_after(delay, move || SinkSupervisorMessage::Restart(name));
    }

    /// Answers the `Drain` callers once draining and no sink actor is left.
    fn check_drained(&mut self) {
        if self.draining && self.by_actor.is_empty() {
            for reply in self.drain_waiters.drain(..) {
                let _ = reply.send(());
            }
        }
    }
}

impl Actor for SinkSupervisor {
    type Msg = SinkSupervisorMessage;
    type State = SinkSupervisorState;
    type Arguments = SinkSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SinkSupervisorMessage>,
        args: SinkSupervisorArgs,
    ) -> Result<SinkSupervisorState, ActorProcessingErr> {
        let mut state = SinkSupervisorState {
            entries: BTreeMap::new(),
            by_actor: HashMap::new(),
            draining: false,
            drain_waiters: Vec::new(),
        };
        for sink in args.sinks {
            let name = sink.shared.config.name.clone();
            state.entries.insert(
                name,
                Entry {
                    args: sink,
                    actor: None,
                    failures: VecDeque::new(),
                    quarantine: None,
                },
            );
        }
        let names: Vec<String> = state.entries.keys().cloned().collect();
        for name in names {
            state.spawn(&myself, &name).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SinkSupervisorMessage>,
        message: SinkSupervisorMessage,
        state: &mut SinkSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SinkSupervisorMessage::Restart(name) => {
                if !state.draining {
                    state.spawn(&myself, &name).await;
                }
            }
            SinkSupervisorMessage::Observe(reply) => {
                let _ = reply.send(state.entries.values().map(|e| e.args.shared.snapshot()).collect());
            }
            SinkSupervisorMessage::Resume { name, reply } => {
                let Some(entry) = state.entries.get_mut(&name) else {
                    let _ = reply.send(Err(BusError::UnknownSink(name)));
                    return Ok(());
                };
                if let Some(drain) = entry.quarantine.take() {
                    // The drain stops at an await: a batch it was dead-lettering stays
                    // pending and the new incarnation writes it first (at least once).
                    drain.abort();
                    let _ = drain.await;
                    entry.failures.clear();
                    entry.args.shared.set_status(SinkStatus::Starting);
                    tracing::info!(sink = %name, "quarantined sink restarted by an operator");
                    if !state.draining {
                        state.spawn(&myself, &name).await;
                    }
                }
                let snapshot = state.entries.get(&name).map(|e| e.args.shared.snapshot());
                let _ = reply.send(snapshot.ok_or(BusError::UnknownSink(name)));
            }
            SinkSupervisorMessage::Drain(reply) => {
                state.draining = true;
                state.drain_waiters.push(reply);
                state.check_drained();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SinkSupervisorMessage>,
        event: SupervisionEvent,
        state: &mut SinkSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(name) = state.by_actor.remove(&cell.get_id()) {
                    state.failed(&myself, &name, err.to_string());
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(name) = state.by_actor.remove(&cell.get_id())
                    && let Some(entry) = state.entries.get_mut(&name)
                {
                    entry.actor = None;
                    tracing::info!(sink = %name, "sink drained and stopped");
                }
            }
            _ => {}
        }
        state.check_drained();
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SinkSupervisorMessage>,
        state: &mut SinkSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        for entry in state.entries.values_mut() {
            if let Some(q) = entry.quarantine.take() {
                q.abort();
            }
        }
        Ok(())
    }
}
