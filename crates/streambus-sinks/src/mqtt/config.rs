//! Options of the `mqtt` sink.

use serde::Deserialize;

use crate::template::Template;

/// Options of the `mqtt` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT topic of each record, from its bus topic (`{topic}` uses `/`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Quality of service: 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Protocol version: `"3.1.1"` or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// When to publish with the retain flag (the broker keeps the last message per
    /// topic): as the bus's publisher asked, always, or never.
    #[serde(default)]
    pub retain: Retain,
    /// Client id; empty means `streambus-<sink name>`.
    #[serde(default)]
    pub client_id: String,
    /// User name, when the broker asks for one.
    #[serde(default)]
    pub username: String,
    /// Password for `username`.
    #[serde(default)]
    pub password: String,
    /// Keep-alive interval, in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// How long connecting may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a batch's acknowledgements may take once its last message is sent.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

/// The MQTT protocol version the sink speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1: payload only; a refused publish drops the connection.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: headers as user properties, and a publish the broker refuses (reason
    /// code) is a poison record.
    #[serde(rename = "5")]
    V5,
}

/// When a message is published with the retain flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retain {
    /// When the bus's publisher marked it retain.
    #[default]
    AsPublished,
    /// Every message.
    Always,
    /// No message.
    Never,
}

fn default_port() -> u16 {
    1883
}

fn default_topic() -> String {
    "{topic}".into()
}

fn default_qos() -> u8 {
    1
}

fn default_keep_alive_s() -> u64 {
    30
}

fn default_connect_timeout_ms() -> u64 {
    5000
}

fn default_ack_timeout_ms() -> u64 {
    10_000
}

impl MqttConfig {
    /// The topic template, with `/` as the separator of `{topic}`.
    pub(crate) fn template(&self) -> Result<Template, String> {
        Template::parse_with_separator(&self.topic, '/').map_err(|e| e.to_string())
    }

    /// Checks what serde cannot: `(field, reason)` for the first problem.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.host.trim().is_empty() {
            return Err(("host", "must name the broker".into()));
        }
        self.template().map_err(|e| ("topic", e))?;
        if self.topic.contains(['+', '#']) {
            return Err(("topic", "wildcards '+' and '#' cannot be published to".into()));
        }
        if self.qos > 2 {
            return Err(("qos", format!("{} is not 0, 1 or 2", self.qos)));
        }
        if self.keep_alive_s < 5 {
            return Err(("keep_alive_s", "must be at least 5 seconds".into()));
        }
        if self.password.is_empty() != self.username.is_empty() && !self.password.is_empty() {
            return Err(("username", "a password needs a user name".into()));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "must be greater than zero".into()));
        }
        if self.ack_timeout_ms == 0 {
            return Err(("ack_timeout_ms", "must be greater than zero".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    fn build(options: serde_json::Value) -> Result<(), String> {
        crate::sink::field_refused(super::super::factory, "broker", options)
    }

    /// Bad options are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        assert_eq!(build(json!({ "host": "127.0.0.1" })), Ok(()));
        assert_eq!(build(json!({ "host": "" })), Err("sinks.broker.host".into()));
        assert_eq!(build(json!({ "host": "h", "qos": 3 })), Err("sinks.broker.qos".into()));
        assert_eq!(
            build(json!({ "host": "h", "topic": "a/#" })),
            Err("sinks.broker.topic".into())
        );
        assert_eq!(
            build(json!({ "host": "h", "topic": "{9x}" })),
            Err("sinks.broker.topic".into())
        );
        assert_eq!(
            build(json!({ "host": "h", "port": 70000 })),
            Err("sinks.broker.port".into())
        );
        assert_eq!(
            build(json!({ "host": "h", "password": "p" })),
            Err("sinks.broker.username".into())
        );
        assert_eq!(
            build(json!({ "host": "h", "protocol": "5", "retain": "always" })),
            Ok(())
        );
        assert_eq!(
            build(json!({ "host": "h", "protocol": "4" })),
            Err("sinks.broker.protocol".into())
        );
        assert_eq!(
            build(json!({ "host": "h", "retain": true })),
            Err("sinks.broker.retain".into())
        );
    }
}
