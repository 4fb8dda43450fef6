//! `[[sinks]]` entries: what the generic sink runtime needs of every sink.
//!
//! The runtime owns `name`, `type`, `topics`, `batch`, `retry`, `restart` and `buffer`;
//! every other field of the entry is the sink type's own and is handed to its factory
//! (which refuses fields it does not know). Validation here names the offending field as
//! `sinks.<name>.<field>`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::topic::{Topic, TopicFilter};

/// One configured sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkConfig {
    /// Unique name: one topic token (it names the dead-letter topic `$dlq.<name>`).
    pub name: String,
    /// The sink type, as registered (`postgres`, `file`, `stdout`, or your own).
    #[serde(rename = "type")]
    pub kind: String,
    /// Topic filters whose messages the sink receives. They must not overlap.
    pub topics: Vec<String>,
    /// How records are grouped into writes.
    #[serde(default)]
    pub batch: SinkBatchConfig,
    /// Retries of a failed write.
    #[serde(default)]
    pub retry: SinkRetryConfig,
    /// Restarts after a panic or a fatal error, and quarantine.
    #[serde(default)]
    pub restart: SinkRestartConfig,
    /// Where records wait for the sink.
    #[serde(default)]
    pub buffer: SinkBufferConfig,
    /// The sink type's own fields.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// Batching: a write happens when `max_events` or `max_bytes` is reached, or
/// `max_delay_ms` after the first record of the batch arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkBatchConfig {
    /// Most records in one write.
    pub max_events: usize,
    /// Most bytes (payload plus headers) in one write.
    pub max_bytes: usize,
    /// Longest a record waits for its batch to fill.
    pub max_delay_ms: u64,
}

impl Default for SinkBatchConfig {
    fn default() -> Self {
        SinkBatchConfig {
            max_events: 1000,
            max_bytes: 4 * 1024 * 1024,
            max_delay_ms: 100,
        }
    }
}

/// Retries of a retryable write failure: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkRetryConfig {
    /// First backoff.
    pub initial_backoff_ms: u64,
    /// Backoff ceiling.
    pub max_backoff_ms: u64,
    /// Attempts per batch before it goes to the dead-letter topic; 0 retries forever
    /// (the buffer absorbs the backlog; its `when_full` applies).
    pub max_attempts: u32,
}

impl Default for SinkRetryConfig {
    fn default() -> Self {
        SinkRetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
            max_attempts: 0,
        }
    }
}

/// Restarts after a panic or a fatal error. More than `max_restarts` within
/// `window_ms` quarantines the sink: its traffic goes to `$dlq.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkRestartConfig {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The window.
    pub window_ms: u64,
    /// First restart delay; doubled on each restart within the window.
    pub initial_backoff_ms: u64,
    /// Restart delay ceiling.
    pub max_backoff_ms: u64,
}

impl Default for SinkRestartConfig {
    fn default() -> Self {
        SinkRestartConfig {
            max_restarts: 5,
            window_ms: 60_000,
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

/// Where a sink's records wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// In memory (the sink's subscription buffer): lost if the bus stops.
    #[default]
    Memory,
    /// Segment files on disk: survives restarts of the sink and of the bus, and lets
    /// publishers ask for durable acks.
    Disk,
}

/// What a full sink buffer does.
///
/// The default is `drop_newest`: a sink that is down for longer than its buffer lasts
/// must not stall the topics it reads, and with them every other sink and subscriber.
/// Every drop is counted in the sink's snapshot and logged at ERROR, and a durable
/// publish that could not be buffered is refused. Choose `block` for a sink that must
/// never miss a record, at the price of holding its topics (and their publishers) back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Hold the topics back (and with them their publishers) until there is room.
    Block,
    /// Refuse the new records, count them, and log the loss.
    #[default]
    DropNewest,
}

/// When a disk buffer's writes reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every append and acknowledgement (safe against power loss, slowest).
    Always,
    /// At most `fsync_interval_ms` after a write. Appends always reach the kernel before
    /// they are acknowledged, so they survive a crash of the bus process.
    #[default]
    Interval,
    /// When the OS decides.
    Never,
}

/// A sink's buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkBufferConfig {
    /// `memory` or `disk`.
    #[serde(rename = "type")]
    pub kind: BufferKind,
    /// Records the sink's subscription buffer holds (`memory` only; with the run on its
    /// way to the worker, a memory sink holds at most four times this).
    pub max_events: usize,
    /// Most bytes buffered (memory: payload plus headers; disk: segment files).
    pub max_bytes: u64,
    /// What happens when the buffer is full. `block` never loses anything and slows
    /// the topics the sink reads when it cannot keep up; `drop_newest` never slows them.
    pub when_full: WhenFull,
    /// Directory of a disk buffer; default `<storage.data_dir>/sinks/<name>`.
    pub path: Option<PathBuf>,
    /// Size at which a disk buffer starts a new segment file.
    pub segment_bytes: u64,
    /// When a disk buffer's writes reach the disk.
    pub fsync: FsyncPolicy,
    /// The interval of `fsync = "interval"`.
    pub fsync_interval_ms: u64,
}

impl Default for SinkBufferConfig {
    fn default() -> Self {
        SinkBufferConfig {
            kind: BufferKind::Memory,
            max_events: 100_000,
            max_bytes: 256 * 1024 * 1024,
            when_full: WhenFull::DropNewest,
            path: None,
            segment_bytes: 16 * 1024 * 1024,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 1000,
        }
    }
}

/// Where the bus keeps files (disk buffers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Base directory; created when first needed.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("streambus-data"),
        }
    }
}

impl SinkConfig {
    /// A sink of type `kind` called `name` reading `topics`, with default settings.
    pub fn new(name: &str, kind: &str, topics: &[&str]) -> Self {
        SinkConfig {
            name: name.to_owned(),
            kind: kind.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            batch: SinkBatchConfig::default(),
            retry: SinkRetryConfig::default(),
            restart: SinkRestartConfig::default(),
            buffer: SinkBufferConfig::default(),
            options: serde_json::Map::new(),
        }
    }

    /// Sets a type-specific field.
    pub fn option(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.options.insert(key.to_owned(), value.into());
        self
    }

    /// The parsed topic filters (all of them once the config is validated).
    pub fn filters(&self) -> Vec<TopicFilter> {
        self.topics.iter().filter_map(|t| TopicFilter::new(t).ok()).collect()
    }

    /// The sink's dead-letter topic, `$dlq.<name>`.
    pub fn dead_letter_topic(&self) -> Result<Topic, crate::TopicError> {
        Topic::new(&format!("$dlq.{}", self.name))
    }

    /// The disk buffer's directory.
    pub fn buffer_dir(&self, storage: &StorageConfig) -> PathBuf {
        match &self.buffer.path {
            Some(p) => p.clone(),
            None => storage.data_dir.join("sinks").join(&self.name),
        }
    }

    fn error(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: format!("sinks.{}.{field}", self.name),
            reason: reason.into(),
        }
    }

    fn validate(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(self.error(field, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        if self.name.contains('.') || self.dead_letter_topic().is_err() {
            return Err(ConfigError {
                field: "sinks.name".into(),
                reason: format!("{:?} is not one topic token (letters, digits, - or _)", self.name),
            });
        }
        if self.kind.is_empty() {
            return Err(self.error("type", "is empty"));
        }
        if self.topics.is_empty() {
            return Err(self.error("topics", "names no topic filter"));
        }
        let mut filters: Vec<TopicFilter> = Vec::new();
        for t in &self.topics {
            let f = TopicFilter::new(t).map_err(|e| self.error("topics", format!("{t:?}: {e}")))?;
            if let Some(o) = filters.iter().find(|o| o.overlaps(&f)) {
                return Err(self.error(
                    "topics",
                    format!("{o} and {f} overlap: a message matching both would be written twice"),
                ));
            }
            filters.push(f);
        }
        positive("batch.max_events", self.batch.max_events as u64)?;
        positive("batch.max_bytes", self.batch.max_bytes as u64)?;
        positive("retry.initial_backoff_ms", self.retry.initial_backoff_ms)?;
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return Err(self.error("retry.max_backoff_ms", "is smaller than retry.initial_backoff_ms"));
        }
        positive("restart.initial_backoff_ms", self.restart.initial_backoff_ms)?;
        positive("restart.window_ms", self.restart.window_ms)?;
        if self.restart.max_backoff_ms < self.restart.initial_backoff_ms {
            return Err(self.error("restart.max_backoff_ms", "is smaller than restart.initial_backoff_ms"));
        }
        let b = &self.buffer;
        positive("buffer.max_events", b.max_events as u64)?;
        if b.max_bytes < max_message_bytes as u64 {
            return Err(self.error(
                "buffer.max_bytes",
                format!(
                    "{} is smaller than limits.max_message_bytes ({max_message_bytes})",
                    b.max_bytes
                ),
            ));
        }
        if b.kind == BufferKind::Disk {
            positive("buffer.segment_bytes", b.segment_bytes)?;
            if b.segment_bytes.saturating_mul(4) > b.max_bytes {
                return Err(self.error(
                    "buffer.segment_bytes",
                    format!(
                        "{} is more than a quarter of buffer.max_bytes ({})",
                        b.segment_bytes, b.max_bytes
                    ),
                ));
            }
            if b.fsync == FsyncPolicy::Interval {
                positive("buffer.fsync_interval_ms", b.fsync_interval_ms)?;
            }
        }
        Ok(())
    }
}

/// Checks every sink entry, and that names are unique.
pub(crate) fn validate_sinks(sinks: &[SinkConfig], max_message_bytes: usize) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for s in sinks {
        s.validate(max_message_bytes)?;
        if !names.insert(s.name.as_str()) {
            return Err(s.error("name", "is used by another sink"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusConfig;

    /// A full entry parses: runtime sections typed, every other field kept for the type.
    #[test]
    fn entry_parses_with_type_fields() {
        let cfg: BusConfig = toml::from_str(
            r#"
            [[sinks]]
            name = "pg"
            type = "postgres"
            topics = ["sensors.>"]
            url = "postgres://localhost/test"
            batch = { max_events = 5000 }
            buffer = { type = "disk", when_full = "block" }
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let s = &cfg.sinks[0];
        assert_eq!(s.batch.max_events, 5000);
        assert_eq!(s.batch.max_delay_ms, 100);
        assert_eq!(s.buffer.kind, BufferKind::Disk);
        assert_eq!(s.buffer.when_full, WhenFull::Block);
        assert_eq!(s.options["url"], "postgres://localhost/test");
        assert_eq!(s.dead_letter_topic().unwrap().as_str(), "$dlq.pg");
        assert_eq!(s.buffer_dir(&cfg.storage), PathBuf::from("streambus-data/sinks/pg"));
    }

    /// Each bad entry is refused with the field named.
    #[test]
    fn errors_name_the_field() {
        let check = |s: SinkConfig, field: &str| {
            let cfg = BusConfig {
                sinks: vec![s],
                ..BusConfig::default()
            };
            assert_eq!(cfg.validate().unwrap_err().field, field);
        };
        check(SinkConfig::new("a.b", "stdout", &["x"]), "sinks.name");
        check(SinkConfig::new("s", "stdout", &[]), "sinks.s.topics");
        check(SinkConfig::new("s", "stdout", &["a..b"]), "sinks.s.topics");
        check(SinkConfig::new("s", "stdout", &["a.*", "a.b"]), "sinks.s.topics");
        let mut s = SinkConfig::new("s", "stdout", &["a"]);
        s.batch.max_events = 0;
        check(s, "sinks.s.batch.max_events");
        let mut s = SinkConfig::new("s", "stdout", &["a"]);
        s.buffer.kind = BufferKind::Disk;
        s.buffer.segment_bytes = s.buffer.max_bytes;
        check(s, "sinks.s.buffer.segment_bytes");
        let cfg = BusConfig {
            sinks: vec![
                SinkConfig::new("s", "stdout", &["a"]),
                SinkConfig::new("s", "file", &["b"]),
            ],
            ..BusConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field, "sinks.s.name");
        assert!(
            toml::from_str::<BusConfig>("[[sinks]]\nname=\"s\"\ntype=\"x\"\ntopics=[\"a\"]\nbatch={max_event=1}\n")
                .is_err()
        );
    }

    /// The commented sink examples of the sample file parse and validate once
    /// uncommented.
    #[test]
    fn sample_sinks_are_valid() {
        let sample = include_str!("../../../../streambus.example.toml");
        let start = sample.find("# [[sinks]]").unwrap();
        let text: String = sample[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or_else(|| (l == "#").then_some("")))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg: BusConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.sinks.len(), 9);
        assert_eq!(cfg.sinks[0].options["table"], "streambus_events");
        assert_eq!(cfg.sinks[1].kind, "file");
    }
}
