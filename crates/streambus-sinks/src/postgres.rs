//! The `postgres` sink: a time-series table written with binary `COPY`.
//!
//! ```toml
//! [[sinks]]
//! name = "pg"
//! type = "postgres"
//! topics = ["sensors.>"]
//! url = "postgres://postgres@127.0.0.1:5432/test"
//! table = "streambus_events"     # created if missing
//! idempotent = false             # true: a unique index on message_id, duplicates skipped
//! pool_size = 4
//! connect_timeout_ms = 5000
//! ```
//!
//! The table (created with an index on `time`):
//!
//! | column | type | |
//! | --- | --- | --- |
//! | `time` | `timestamptz` | publish time (microsecond precision) |
//! | `topic` | `text` | |
//! | `sequence` | `bigint` | per-topic sequence |
//! | `message_id` | `text` | see [`crate::Record::message_id`] |
//! | `headers` | `jsonb` | object of name → value, `NULL` when none |
//! | `payload_json` | `jsonb` | the payload when it is JSON, else `NULL` |
//! | `payload_bytes` | `bytea` | the payload when it is not JSON, else `NULL` |
//!
//! Each batch is one transaction: a binary `COPY` into the table, or with `idempotent`
//! into a temporary staging table followed by `INSERT … ON CONFLICT (message_id) DO
//! NOTHING`, so a batch written again after a failure leaves no duplicate. Connection
//! and server-side transient failures are retryable (the pool reconnects); a row
//! PostgreSQL refuses (a JSON payload `jsonb` cannot hold, say) is a poison record
//! whose index comes from the `COPY` error's line number.

mod config;
mod sink;

pub use config::PostgresConfig;
pub use sink::PostgresSink;
pub(crate) use sink::factory;
