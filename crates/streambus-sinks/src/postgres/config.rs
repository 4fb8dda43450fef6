//! Options of the `postgres` sink.

use serde::Deserialize;

/// Options of the `postgres` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string: a URL (`postgres://user@host:port/db`) or `key=value` pairs.
    pub url: String,
    /// Target table, optionally schema-qualified; created if missing.
    #[serde(default = "default_table")]
    pub table: String,
    /// Skip records whose message id is already in the table (unique index on it).
    #[serde(default)]
    pub idempotent: bool,
    /// Most connections held.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long connecting (or waiting for a pooled connection) may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_table() -> String {
    "streambus_events".into()
}

fn default_pool_size() -> usize {
    4
}

fn default_connect_timeout_ms() -> u64 {
    5000
}

/// Whether `name` is a plain SQL identifier (quoted as is when used).
pub(crate) fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}
