//! Options of the `file` sink.

use std::path::PathBuf;

use serde::Deserialize;

/// Options of the `file` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory of the files; created if missing.
    pub path: PathBuf,
    /// File name prefix; default: the sink's name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// A file is closed and the next one started when a write would take it past this.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Most files kept; the oldest are deleted. 0 keeps every file.
    #[serde(default)]
    pub max_files: usize,
    /// `fsync` on every flush (else the OS writes back when it decides).
    #[serde(default)]
    pub fsync: bool,
}

fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}
