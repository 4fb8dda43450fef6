//! The `kafka` sink: an idempotent producer with `acks=all` (librdkafka, through
//! rdkafka). Behind the `kafka` cargo feature, off by default: it builds librdkafka from
//! source (a C build of a few minutes); build the binary with `--features kafka`.
//!
//! ```toml
//! [[sinks]]
//! name = "events"
//! type = "kafka"
//! topics = ["sensors.>"]
//! brokers = "127.0.0.1:9092"       # bootstrap servers, comma-separated
//! topic = "{1}"                    # Kafka topic, a template over the bus topic
//! key = "{topic}"                  # message key, a template; "" sends no key
//! linger_ms = 5
//! message_timeout_ms = 30000
//! compression = "none"             # none | gzip
//! ```
//!
//! Each record becomes one Kafka message: its key from `key`, its headers plus
//! `streambus-topic`, `streambus-sequence` and `streambus-msg-id`, its timestamp the
//! publish time in milliseconds. The producer runs with `acks=all` and
//! `enable.idempotence=true`, so librdkafka's own retries within a producer session
//! never duplicate or reorder; the batch's deliveries are awaited together. A batch the
//! runtime writes again after a failure may duplicate messages (Kafka cannot deduplicate
//! across producer sessions without transactions); consumers can on `streambus-msg-id`.
//!
//! A message over the broker's or the producer's size limit, or a topic name Kafka
//! refuses, is a poison record; an authorization failure is fatal; timeouts and
//! unreachable brokers are retryable.
//!
//! No Kafka broker can be installed on the machines this is tested on: the sink's
//! tests run against librdkafka's built-in mock cluster (real brokers speaking the Kafka
//! protocol in-process, with failure injection), not against Apache Kafka itself.

mod config;
mod sink;

pub use config::KafkaConfig;
pub use sink::KafkaSink;
pub(crate) use sink::factory;
