//! Options of the `kafka` sink.

use serde::Deserialize;

use crate::template::Template;

/// Options of the `kafka` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port` comma-separated.
    pub brokers: String,
    /// The Kafka topic of each record, from its bus topic.
    #[serde(default = "default_topic")]
    pub topic: Template,
    /// The message key, from the bus topic; `""` sends none.
    #[serde(default = "default_key")]
    pub key: String,
    /// How long the producer waits to fill a batch.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How long a message may take to be acknowledged, retries included.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Compression of the producer's batches.
    #[serde(default = "default_compression")]
    pub compression: Compression,
}

/// Producer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    None,
    /// gzip (zlib).
    Gzip,
}

fn default_topic() -> Template {
    Template::parse("{1}").expect("a valid template")
}

fn default_key() -> String {
    "{topic}".into()
}

fn default_linger_ms() -> u64 {
    5
}

fn default_message_timeout_ms() -> u64 {
    30_000
}

fn default_compression() -> Compression {
    Compression::None
}

impl KafkaConfig {
    /// The key template, if a key is sent.
    pub(crate) fn key_template(&self) -> Result<Option<Template>, String> {
        if self.key.is_empty() {
            return Ok(None);
        }
        Template::parse(&self.key).map(Some).map_err(|e| e.to_string())
    }

    /// Checks what serde cannot: `(field, reason)` for the first problem.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.brokers.trim().is_empty() {
            return Err(("brokers", "must name at least one broker".into()));
        }
        self.key_template().map_err(|e| ("key", e))?;
        if self.message_timeout_ms == 0 {
            return Err(("message_timeout_ms", "must be greater than zero".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    fn build(options: serde_json::Value) -> Result<(), String> {
        crate::sink::field_refused(super::super::factory, "events", options)
    }

    /// Bad options are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        assert_eq!(build(json!({ "brokers": "127.0.0.1:9092" })), Ok(()));
        assert_eq!(build(json!({ "brokers": " " })), Err("sinks.events.brokers".into()));
        assert_eq!(
            build(json!({ "brokers": "b", "key": "{" })),
            Err("sinks.events.key".into())
        );
        assert_eq!(
            build(json!({ "brokers": "b", "compression": "brotli" })),
            Err("sinks.events.compression".into())
        );
        assert_eq!(
            build(json!({ "brokers": "b", "topic": "" })),
            Err("sinks.events.topic".into())
        );
    }
}
