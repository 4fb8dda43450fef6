//! Options of the `redis` sink.

use serde::Deserialize;

use crate::template::Template;

/// Options of the `redis` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Server URL (`redis://[:password@]host:6379[/db]`).
    pub url: String,
    /// The stream key each record is added to, from its topic.
    #[serde(default = "default_key")]
    pub key: Template,
    /// Trim each stream to about this many entries (`MAXLEN ~`); 0 keeps everything.
    #[serde(default)]
    pub maxlen: u64,
    /// How long connecting may take.
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a batch's replies may take.
    #[serde(default = "default_timeout_ms")]
    pub response_timeout_ms: u64,
}

fn default_key() -> Template {
    Template::parse("streambus:{topic}").expect("a valid template")
}

fn default_timeout_ms() -> u64 {
    5000
}

impl RedisConfig {
    /// Checks what serde cannot: `(field, reason)` for the first problem.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = ::redis::Client::open(self.url.as_str()) {
            return Err(("url", format!("not a Redis URL: {e}")));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "must be greater than zero".into()));
        }
        if self.response_timeout_ms == 0 {
            return Err(("response_timeout_ms", "must be greater than zero".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    fn build(options: serde_json::Value) -> Result<(), String> {
        crate::sink::field_refused(super::super::factory, "rs", options)
    }

    /// Bad options are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        assert_eq!(build(json!({ "url": "redis://127.0.0.1" })), Ok(()));
        assert_eq!(build(json!({ "url": "http://x" })), Err("sinks.rs.url".into()));
        assert_eq!(
            build(json!({ "url": "redis://x", "key": "{" })),
            Err("sinks.rs.key".into())
        );
        assert_eq!(
            build(json!({ "url": "redis://x", "maxlen": -1 })),
            Err("sinks.rs.maxlen".into())
        );
        assert_eq!(
            build(json!({ "url": "redis://x", "response_timeout_ms": 0 })),
            Err("sinks.rs.response_timeout_ms".into())
        );
    }
}
