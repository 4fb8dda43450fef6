//! `[cluster]`: several bus nodes federated over a NATS cluster.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Federation over a NATS cluster (off unless `servers` names at least one server).
///
/// Each node delivers locally as a lone node does, forwards to NATS only what was
/// published on it, and subscribes on NATS only for the filters its own subscribers
/// hold. The README's architecture section gives the design, its guarantees and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    /// Empty: the node runs alone.
    pub servers: Vec<String>,
    /// This node's name, unique in the cluster (the host name when empty). It tags what
    /// the node forwards and names it in the admin plane.
    pub node: String,
    /// Subject prefix on NATS: topic `a.b` travels as `<prefix>.a.b`. Nodes that share a
    /// prefix form one bus; another prefix on the same NATS cluster is another bus.
    pub subject_prefix: String,
    /// Retained values across nodes: the JetStream stream that keeps the last retained
    /// message per topic. Empty: retained values stay on the node they were published on.
    pub retained_stream: String,
    /// Replicas of the retained stream (1 on a single NATS server, 3 on a 3-node cluster).
    pub retained_replicas: usize,
    /// Most (origin, topic) pairs whose sequence a node tracks to find gaps and
    /// duplicates; past it the oldest tracking is forgotten (the next message of such a
    /// pair is taken as the start of a new run).
    pub max_tracked_topics: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            servers: Vec::new(),
            node: String::new(),
            subject_prefix: "streambus".into(),
            retained_stream: "STREAMBUS_RETAINED".into(),
            retained_replicas: 1,
            max_tracked_topics: 100_000,
        }
    }
}

impl ClusterConfig {
    /// Whether the node federates.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &str, reason: String| ConfigError {
            field: format!("cluster.{field}"),
            reason,
        };
        if let Some(s) = self
            .servers
            .iter()
            .find(|s| !(s.starts_with("nats://") || s.starts_with("tls://")))
        {
            return Err(err("servers", format!("{s:?} is not a nats:// or tls:// URL")));
        }
        let token_ok = |t: &str| {
            !t.is_empty() && t != "*" && t != ">" && t.chars().all(|c| c.is_ascii_graphic() && c != '.' && c != '$')
        };
        if !self.subject_prefix.split('.').all(token_ok) {
            return Err(err(
                "subject_prefix",
                format!(
                    "{:?} must be dot-separated tokens of visible ASCII, without wildcards or `$`",
                    self.subject_prefix
                ),
            ));
        }
        if self.node.chars().any(|c| !c.is_ascii_graphic()) || self.node.len() > 128 {
            return Err(err(
                "node",
                format!("{:?} must be at most 128 visible ASCII characters", self.node),
            ));
        }
        if !self.retained_stream.is_empty()
            && !self
                .retained_stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(err(
                "retained_stream",
                format!(
                    "{:?}: a JetStream stream name is letters, digits, `_` and `-`",
                    self.retained_stream
                ),
            ));
        }
        if self.retained_replicas == 0 || self.retained_replicas > 5 {
            return Err(err("retained_replicas", "must be 1 to 5".into()));
        }
        if self.max_tracked_topics == 0 {
            return Err(err("max_tracked_topics", "must be greater than zero".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let mut c = ClusterConfig::default();
        c.validate().unwrap();
        assert!(!c.enabled());
        c.servers = vec!["nats://127.0.0.1:4222".into()];
        c.validate().unwrap();
        assert!(c.enabled());
        let field = |c: &ClusterConfig| c.validate().unwrap_err().field;
        let mut bad = c.clone();
        bad.servers.push("http://x".into());
        assert_eq!(field(&bad), "cluster.servers");
        for prefix in ["", "a..b", "a.*", "a.>", "$sys", "a b"] {
            let mut bad = c.clone();
            bad.subject_prefix = prefix.into();
            assert_eq!(field(&bad), "cluster.subject_prefix", "{prefix:?}");
        }
        let mut ok = c.clone();
        ok.subject_prefix = "org.bus-1".into();
        ok.validate().unwrap();
        let mut bad = c.clone();
        bad.retained_stream = "a.b".into();
        assert_eq!(field(&bad), "cluster.retained_stream");
        let mut bad = c.clone();
        bad.retained_replicas = 0;
        assert_eq!(field(&bad), "cluster.retained_replicas");
        let mut bad = c;
        bad.node = "two words".into();
        assert_eq!(field(&bad), "cluster.node");
    }
}
