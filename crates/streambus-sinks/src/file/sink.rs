//! The `file` sink itself.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use streambus_types::ConfigError;
use tokio::fs::{self, File, OpenOptions};
use tokio::io::AsyncWriteExt;

use super::config::FileConfig;
use crate::encode::json_line;
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

/// Writes records as JSON lines into size-rotated files.
#[derive(Debug)]
pub struct FileSink {
    config: FileConfig,
    prefix: String,
    /// The file being appended to, its number and its size.
    current: Option<(File, u64, u64)>,
    scratch: Vec<u8>,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: FileConfig = spec.options()?;
    if config.max_file_bytes == 0 {
        return Err(spec.error("max_file_bytes", "must be greater than zero"));
    }
    if let Some(p) = &config.prefix
        && (p.is_empty() || p.contains(['/', '\0']))
    {
        return Err(spec.error("prefix", "must be a non-empty file name part"));
    }
    Ok(Box::new(FileSink::new(&spec.name, config)))
}

fn io(path: &Path, e: std::io::Error) -> SinkError {
    SinkError::retryable(format!("{}: {e}", path.display()))
}

impl FileSink {
    /// A file sink called `name`.
    pub fn new(name: &str, config: FileConfig) -> Self {
        let prefix = config.prefix.clone().unwrap_or_else(|| name.to_owned());
        FileSink {
            config,
            prefix,
            current: None,
            scratch: Vec::new(),
        }
    }

    fn path_of(&self, n: u64) -> PathBuf {
        self.config.path.join(format!("{}-{n:08}.jsonl", self.prefix))
    }

    /// The numbers of this sink's files, ascending.
    async fn numbers(&self) -> Result<Vec<u64>, SinkError> {
        let dir = &self.config.path;
        let mut entries = fs::read_dir(dir).await.map_err(|e| io(dir, e))?;
        let mut numbers = Vec::new();
        let head = format!("{}-", self.prefix);
        while let Some(e) = entries.next_entry().await.map_err(|e| io(dir, e))? {
            let name = e.file_name();
            let n = name
                .to_str()
                .and_then(|n| n.strip_prefix(&head))
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok());
            numbers.extend(n);
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    async fn open_file(&mut self, n: u64) -> Result<(), SinkError> {
        let path = self.path_of(n);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| io(&path, e))?;
        let size = file.metadata().await.map_err(|e| io(&path, e))?.len();
        self.current = Some((file, n, size));
        if self.config.max_files > 0 {
            let numbers = self.numbers().await?;
            let excess = numbers.len().saturating_sub(self.config.max_files);
            for old in &numbers[..excess] {
                let old = self.path_of(*old);
                fs::remove_file(&old).await.map_err(|e| io(&old, e))?;
            }
        }
        Ok(())
    }

    async fn write_bytes(&mut self, mut data: &[u8]) -> Result<(), SinkError> {
        while !data.is_empty() {
            let (file, n, size) = self.current.as_mut().expect("opened");
            // Fill the current file up to its limit at line boundaries (always at least
            // one line into an empty file).
            let room = self.config.max_file_bytes.saturating_sub(*size) as usize;
            let mut cut = 0;
            for (i, b) in data.iter().enumerate() {
                if *b == b'\n' {
                    if i + 1 > room && !(cut == 0 && *size == 0) {
                        break;
                    }
                    cut = i + 1;
                }
            }
            if cut == 0 {
                let next = *n + 1;
                file.flush().await.map_err(|e| io(&self.config.path, e))?;
                self.open_file(next).await?;
                continue;
            }
            file.write_all(&data[..cut])
                .await
                .map_err(|e| io(&self.config.path, e))?;
            *size += cut as u64;
            data = &data[cut..];
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        let dir = self.config.path.clone();
        fs::create_dir_all(&dir).await.map_err(|e| io(&dir, e))?;
        let newest = self.numbers().await?.last().copied().unwrap_or(1);
        self.open_file(newest).await
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        for r in batch {
            json_line(r, &mut data);
        }
        let result = self.write_bytes(&data).await;
        self.scratch = data;
        result
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let path = self.config.path.clone();
        if let Some((file, ..)) = self.current.as_mut() {
            file.flush().await.map_err(|e| io(&path, e))?;
            if self.config.fsync {
                file.sync_data().await.map_err(|e| io(&path, e))?;
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.flush().await?;
        self.current = None;
        Ok(())
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        let dir = &self.config.path;
        fs::metadata(dir).await.map(|_| ()).map_err(|e| io(dir, e))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use streambus_types::Topic;

    use super::*;

    fn records(from: u64, n: u64) -> Vec<Record> {
        (from..from + n)
            .map(|i| Record {
                topic: Topic::new("s.t").unwrap(),
                sequence: i,
                timestamp_ns: i,
                message_id: i.to_string(),
                headers: Default::default(),
                payload: Bytes::from(format!("{{\"i\":{i}}}")),
                retain: false,
            })
            .collect()
    }

    async fn lines(dir: &Path) -> Vec<(String, Vec<u64>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f).unwrap();
                let seqs = text
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["sequence"]
                            .as_u64()
                            .unwrap()
                    })
                    .collect();
                (f.file_name().unwrap().to_str().unwrap().to_owned(), seqs)
            })
            .collect()
    }

    /// Files rotate at the size limit on line boundaries, keep every record in order,
    /// a reopened sink appends to the newest file, and `max_files` deletes the oldest.
    #[tokio::test]
    async fn rotation_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SinkSpec {
            name: "arch".into(),
            options: serde_json::json!({"path": dir.path(), "max_file_bytes": 300})
                .as_object()
                .unwrap()
                .clone(),
        };
        let mut sink = factory(&spec).unwrap();
        sink.open().await.unwrap();
        sink.write(&records(1, 10)).await.unwrap();
        sink.flush().await.unwrap();
        sink.close().await.unwrap();
        let mut sink = factory(&spec).unwrap();
        sink.open().await.unwrap();
        sink.write(&records(11, 2)).await.unwrap();
        sink.close().await.unwrap();
        let files = lines(dir.path()).await;
        assert!(files.len() >= 3, "{files:?}");
        assert_eq!(files[0].0, "arch-00000001.jsonl");
        for (name, _) in &files {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= 300);
        }
        let all: Vec<u64> = files.iter().flat_map(|f| f.1.clone()).collect();
        assert_eq!(all, (1..=12).collect::<Vec<_>>());

        let mut opts = spec.options.clone();
        opts.insert("max_files".into(), 2.into());
        let mut sink = factory(&SinkSpec { options: opts, ..spec }).unwrap();
        sink.open().await.unwrap();
        sink.write(&records(13, 10)).await.unwrap();
        sink.close().await.unwrap();
        assert_eq!(lines(dir.path()).await.len(), 2);
    }

    /// Bad options are refused with the field named.
    #[test]
    fn options_are_checked() {
        let spec = |v: serde_json::Value| SinkSpec {
            name: "f".into(),
            options: v.as_object().unwrap().clone(),
        };
        assert_eq!(factory(&spec(serde_json::json!({}))).err().unwrap().field, "sinks.f");
        let e = factory(&spec(serde_json::json!({"path": "/tmp", "max_file_bytes": 0})))
            .err()
            .unwrap();
        assert_eq!(e.field, "sinks.f.max_file_bytes");
    }
}
