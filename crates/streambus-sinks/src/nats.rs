//! The `nats` sink: JetStream publishes with acknowledgements, or core NATS.
//!
//! ```toml
//! [[sinks]]
//! name = "js"
//! type = "nats"
//! topics = ["sensors.>"]
//! url = "nats://127.0.0.1:4222"
//! subject = "{topic}"              # template (see streambus_sinks::template)
//! stream = "TELEMETRY"             # JetStream stream; leave out for core NATS
//! create_stream = true             # create it if missing, with stream_subjects
//! stream_subjects = ["sensors.>"]
//! ack_timeout_ms = 5000
//! connect_timeout_ms = 5000
//! ```
//!
//! Each record is published to the subject its topic makes through `subject`, with
//! the record's headers as NATS headers plus `Streambus-Topic` and
//! `Streambus-Sequence`.
//!
//! **With `stream`** (JetStream): every publish carries `Nats-Msg-Id` = the record's
//! message id, and the batch's acknowledgements are awaited together (pipelined), so a
//! batch written again after a failure is deduplicated by the server within the stream's
//! duplicate window (2 minutes by default): at least once, no duplicate in the stream.
//! A message the stream refuses on its own (larger than the stream's `max_msg_size`) is
//! a poison record; the server unreachable, a timed-out acknowledgement or a stream out
//! of resources is retryable; a stream that does not exist (and is not to be created) is
//! fatal.
//!
//! **Without `stream`** (core NATS): publishes are flushed per batch; NATS itself is at
//! most once for subscribers that are not connected, so this mode is for live fan-out
//! only. A message over the server's `max_payload` is a poison record.

mod config;
mod sink;

pub use config::NatsConfig;
pub(crate) use sink::factory;
pub use sink::{NatsSink, SEQUENCE_HEADER, TOPIC_HEADER};
