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
//! - the `Sink` and `SinkSupervisor` actors (in `actors`): restarts with backoff after a
//!   panic or fatal error, quarantine past the restart budget (the sink's traffic then
//!   goes to its dead-letter topic), snapshots.

pub(crate) mod intake;
pub(crate) mod shared;
pub(crate) mod worker;

pub use shared::{SinkSnapshot, SinkStatus};
