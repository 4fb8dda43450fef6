//! The streambus actor core: sessions, topics, routing, bounded backpressure and
//! supervision, embeddable in any tokio program.
//!
//! Start a [`Bus`], then publish and subscribe directly or through sessions
//! ([`Bus::connect`]). The gRPC server of the `streambus` crate serves each network
//! stream with the same session actor, so an in-process client and a network client
//! behave identically.
//!
//! Modules:
//! - [`bus`]: the [`Bus`]: start, snapshots, the one shutdown path.
//! - [`session_handle`]: [`SessionHandle`], a client's publish and subscribe API, and
//!   [`DurableAck`].
//! - [`subscription`]: [`Subscription`], a stream of events, and its batch API.
//! - `actors`: the actor tree (session manager, sessions, topic supervisor, topics).
//! - [`sinks`]: the sink runtime (intake, worker, sink actors and their supervisor,
//!   start-up) and its snapshots.
//! - `router`: the publish path shared by every session handle; `directory`: how a
//!   publisher finds a topic; `admission`: topic mailbox bounds; `budget`: the
//!   bus-wide memory budget over every topic's admission; `queue`:
//!   subscriber buffers and overflow policies; `index`: the subscription index (exact
//!   map and wildcard trie); `receipt`: durable acknowledgements.
//! - [`metrics`]: bus-wide counters (messages, refusals, drops, gaps, latency) for the
//!   admin plane.
//! - [`error`]: the one error type, [`BusError`].
//! - [`federation`]: what a cluster backplane needs of a bus ([`Federation`]): local
//!   interest, the forwarder's subscription, relayed batches.

pub mod access;
mod actors;
mod admission;
mod budget;
pub mod bus;
mod directory;
pub mod error;
pub mod federation;
mod index;
pub mod metrics;
mod queue;
mod receipt;
mod router;
pub mod session_handle;
pub mod sinks;
pub mod subscription;

pub use access::{Access, Quota};
pub use actors::session::{SessionId, SessionSnapshot};
pub use actors::session_manager::SessionManagerSnapshot;
pub use actors::topic::TopicSnapshot;
pub use actors::topic_supervisor::TopicSupervisorSnapshot;
pub use budget::MemorySnapshot;
pub use bus::{Bus, BusCounters, BusSnapshot, ConnectOptions, Quiesced};
pub use directory::TopicRoute;
pub use error::BusError;
pub use federation::{Federation, InterestChange, InterestKey, Relay};
pub use metrics::{HistogramSnapshot, MetricsSnapshot};
pub use queue::{DeliveryRun, QueueSnapshot};
pub use session_handle::{DurableAck, SessionHandle};
pub use sinks::{SinkSnapshot, SinkStatus};
pub use streambus_sinks as sink;
pub use streambus_types::config::{QuotaAction, QuotaConfig, Rules};
pub use streambus_types::{
    BusConfig, CloseReason, ConfigError, Delivery, ErrorCode, Event, Gap, Headers, Message, OverflowPolicy, SinkConfig,
    SubscriptionOptions, Topic, TopicFilter,
};
pub use subscription::{BatchEvent, Subscription, SubscriptionId, SubscriptionSnapshot};
