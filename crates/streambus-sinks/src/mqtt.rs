//! The `mqtt` sink: MQTT 3.1.1 or MQTT 5 publishes at QoS 0, 1 or 2.
//!
//! ```toml
//! [[sinks]]
//! name = "broker"
//! type = "mqtt"
//! topics = ["sensors.>"]
//! host = "127.0.0.1"
//! port = 1883
//! topic = "{topic}"                # template; `{topic}` renders with `/` between tokens
//! protocol = "3.1.1"               # "3.1.1" | "5"
//! qos = 1                          # 0 | 1 | 2
//! retain = "as_published"          # "as_published" | "always" | "never"
//! client_id = ""                   # default: streambus-<sink name>
//! username = ""                    # with password, when the broker asks
//! password = ""
//! keep_alive_s = 30
//! connect_timeout_ms = 5000
//! ack_timeout_ms = 10000
//! ```
//!
//! MQTT topics separate levels with `/`: `{topic}` renders `sensors.dev1.temp` as
//! `sensors/dev1/temp`; literal text and `{N}` tokens are kept as written. Each batch is
//! published in order and the write returns once every message is acknowledged (QoS 1:
//! `PUBACK`; QoS 2: `PUBCOMP`; QoS 0: once written to the connection). A lost
//! connection, a refused connect or an acknowledgement slower than `ack_timeout_ms` is
//! retryable; the next write connects anew with a clean session. At least once for QoS
//! 1 and 2 across such retries (MQTT has no message id a broker deduplicates on).
//!
//! The retain flag is, by default, the one the bus's publisher set: a message published
//! with `retain` becomes the broker's retained message of its MQTT topic too.
//! `retain = "always"` or `"never"` overrides it.
//!
//! MQTT 3.1.1 carries no headers: only the payload is sent. A 3.1.1 broker refuses no
//! single publish (it drops the connection instead), so the only poison record is one
//! whose topic the template cannot fill.
//!
//! MQTT 5 carries the record's headers as user properties, plus `msg-id` (the record's
//! message id) when the headers have none, for consumers that deduplicate. A publish the
//! broker acknowledges with a failure reason code (`PUBACK`/`PUBREC`: not authorised,
//! topic name invalid, quota exceeded, payload format invalid…) is a poison record: it
//! goes to the dead-letter topic with the reason and the rest of its batch lands. The
//! broker's receive maximum bounds the publishes in flight (Mosquitto's default is 20,
//! its `max_inflight_messages`), which bounds throughput at QoS 1 and 2.

mod config;
mod sink;

pub use config::MqttConfig;
pub use sink::MqttSink;
pub(crate) use sink::factory;
