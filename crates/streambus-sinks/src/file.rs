//! The `file` sink: JSON Lines files, rotated by size.
//!
//! ```toml
//! [[sinks]]
//! name = "archive"
//! type = "file"
//! topics = ["sensors.>"]
//! path = "/var/lib/streambus/archive"   # a directory, created if missing
//! max_file_bytes = 67108864             # start a new file past this size
//! max_files = 0                         # keep every file (else delete the oldest)
//! ```
//!
//! Files are named `<prefix>-<n>.jsonl` with `n` counting up from 1 (zero-padded, so
//! they sort); a restarted sink appends to the newest one. Each line is one record (see
//! [`crate::encode`]).

mod config;
mod sink;

pub use config::FileConfig;
pub use sink::FileSink;
pub(crate) use sink::factory;
