//! [`NatsSink`]: the writer (see the module doc of [`crate::nats`]).

use std::error::Error as _;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishErrorKind as AckErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use streambus_types::ConfigError;

use super::config::NatsConfig;
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

/// Header carrying the record's topic (the subject may be made from part of it).
pub const TOPIC_HEADER: &str = "Streambus-Topic";
/// Header carrying the record's per-topic sequence.
pub const SEQUENCE_HEADER: &str = "Streambus-Sequence";

/// Writes records to NATS (JetStream or core).
pub struct NatsSink {
    /// The options.
    config: NatsConfig,
    /// The connection (it reconnects by itself); `None` before `open`.
    client: Option<async_nats::Client>,
    /// The JetStream context, when `stream` is set.
    jetstream: Option<jetstream::Context>,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: NatsConfig = spec.options()?;
    config.validate().map_err(|(field, reason)| spec.error(field, reason))?;
    Ok(Box::new(NatsSink::new(config)))
}

impl NatsSink {
    /// A sink for `config` (not connected until `open`).
    pub fn new(config: NatsConfig) -> NatsSink {
        NatsSink {
            config,
            client: None,
            jetstream: None,
        }
    }

    /// The subject and headers of `record`, or why it cannot have them.
    fn address(&self, record: &Record) -> Result<(String, HeaderMap), String> {
        let subject = self.config.subject.render(&record.topic).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        for (name, value) in record.headers.as_slice() {
            headers.append(name.as_str(), value.as_str());
        }
        headers.insert(TOPIC_HEADER, record.topic.as_str());
        headers.insert(SEQUENCE_HEADER, record.sequence.to_string());
        if self.jetstream.is_some() {
            headers.insert(NATS_MESSAGE_ID, record.message_id.as_str());
        }
        Ok((subject, headers))
    }

    /// JetStream: publish every record, then await the acknowledgements in order.
    async fn write_jetstream(&self, js: &jetstream::Context, batch: &[Record]) -> Result<(), SinkError> {
        let mut acks = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            let (subject, headers) = self.address(record).map_err(|e| SinkError::poison(i, e))?;
            let ack = js
                .publish_with_headers(subject, headers, record.payload.clone())
                .await
                .map_err(|e| SinkError::retryable(format!("nats publish: {e}")))?;
            acks.push(ack);
        }
        for (i, ack) in acks.into_iter().enumerate() {
            if let Err(e) = ack.await {
                return Err(classify_ack(i, &e));
            }
        }
        Ok(())
    }

    /// Core NATS: publish every record, then flush.
    async fn write_core(&self, client: &async_nats::Client, batch: &[Record]) -> Result<(), SinkError> {
        for (i, record) in batch.iter().enumerate() {
            let (subject, headers) = self.address(record).map_err(|e| SinkError::poison(i, e))?;
            if let Err(e) = client
                .publish_with_headers(subject, headers, record.payload.clone())
                .await
            {
                return Err(match e.kind() {
                    async_nats::client::PublishErrorKind::MaxPayloadExceeded
                    | async_nats::client::PublishErrorKind::BadSubject => SinkError::poison(i, format!("nats: {e}")),
                    _ => SinkError::retryable(format!("nats publish: {e}")),
                });
            }
        }
        client
            .flush()
            .await
            .map_err(|e| SinkError::retryable(format!("nats flush: {e}")))
    }
}

/// What a failed acknowledgement of record `i` asks the runtime to do.
fn classify_ack(i: usize, e: &async_nats::jetstream::context::PublishError) -> SinkError {
    match e.kind() {
        AckErrorKind::StreamNotFound => SinkError::fatal(format!("nats jetstream: no stream takes the subject: {e}")),
        AckErrorKind::TimedOut | AckErrorKind::BrokenPipe => {
            SinkError::retryable(format!("nats jetstream acknowledgement: {e}"))
        }
        _ => {
            let api = e.source().and_then(|s| s.downcast_ref::<jetstream::Error>());
            match api.map(jetstream::Error::error_code) {
                Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => {
                    SinkError::poison(i, format!("nats jetstream refused the message: {e}"))
                }
                // Out of resources, a store failure, limits reached: the server may take
                // it later (the runtime's retry.max_attempts bounds the wait).
                _ => SinkError::retryable(format!("nats jetstream: {e}")),
            }
        }
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let client = async_nats::ConnectOptions::new()
            .name("streambus-sink")
            .connection_timeout(timeout)
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| SinkError::retryable(format!("nats connect {}: {e}", self.config.url)))?;
        if let Some(stream) = &self.config.stream {
            let mut js = jetstream::new(client.clone());
            js.set_timeout(Duration::from_millis(self.config.ack_timeout_ms));
            if self.config.create_stream {
                js.get_or_create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: self.config.stream_subjects.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| SinkError::retryable(format!("nats jetstream: creating stream {stream}: {e}")))?;
            } else if let Err(e) = js.get_stream(stream).await {
                use async_nats::jetstream::context::GetStreamErrorKind;
                return Err(match e.kind() {
                    GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                        SinkError::fatal(format!("nats jetstream: stream {stream} does not exist"))
                    }
                    _ => SinkError::retryable(format!("nats jetstream: stream {stream}: {e}")),
                });
            }
            self.jetstream = Some(js);
        }
        self.client = Some(client);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        match (&self.jetstream, &self.client) {
            (Some(js), _) => self.write_jetstream(js, batch).await,
            (None, Some(client)) => self.write_core(client, batch).await,
            (None, None) => Err(SinkError::retryable("nats: not connected")),
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(client) = self.client.take() {
            let _ = client.flush().await;
        }
        self.jetstream = None;
        Ok(())
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        match &self.client {
            Some(c) if c.connection_state() == async_nats::connection::State::Connected => Ok(()),
            Some(c) => Err(SinkError::retryable(format!("nats: {}", c.connection_state()))),
            None => Err(SinkError::retryable("nats: not connected")),
        }
    }
}
