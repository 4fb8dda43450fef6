//! Options of the `nats` sink.

use serde::Deserialize;

use crate::template::Template;

/// Options of the `nats` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (`nats://host:4222`).
    pub url: String,
    /// The subject each record is published to, from its topic.
    #[serde(default = "default_subject")]
    pub subject: Template,
    /// JetStream stream the subjects belong to; without it, core NATS publishes.
    #[serde(default)]
    pub stream: Option<String>,
    /// Create `stream` when it does not exist, capturing `stream_subjects`.
    #[serde(default)]
    pub create_stream: bool,
    /// Subjects of a stream the sink creates.
    #[serde(default)]
    pub stream_subjects: Vec<String>,
    /// How long a JetStream acknowledgement may take.
    #[serde(default = "default_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long connecting may take.
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_subject() -> Template {
    Template::parse("{topic}").expect("a valid template")
}

fn default_timeout_ms() -> u64 {
    5000
}

impl NatsConfig {
    /// Checks what serde cannot: `(field, reason)` for the first problem.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.url.trim().is_empty() {
            return Err(("url", "must name a server".into()));
        }
        if let Some(stream) = &self.stream
            && (stream.is_empty() || stream.contains(['.', '*', '>', ' ', '/', '\\']))
        {
            return Err((
                "stream",
                format!("{stream:?} is not a stream name (no '.', '*', '>', '/', '\\' or spaces)"),
            ));
        }
        if self.create_stream && self.stream.is_none() {
            return Err(("create_stream", "needs a stream name in `stream`".into()));
        }
        if self.create_stream && self.stream_subjects.is_empty() {
            return Err((
                "stream_subjects",
                "a stream to create needs its subjects (e.g. [\"sensors.>\"])".into(),
            ));
        }
        if self.ack_timeout_ms == 0 {
            return Err(("ack_timeout_ms", "must be greater than zero".into()));
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
        crate::sink::field_refused(super::super::factory, "js", options)
    }

    /// Bad options are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        assert_eq!(build(json!({ "url": "nats://x" })), Ok(()));
        assert_eq!(build(json!({})), Err("sinks.js".into()));
        assert_eq!(
            build(json!({ "url": "nats://x", "subject": "a.{0}" })),
            Err("sinks.js.subject".into())
        );
        assert_eq!(
            build(json!({ "url": "nats://x", "stream": "a.b" })),
            Err("sinks.js.stream".into())
        );
        assert_eq!(
            build(json!({ "url": "nats://x", "create_stream": true })),
            Err("sinks.js.create_stream".into())
        );
        assert_eq!(
            build(json!({ "url": "nats://x", "stream": "S", "create_stream": true })),
            Err("sinks.js.stream_subjects".into())
        );
        assert_eq!(
            build(json!({ "url": "nats://x", "ack_timeout_ms": 0 })),
            Err("sinks.js.ack_timeout_ms".into())
        );
        assert_eq!(
            build(json!({ "url": "nats://x", "colour": 1 })),
            Err("sinks.js.colour".into())
        );
    }
}
