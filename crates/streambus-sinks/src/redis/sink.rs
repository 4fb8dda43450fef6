//! [`RedisSink`]: the writer (see the module doc of [`crate::redis`]).

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, RedisResult, Value};
use async_trait::async_trait;
use streambus_types::ConfigError;

use super::config::RedisConfig;
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

/// Writes records to Redis Streams.
pub struct RedisSink {
    /// The options.
    config: RedisConfig,
    /// The connection (reconnects by itself); `None` before `open`.
    connection: Option<ConnectionManager>,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: RedisConfig = spec.options()?;
    config.validate().map_err(|(field, reason)| spec.error(field, reason))?;
    Ok(Box::new(RedisSink::new(config)))
}

impl RedisSink {
    /// A sink for `config` (not connected until `open`).
    pub fn new(config: RedisConfig) -> RedisSink {
        RedisSink {
            config,
            connection: None,
        }
    }

    /// The `XADD` of one record, or why its key cannot be made.
    fn xadd(&self, record: &Record) -> Result<::redis::Cmd, String> {
        let key = self.config.key.render(&record.topic).map_err(|e| e.to_string())?;
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(key);
        if self.config.maxlen > 0 {
            cmd.arg("MAXLEN").arg("~").arg(self.config.maxlen);
        }
        cmd.arg("*")
            .arg("topic")
            .arg(record.topic.as_str())
            .arg("seq")
            .arg(record.sequence)
            .arg("id")
            .arg(record.message_id.as_str())
            .arg("time_ns")
            .arg(record.timestamp_ns);
        if !record.headers.is_empty() {
            let headers: serde_json::Map<String, serde_json::Value> = record
                .headers
                .as_slice()
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            cmd.arg("headers").arg(serde_json::Value::Object(headers).to_string());
        }
        cmd.arg("payload").arg(record.payload.as_ref());
        Ok(cmd)
    }
}

/// What a failure of the whole pipeline asks the runtime to do.
fn classify(e: &RedisError) -> SinkError {
    match e.code() {
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => SinkError::fatal(format!("redis: {e}")),
        _ => SinkError::retryable(format!("redis: {e}")),
    }
}

/// What Redis refusing the command of record `i` asks the runtime to do: a refusal of
/// that command itself is a poison record; the server's state (memory, loading, a
/// replica) is retryable.
fn classify_command(i: usize, e: &RedisError) -> SinkError {
    match e.code() {
        Some("WRONGTYPE" | "ERR") => SinkError::poison(i, format!("redis refused the entry: {e}")),
        Some("NOPERM") => SinkError::fatal(format!("redis: {e}")),
        _ if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
            SinkError::retryable(format!("redis: {e}"))
        }
        Some(_) => SinkError::retryable(format!("redis: {e}")),
        None => SinkError::retryable(format!("redis: {e}")),
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        let client =
            ::redis::Client::open(self.config.url.as_str()).map_err(|e| SinkError::fatal(format!("redis: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(self.config.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(self.config.response_timeout_ms)))
            // The sink runtime retries whole batches with its own backoff.
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| classify(&e))?;
        self.connection = Some(connection);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let mut pipe = ::redis::pipe();
        for (i, record) in batch.iter().enumerate() {
            pipe.add_command(self.xadd(record).map_err(|e| SinkError::poison(i, e))?);
        }
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| SinkError::retryable("redis: not connected"))?;
        let replies: Vec<RedisResult<Value>> = pipe
            .ignore_errors()
            .query_async(connection)
            .await
            .map_err(|e| classify(&e))?;
        match replies.iter().position(Result::is_err) {
            Some(i) => Err(classify_command(i, replies[i].as_ref().unwrap_err())),
            None if replies.len() != batch.len() => Err(SinkError::retryable(format!(
                "redis: {} replies to {} commands",
                replies.len(),
                batch.len()
            ))),
            None => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.connection = None;
        Ok(())
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| SinkError::retryable("redis: not connected"))?;
        ::redis::cmd("PING")
            .query_async::<String>(connection)
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}
