//! The `stdout` sink: each record as a JSON line on standard output, for debugging.
//!
//! ```toml
//! [[sinks]]
//! name = "debug"
//! type = "stdout"
//! topics = ["sensors.>"]
//! ```

use async_trait::async_trait;
use serde::Deserialize;
use streambus_types::ConfigError;
use tokio::io::{AsyncWriteExt, Stdout};

use crate::encode::json_line;
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

/// The `stdout` sink has no options of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutConfig {}

/// Writes JSON lines to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    out: Stdout,
    scratch: Vec<u8>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink {
            out: tokio::io::stdout(),
            scratch: Vec::new(),
        }
    }
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    spec.options::<StdoutConfig>()?;
    Ok(Box::new(StdoutSink::default()))
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.scratch.clear();
        for r in batch {
            json_line(r, &mut self.scratch);
        }
        self.out
            .write_all(&self.scratch)
            .await
            .map_err(|e| SinkError::retryable(format!("stdout: {e}")))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .await
            .map_err(|e| SinkError::retryable(format!("stdout: {e}")))
    }
}
