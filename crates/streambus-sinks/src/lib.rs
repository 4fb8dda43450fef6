//! The streambus sink plugin contract, the durable disk buffer, and the built-in sinks.
//!
//! A sink takes batches of [`Record`]s (messages as the bus delivered them) to somewhere
//! outside the bus: a table, a file, a queue. This crate holds what a sink author needs
//! and nothing of the actor runtime that drives sinks (that is `streambus-core`'s generic
//! sink actor, which owns batching, retries, dead-lettering, restarts and the buffer), so
//! a sink is testable with a plain `#[tokio::test]`.
//!
//! Modules:
//! - [`sink`]: the [`Sink`] trait, its [`SinkError`] (retryable, fatal, poison record),
//!   and how a sink is built from its config entry ([`SinkSpec`], [`SinkFactory`]).
//! - [`record`]: [`Record`], what a sink receives, and its message id.
//! - [`registry`]: [`SinkRegistry`], sink types by name, for `[[sinks]]` config entries.
//! - [`buffer`]: [`DurableBuffer`], segment files of CRC-framed bincode records with
//!   acknowledgement and replay, bounded in bytes.
//! - [`encode`]: the JSON Lines form of a record (the `file` and `stdout` sinks).
//! - [`template`]: destination names made from a record's topic (`sensors.{2}`).
//! - Built-in sinks: [`stdout`]; [`mod@file`] (feature `file`); [`postgres`] (feature
//!   `postgres`); [`nats`] (feature `nats`); [`mod@redis`] (feature `redis`);
//!   [`rabbitmq`] (feature `rabbitmq`); [`mqtt`] (feature `mqtt`); [`influxdb`] (feature
//!   `influxdb`); `kafka` (feature `kafka`, not default: it builds librdkafka).
//! - `testsuite` (feature `testsuite`): failure-mode sinks for tests.

pub mod buffer;
pub mod encode;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "influxdb")]
pub mod influxdb;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
pub mod record;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
pub mod sink;
pub mod stdout;
pub mod template;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use buffer::{BufferError, BufferOptions, BufferSnapshot, DurableBuffer, FsyncPolicy};
pub use record::{MESSAGE_ID_HEADER, Record};
pub use registry::SinkRegistry;
pub use sink::{Sink, SinkError, SinkErrorKind, SinkFactory, SinkSpec};

/// Re-exported so that sink crates implement [`Sink`] with the same macro.
pub use async_trait::async_trait;
