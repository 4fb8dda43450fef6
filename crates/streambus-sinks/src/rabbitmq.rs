//! The `rabbitmq` sink: AMQP 0.9.1 publishes with publisher confirms.
//!
//! ```toml
//! [[sinks]]
//! name = "amqp"
//! type = "rabbitmq"
//! topics = ["sensors.>"]
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! exchange = "amq.topic"           # "" is the default exchange (routing key = queue)
//! declare_exchange = false         # true: declare `exchange` (durable, exchange_type)
//! exchange_type = "topic"          # direct | fanout | topic | headers
//! routing_key = "{topic}"          # template (see streambus_sinks::template)
//! mandatory = true                 # an unroutable message is a poison record
//! persistent = true                # delivery mode 2: written to disk by durable queues
//! connect_timeout_ms = 5000
//! ```
//!
//! The channel is in confirm mode: each record is published with its message id as the
//! AMQP `message-id`, its headers plus `streambus-topic` and `streambus-sequence` as
//! AMQP headers, its publish time as the `timestamp` (seconds), and the batch's
//! confirms are awaited together. At least once: a batch published again after a lost
//! connection may reach the queues twice (RabbitMQ does not deduplicate; consumers
//! can, on `message-id`).
//!
//! A message the broker returns as unroutable (with `mandatory`) or refuses (a nack:
//! a queue over its length limit with `reject-publish`, say) is a poison record: it
//! goes to the dead-letter topic with the broker's reason, the rest of the batch lands.
//! A lost connection or channel is retryable (the next write connects again); the
//! exchange missing (not declared here) closes the channel, also retried, so that the
//! sink resumes once an operator creates it.

mod config;
mod sink;

pub use config::RabbitMqConfig;
pub use sink::RabbitMqSink;
pub(crate) use sink::factory;
