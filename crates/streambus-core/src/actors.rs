//! The session and topic actors, one per file; the sink actors live with the rest of
//! the sink runtime in [`crate::sinks`].
//!
//! The whole supervision tree:
//!
//! ```text
//! Bus (handle; owns the three roots and the one shutdown path)
//! ├── SessionManager ──► Session ×N     one per client connection (in-process or gRPC);
//! │                                       owns its subscriptions and per-session limits;
//! │                                       a failed session is removed, never restarted
//! ├── TopicSupervisor ──► Topic ×M      the actor of an awake topic that needed one (a
//! │                                       stalled subscriber's room, a busy topic's queue),
//! │                                       stopped again once idle for a sweep period;
//! │                                       the supervisor owns every topic's incarnation
//! │                                       (started on first publish or subscription,
//! │                                       restarted at once after a panic, put to sleep or
//! │                                       reaped when idle) and the subscription index
//! └── SinkSupervisor ──► Sink ×K        one per configured sink (crate::sinks); restarted
//!                                         with backoff, quarantined past its budget
//! ```
//!
//! Hot path: a [`crate::SessionHandle`] publishes straight to the topic (through the
//! directory and the topic's admission): it pushes the shared delivery batch into each
//! subscriber's bounded buffer itself under the topic's fan-out lock, or leaves it
//! queued for the topic's actor (started then, if the topic has none yet) when the
//! topic is busy or stalled; the consumer pops them. Control traffic (subscribe,
//! unsubscribe, close, observe) goes through the session and supervisor actors.
//!
//! Every session and supervisor answers `Observe` with a serializable snapshot (a
//! topic's is read from its fan-out state), and every supervisor's
//! `handle_supervisor_evt` cleans every map that references a dead child.

pub(crate) mod session;
pub(crate) mod session_manager;
pub(crate) mod topic;
pub(crate) mod topic_supervisor;
