//! The `redis` sink: one Redis Stream entry per record, `XADD` pipelined per batch.
//!
//! ```toml
//! [[sinks]]
//! name = "rs"
//! type = "redis"
//! topics = ["sensors.>"]
//! url = "redis://127.0.0.1:6379"
//! key = "streambus:{topic}"        # template (see streambus_sinks::template)
//! maxlen = 0                       # > 0: trim each stream to about this many entries
//! connect_timeout_ms = 5000
//! response_timeout_ms = 5000
//! ```
//!
//! Each entry has the fields `topic`, `seq` (per-topic sequence), `id` (the record's
//! message id), `time_ns` (publish time), `headers` (a JSON object, only when there
//! are headers) and `payload` (the bytes as published). With `maxlen` each `XADD`
//! carries `MAXLEN ~ maxlen`, so Redis trims in whole macro nodes (cheap, approximate).
//!
//! A batch is one pipeline of `XADD`s, one round trip. Redis Streams cannot deduplicate
//! on a client's id, so delivery is at least once: a batch written again after a failure
//! (the connection lost before the replies came back) may add some entries twice, each
//! carrying its `id` field for a consumer that must deduplicate. The connection is a
//! redis-rs connection manager, which reconnects by itself; a lost connection or a
//! timeout is retryable. A command Redis refuses on its own (the key holds another type,
//! out of memory under `noeviction`) makes that record a poison record: it goes to the
//! dead-letter topic with Redis's reason, and the rest of the batch lands.

mod config;
mod sink;

pub use config::RedisConfig;
pub use sink::RedisSink;
pub(crate) use sink::factory;
