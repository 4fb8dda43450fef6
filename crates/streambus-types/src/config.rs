//! Configuration of the bus core.
//!
//! Plain serde structs: unknown fields are refused, every field has a default (all
//! defaults live in the `Default` impls below), units are in the field names. Parsing and
//! checking are separate: deserialize, then call [`BusConfig::validate`], which names the
//! offending field in its error.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::policy::OverflowPolicy;

mod cluster;
mod security;
mod sinks;

pub use cluster::ClusterConfig;

pub use security::{
    AdminAccess, AuthConfig, CertificateIdentity, JwtAlgorithm, JwtConfig, QuotaAction, QuotaConfig, RoleConfig, Rules,
    TlsConfig, UserConfig,
};
pub use sinks::{
    BufferKind, FsyncPolicy, SinkBatchConfig, SinkBufferConfig, SinkConfig, SinkRestartConfig, SinkRetryConfig,
    StorageConfig, WhenFull,
};

/// Configuration of the in-process bus.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Hard limits on what clients may do.
    pub limits: LimitsConfig,
    /// Per-topic mailbox bounds and idle reaping.
    pub topics: TopicsConfig,
    /// Defaults for subscriptions that do not set their own buffer and policy.
    pub subscriptions: SubscriptionDefaults,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// The gRPC listener (used by `streambus serve`; the in-process bus ignores it).
    pub grpc: GrpcConfig,
    /// Where the bus keeps files.
    pub storage: StorageConfig,
    /// The HTTP admin plane (used by `streambus serve`; the in-process bus ignores it).
    pub admin: AdminConfig,
    /// Authentication, permissions and quotas of clients (off by default).
    pub auth: AuthConfig,
    /// Sinks: where messages are written outside the bus (`[[sinks]]` entries).
    pub sinks: Vec<SinkConfig>,
    /// Federation with other nodes over a NATS cluster (off by default).
    pub cluster: ClusterConfig,
}

/// Hard limits. Each refusal is a typed error that names the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message accepted, payload plus headers, in bytes.
    pub max_message_bytes: usize,
    /// Most messages in one publish batch.
    pub max_batch_messages: usize,
    /// Most live subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// Most topics alive at once (each has an actor and a mailbox).
    pub max_topics: usize,
    /// The bus-wide memory budget, in bytes: everything admitted to topics and not yet
    /// fanned out to subscriber buffers, summed over every topic (each message counts
    /// its payload and headers plus 64 bytes). When it is used up, publishers wait (or
    /// `try_publish` is refused) as on a full topic. See the README for the whole bound.
    pub max_memory_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 1024 * 1024,
            max_batch_messages: 4096,
            max_subscriptions_per_session: 1024,
            max_sessions: 100_000,
            max_topics: 100_000,
            max_memory_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Bounds of each topic actor's mailbox (its admission) and its idle reaping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Most messages admitted to one topic and not yet fanned out.
    pub mailbox_messages: usize,
    /// Most bytes admitted to one topic and not yet fanned out.
    pub mailbox_bytes: usize,
    /// A topic with no subscriber, no retained message and no traffic for this long is
    /// stopped; it is started again on the next publish.
    pub idle_timeout_ms: u64,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            mailbox_messages: 16_384,
            mailbox_bytes: 32 * 1024 * 1024,
            idle_timeout_ms: 60_000,
        }
    }
}

/// Subscription defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionDefaults {
    /// Buffer capacity in messages.
    pub buffer_messages: usize,
    /// Buffer capacity in bytes (payload plus headers).
    pub buffer_bytes: usize,
    /// Overflow policy (see [`OverflowPolicy`] for why `drop_oldest` is the default).
    pub overflow: OverflowPolicy,
}

impl Default for SubscriptionDefaults {
    fn default() -> Self {
        SubscriptionDefaults {
            buffer_messages: 8192,
            buffer_bytes: 16 * 1024 * 1024,
            overflow: OverflowPolicy::default(),
        }
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long shutdown waits for admitted messages to reach subscriber buffers before
    /// it drops the rest (counted and logged).
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 5_000,
        }
    }
}

/// The gRPC listener and its per-stream transport settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address the gRPC server listens on.
    pub addr: SocketAddr,
    /// TCP keepalive idle time of accepted connections (with `write_deadline_ms` as the
    /// TCP user timeout, a peer gone from the network is dropped about this long plus
    /// the deadline after it last spoke); with `http2_keepalive`, also the HTTP/2 PING
    /// interval.
    pub keepalive_interval_ms: u64,
    /// How long an HTTP/2 PING may go unanswered (with `http2_keepalive`).
    pub keepalive_timeout_ms: u64,
    /// Whether the server sends HTTP/2 PINGs every `keepalive_interval_ms` and closes a
    /// connection that leaves one unanswered for `keepalive_timeout_ms`: it finds a peer
    /// whose kernel still answers but whose process does not (a frozen client, a stuck
    /// proxy) within about 40 s. Off by default: the HTTP/2 layer then looks at its ping
    /// timer on every poll of every connection (about 4 % of the server's CPU under
    /// device fan-in), while a peer gone from the network is found by TCP keepalive and
    /// the user timeout, and a silent session by `idle_timeout_ms` (the SDK pings
    /// every 30 s), as a NATS server finds a dead client by its own pings in minutes.
    pub http2_keepalive: bool,
    /// A `Connect` stream that sends no frame for this long is ended (clients send
    /// `ping` frames to stay alive while only listening). 0 disables the timeout.
    pub idle_timeout_ms: u64,
    /// Capacity of each stream's outbound queue, in frames. When it is full the
    /// stream's subscriptions stop being read and their overflow policies apply.
    pub outbound_frames: usize,
    /// Capacity of each stream's outbound queue, in bytes (one frame is always taken
    /// into an empty queue, whatever its size).
    pub outbound_bytes: usize,
    /// A stream whose client takes nothing from its full outbound queue for this long
    /// is closed as a slow consumer (`RESOURCE_EXHAUSTED`) and its memory released; it
    /// is also the TCP user timeout of accepted connections. 0 turns both off.
    pub write_deadline_ms: u64,
    /// TLS (and mutual TLS) on the listener; absent: plain text.
    pub tls: Option<TlsConfig>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            keepalive_interval_ms: 20_000,
            keepalive_timeout_ms: 20_000,
            http2_keepalive: false,
            idle_timeout_ms: 300_000,
            outbound_frames: 256,
            outbound_bytes: 4 * 1024 * 1024,
            write_deadline_ms: 10_000,
            tls: None,
        }
    }
}

/// The HTTP admin plane: health probes, Prometheus metrics, the JSON API and the
/// dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether `streambus serve` starts it.
    pub enabled: bool,
    /// Address it listens on. It has no authentication of its own: keep it on loopback
    /// or a private network.
    pub addr: SocketAddr,
    /// Topics that get per-topic series in `/metrics` (exact names, at most
    /// [`AdminConfig::MAX_METRICS_TOPICS`]); every other topic is only in the totals,
    /// so the number of series never grows with the number of topics or devices.
    pub metrics_topics: Vec<String>,
    /// Whether `/readyz` answers 503 while a sink is quarantined (for a deployment that
    /// would rather have the load balancer move devices to a healthy node).
    pub ready_requires_sinks: bool,
    /// How often the dashboard's live feed sends an update, in milliseconds.
    pub dashboard_interval_ms: u64,
    /// HTTPS for the admin plane; absent: plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl AdminConfig {
    /// Most entries in `metrics_topics`.
    pub const MAX_METRICS_TOPICS: usize = 100;
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_topics: Vec::new(),
            ready_requires_sinks: false,
            dashboard_interval_ms: 1_000,
            tls: None,
        }
    }
}

/// A configuration value that cannot work, with the dotted path of the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `topics.mailbox_bytes`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn positive(field: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError {
            field: field.into(),
            reason: "must be greater than zero".into(),
        });
    }
    Ok(())
}

impl BusConfig {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        positive("limits.max_message_bytes", l.max_message_bytes as u64)?;
        positive("limits.max_batch_messages", l.max_batch_messages as u64)?;
        positive(
            "limits.max_subscriptions_per_session",
            l.max_subscriptions_per_session as u64,
        )?;
        positive("limits.max_sessions", l.max_sessions as u64)?;
        if l.max_memory_bytes < l.max_message_bytes.saturating_mul(2) {
            return Err(ConfigError {
                field: "limits.max_memory_bytes".into(),
                reason: format!(
                    "{} is less than twice limits.max_message_bytes ({}): a largest message \
                     could hold the whole budget",
                    l.max_memory_bytes, l.max_message_bytes
                ),
            });
        }
        positive("limits.max_topics", l.max_topics as u64)?;
        let t = &self.topics;
        positive("topics.mailbox_messages", t.mailbox_messages as u64)?;
        positive("topics.idle_timeout_ms", t.idle_timeout_ms)?;
        if t.mailbox_bytes < l.max_message_bytes {
            return Err(ConfigError {
                field: "topics.mailbox_bytes".into(),
                reason: format!(
                    "{} is smaller than limits.max_message_bytes ({}): a largest message \
                     could never be admitted",
                    t.mailbox_bytes, l.max_message_bytes
                ),
            });
        }
        let s = &self.subscriptions;
        positive("subscriptions.buffer_messages", s.buffer_messages as u64)?;
        positive("subscriptions.buffer_bytes", s.buffer_bytes as u64)?;
        positive("shutdown.drain_timeout_ms", self.shutdown.drain_timeout_ms)?;
        let g = &self.grpc;
        positive("grpc.keepalive_interval_ms", g.keepalive_interval_ms)?;
        positive("grpc.keepalive_timeout_ms", g.keepalive_timeout_ms)?;
        positive("grpc.outbound_frames", g.outbound_frames as u64)?;
        positive("grpc.outbound_bytes", g.outbound_bytes as u64)?;
        if let Some(tls) = &g.tls {
            tls.validate("grpc.tls")?;
        }
        self.auth.validate()?;
        let a = &self.admin;
        positive("admin.dashboard_interval_ms", a.dashboard_interval_ms)?;
        if let Some(tls) = &a.tls {
            tls.validate("admin.tls")?;
        }
        if a.metrics_topics.len() > AdminConfig::MAX_METRICS_TOPICS {
            return Err(ConfigError {
                field: "admin.metrics_topics".into(),
                reason: format!(
                    "{} topics named; at most {} get their own series",
                    a.metrics_topics.len(),
                    AdminConfig::MAX_METRICS_TOPICS
                ),
            });
        }
        if let Some((t, e)) = a
            .metrics_topics
            .iter()
            .find_map(|t| crate::Topic::new(t.as_str()).err().map(|e| (t, e)))
        {
            return Err(ConfigError {
                field: "admin.metrics_topics".into(),
                reason: format!("{t:?} is not a topic: {e}"),
            });
        }
        self.cluster.validate()?;
        sinks::validate_sinks(&self.sinks, l.max_message_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are valid, and a partial TOML file fills the rest from them.
    #[test]
    fn defaults_and_partial_toml() {
        BusConfig::default().validate().unwrap();
        let cfg: BusConfig =
            toml::from_str("[topics]\nmailbox_messages = 10\n[subscriptions]\noverflow = \"block\"\n").unwrap();
        assert_eq!(cfg.topics.mailbox_messages, 10);
        assert_eq!(cfg.topics.mailbox_bytes, TopicsConfig::default().mailbox_bytes);
        assert_eq!(cfg.subscriptions.overflow, OverflowPolicy::Block);
        cfg.validate().unwrap();
    }

    /// The shipped sample file parses, validates, and states exactly the defaults.
    #[test]
    fn sample_file_is_the_defaults() {
        let sample: BusConfig = toml::from_str(include_str!("../../../streambus.example.toml")).unwrap();
        sample.validate().unwrap();
        assert_eq!(sample, BusConfig::default());
    }

    /// Unknown fields are refused at parse time, bad values at validation with the field.
    #[test]
    fn errors_name_the_field() {
        assert!(toml::from_str::<BusConfig>("[topics]\nmailbox_msgs = 1\n").is_err());
        let mut cfg = BusConfig::default();
        cfg.topics.mailbox_messages = 0;
        assert_eq!(cfg.validate().unwrap_err().field, "topics.mailbox_messages");
        let mut cfg = BusConfig::default();
        cfg.topics.mailbox_bytes = 10;
        assert_eq!(cfg.validate().unwrap_err().field, "topics.mailbox_bytes");
    }

    /// The admin plane's per-topic series are bounded and name real topics.
    #[test]
    fn admin_metrics_topics_are_bounded_and_valid() {
        let mut cfg = BusConfig::default();
        cfg.admin.metrics_topics = vec!["sensors.*.temp".into()];
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field, "admin.metrics_topics");
        assert!(e.reason.contains("sensors.*.temp"), "{e}");
        cfg.admin.metrics_topics = (0..=AdminConfig::MAX_METRICS_TOPICS).map(|i| format!("t{i}")).collect();
        assert_eq!(cfg.validate().unwrap_err().field, "admin.metrics_topics");
        cfg.admin.metrics_topics.truncate(AdminConfig::MAX_METRICS_TOPICS);
        cfg.validate().unwrap();
    }
}
