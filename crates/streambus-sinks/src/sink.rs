//! The [`Sink`] trait: the contract between a destination and the bus.
//!
//! A sink has a small lifecycle, driven by the bus's generic sink actor:
//!
//! 1. [`Sink::open`] once per incarnation (connect, create the table, open the file);
//! 2. [`Sink::write`] a batch, then [`Sink::flush`]; only when both succeed are the
//!    batch's records acknowledged (and removed from the sink's durable buffer);
//! 3. [`Sink::close`] on shutdown or before a restart; [`Sink::health`] on demand.
//!
//! Everything around that lives once in the runtime, not in each sink: batching (by
//! events, bytes and delay), retries with backoff and jitter, dead-lettering poison
//! records, restarts after a panic or a fatal error, quarantine, the disk buffer.
//!
//! # Construction
//!
//! A [`SinkFactory`] turns one `[[sinks]]` entry (its [`SinkSpec`]: the name and the
//! type-specific fields) into a fresh sink. The runtime calls it once at start-up to
//! validate the entry and again for every restart; the [`crate::SinkRegistry`] maps type
//! names to factories.
//!
//! # Errors
//!
//! A [`SinkError`] says what the runtime should do: [`SinkErrorKind::Retryable`] (the
//! same batch is written again after a backoff: the server is down, a timeout),
//! [`SinkErrorKind::Fatal`] (this incarnation cannot go on: the sink is closed and
//! started again from its factory, within its restart budget), or
//! [`SinkErrorKind::Poison`] (a record of the batch can never be written: it goes to the
//! dead-letter topic with the reason and the rest of the batch is written again; when
//! the sink cannot say which record, the runtime finds it by splitting the batch).
//!
//! # Delivery
//!
//! At least once. The runtime assumes a failed `write` stored nothing; a sink that can
//! store part of a batch before failing will see those records again (deduplicate on
//! [`crate::Record::message_id`] where that matters).

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use streambus_types::ConfigError;

use crate::record::Record;

/// What a failed sink call asks the runtime to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// Transient: write the same batch again after a backoff.
    Retryable,
    /// This incarnation cannot continue: close it and start a new one.
    Fatal,
    /// A record of the batch can never be written.
    Poison {
        /// Index of the bad record in the batch passed to `write`, when the sink knows
        /// it; otherwise the runtime isolates it by splitting the batch in halves.
        index: Option<usize>,
    },
}

/// A sink failure: its kind and a human reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What the runtime should do.
    pub kind: SinkErrorKind,
    /// Why, for logs, snapshots and dead-letter headers.
    pub message: String,
}

impl SinkError {
    /// A transient failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError {
            kind: SinkErrorKind::Retryable,
            message: message.into(),
        }
    }

    /// A failure this incarnation cannot recover from.
    pub fn fatal(message: impl Into<String>) -> Self {
        SinkError {
            kind: SinkErrorKind::Fatal,
            message: message.into(),
        }
    }

    /// Record `index` of the batch can never be written.
    pub fn poison(index: usize, message: impl Into<String>) -> Self {
        SinkError {
            kind: SinkErrorKind::Poison { index: Some(index) },
            message: message.into(),
        }
    }

    /// Some record of the batch can never be written, the sink cannot tell which.
    pub fn poison_somewhere(message: impl Into<String>) -> Self {
        SinkError {
            kind: SinkErrorKind::Poison { index: None },
            message: message.into(),
        }
    }

    /// Whether writing the same batch again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == SinkErrorKind::Retryable
    }
}

/// A destination for records. Implement it in your own crate and register it in a
/// [`crate::SinkRegistry`].
///
/// ```
/// use streambus_sinks::{async_trait, Record, Sink, SinkError};
///
/// /// Counts what it is given.
/// struct Counter(u64);
///
/// #[async_trait]
/// impl Sink for Counter {
///     async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
///         self.0 += batch.len() as u64;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Sink: Send + 'static {
    /// Prepares the destination (connect, create what is missing). Called once per
    /// incarnation before the first write; a retryable error is retried with backoff.
    async fn open(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Writes a batch, all or nothing as far as the runtime knows. Never empty.
    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError>;

    /// Makes what `write` accepted durable at the destination (flush a file, ...).
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Releases the destination. Called on shutdown and before a restart.
    async fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Whether the destination is reachable now.
    async fn health(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Builds a sink from its configuration entry.
pub type SinkFactory = Arc<dyn Fn(&SinkSpec) -> Result<Box<dyn Sink>, ConfigError> + Send + Sync>;

/// One configured sink, as its factory sees it.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The sink's name (unique in the configuration).
    pub name: String,
    /// The fields of the entry that the runtime does not own.
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl SinkSpec {
    /// Parses the type-specific fields into `T`. Errors name the field as
    /// `sinks.<name>.<field>`; use `#[serde(deny_unknown_fields)]` on `T` so that a
    /// misspelt field is refused.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = serde_json::Value::Object(self.options.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError {
                field: if path == "." {
                    format!("sinks.{}", self.name)
                } else {
                    format!("sinks.{}.{path}", self.name)
                },
                reason: e.into_inner().to_string(),
            }
        })
    }

    /// An error about `field` of this sink.
    pub fn error(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: format!("sinks.{}.{field}", self.name),
            reason: reason.into(),
        }
    }
}

/// Builds sink `name` with `factory` from `options` (a JSON object): `Ok` or the field
/// the factory refused. For the option tests of each sink type.
#[cfg(test)]
pub(crate) fn field_refused(
    factory: fn(&SinkSpec) -> Result<Box<dyn Sink>, ConfigError>,
    name: &str,
    options: serde_json::Value,
) -> Result<(), String> {
    let spec = SinkSpec {
        name: name.to_owned(),
        options: options.as_object().cloned().unwrap_or_default(),
    };
    factory(&spec).map(|_| ()).map_err(|e| e.field)
}
