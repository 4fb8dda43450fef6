//! The `mqtt` sink: MQTT 3.1.1 publishes at QoS 0, 1 or 2.
//!
//! ```toml
//! [[sinks]]
//! name = "broker"
//! type = "mqtt"
//! topics = ["sensors.>"]
//! host = "127.0.0.1"
//! port = 1883
//! topic = "{topic}"                # template; `{topic}` renders with `/` between tokens
//! qos = 1                          # 0 | 1 | 2
//! retain = false                   # publish with the retain flag
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
//! 1 and 2 across such retries (MQTT 3.1.1 has no message id to deduplicate on).
//!
//! MQTT 3.1.1 carries no headers: the record's headers, topic and message id are not
//! sent, only the payload. A broker refuses no single publish (it drops the connection
//! instead), so the only poison record is one whose topic the template cannot fill.

mod config;
mod sink;

pub use config::MqttConfig;
pub use sink::MqttSink;
pub(crate) use sink::factory;
