//! Options of the `rabbitmq` sink.

use serde::Deserialize;

use crate::template::Template;

/// Options of the `rabbitmq` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// AMQP URI (`amqp://user:password@host:5672/vhost`, the vhost URL-encoded).
    pub url: String,
    /// Exchange to publish to; `""` is the default exchange.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Declare `exchange` (durable) with `exchange_type` on open.
    #[serde(default)]
    pub declare_exchange: bool,
    /// Type of a declared exchange.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: ExchangeType,
    /// Routing key of each record, from its topic.
    #[serde(default = "default_routing_key")]
    pub routing_key: Template,
    /// Publish with `mandatory`: a message no queue takes comes back as a poison record.
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// Publish with delivery mode 2 (persistent).
    #[serde(default = "yes")]
    pub persistent: bool,
    /// How long connecting may take.
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
}

/// AMQP exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routing key equals the binding key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Binding patterns with `*` and `#`.
    Topic,
    /// Routing on headers.
    Headers,
}

fn default_exchange() -> String {
    "amq.topic".into()
}

fn default_exchange_type() -> ExchangeType {
    ExchangeType::Topic
}

fn default_routing_key() -> Template {
    Template::parse("{topic}").expect("a valid template")
}

fn yes() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    5000
}

impl RabbitMqConfig {
    /// Checks what serde cannot: `(field, reason)` for the first problem.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = self.url.parse::<lapin::uri::AMQPUri>() {
            return Err(("url", format!("not an AMQP URI: {e}")));
        }
        if self.declare_exchange && self.exchange.is_empty() {
            return Err(("declare_exchange", "the default exchange cannot be declared".into()));
        }
        if self.exchange.len() > 255 {
            return Err(("exchange", "longer than 255 bytes".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "must be greater than zero".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    fn build(options: serde_json::Value) -> Result<(), String> {
        crate::sink::field_refused(super::super::factory, "amqp", options)
    }

    /// Bad options are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        assert_eq!(build(json!({ "url": "amqp://127.0.0.1" })), Ok(()));
        assert_eq!(build(json!({ "url": "http://x" })), Err("sinks.amqp.url".into()));
        assert_eq!(
            build(json!({ "url": "amqp://x", "exchange_type": "ring" })),
            Err("sinks.amqp.exchange_type".into())
        );
        assert_eq!(
            build(json!({ "url": "amqp://x", "exchange": "", "declare_exchange": true })),
            Err("sinks.amqp.declare_exchange".into())
        );
        assert_eq!(
            build(json!({ "url": "amqp://x", "routing_key": "{x}" })),
            Err("sinks.amqp.routing_key".into())
        );
    }
}
