//! [`RabbitMqSink`]: the writer (see the module doc of [`crate::rabbitmq`]).

use std::time::Duration;

use async_trait::async_trait;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use streambus_types::ConfigError;

use super::config::{ExchangeType, RabbitMqConfig};
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

/// Writes records to a RabbitMQ exchange.
pub struct RabbitMqSink {
    /// The options.
    config: RabbitMqConfig,
    /// The connection and its confirm-mode channel; `None` until connected, and again
    /// after either failed (the next write connects anew).
    link: Option<(Connection, Channel)>,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: RabbitMqConfig = spec.options()?;
    config.validate().map_err(|(field, reason)| spec.error(field, reason))?;
    Ok(Box::new(RabbitMqSink::new(config)))
}

impl RabbitMqSink {
    /// A sink for `config` (not connected until `open`).
    pub fn new(config: RabbitMqConfig) -> RabbitMqSink {
        RabbitMqSink { config, link: None }
    }

    /// Connects, opens a confirm-mode channel and declares the exchange if asked.
    async fn connect(&self) -> Result<(Connection, Channel), SinkError> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let connecting = Connection::connect(&self.config.url, ConnectionProperties::default());
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| SinkError::retryable("rabbitmq: connect timed out"))?
            .map_err(|e| SinkError::retryable(format!("rabbitmq connect: {e}")))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| SinkError::retryable(format!("rabbitmq channel: {e}")))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| SinkError::retryable(format!("rabbitmq confirm mode: {e}")))?;
        if self.config.declare_exchange {
            let kind = match self.config.exchange_type {
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Fanout => ExchangeKind::Fanout,
                ExchangeType::Topic => ExchangeKind::Topic,
                ExchangeType::Headers => ExchangeKind::Headers,
            };
            let options = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    self.config.exchange.as_str().into(),
                    kind,
                    options,
                    FieldTable::default(),
                )
                .await
                // A type mismatch with an existing exchange will not mend by itself.
                .map_err(|e| SinkError::fatal(format!("rabbitmq: declaring {:?}: {e}", self.config.exchange)))?;
        }
        Ok((connection, channel))
    }

    /// The routing key and properties of `record`, or why it cannot have them.
    fn address(&self, record: &Record) -> Result<(String, BasicProperties), String> {
        let key = self
            .config
            .routing_key
            .render(&record.topic)
            .map_err(|e| e.to_string())?;
        if key.len() > 255 {
            return Err(format!("routing key of {} bytes (AMQP allows 255)", key.len()));
        }
        let mut headers = FieldTable::default();
        for (name, value) in record.headers.as_slice() {
            headers.insert(
                name.as_str().into(),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        headers.insert(
            "streambus-topic".into(),
            AMQPValue::LongString(record.topic.as_str().into()),
        );
        headers.insert(
            "streambus-sequence".into(),
            AMQPValue::LongLongInt(record.sequence as i64),
        );
        let mut properties = BasicProperties::default()
            .with_message_id(ShortString::from(record.message_id.as_str()))
            .with_timestamp(record.timestamp_ns / 1_000_000_000)
            .with_headers(headers);
        if self.config.persistent {
            properties = properties.with_delivery_mode(2);
        }
        Ok((key, properties))
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.link = Some(self.connect().await?);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        if !self.link.as_ref().is_some_and(|(_, ch)| ch.status().connected()) {
            self.link = None;
            self.link = Some(self.connect().await?);
        }
        let Some((_, channel)) = &self.link else {
            return Err(SinkError::retryable("rabbitmq: not connected"));
        };
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        let mut confirms = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            let (key, properties) = self.address(record).map_err(|e| SinkError::poison(i, e))?;
            let exchange = self.config.exchange.as_str().into();
            match channel
                .basic_publish(exchange, key.into(), options, &record.payload, properties)
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => {
                    self.link = None;
                    return Err(SinkError::retryable(format!("rabbitmq publish: {e}")));
                }
            }
        }
        let mut refused = None;
        for (i, confirm) in confirms.into_iter().enumerate() {
            match confirm.await {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                    let reason = format!(
                        "rabbitmq returned the message: {} {}",
                        returned.reply_code, returned.reply_text
                    );
                    refused.get_or_insert((i, reason));
                }
                Ok(Confirmation::Nack(None)) => {
                    refused.get_or_insert((i, "rabbitmq refused the message (nack)".to_owned()));
                }
                Err(e) => {
                    self.link = None;
                    return Err(SinkError::retryable(format!("rabbitmq confirm: {e}")));
                }
            }
        }
        match refused {
            Some((i, reason)) => Err(SinkError::poison(i, reason)),
            None => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some((connection, _)) = self.link.take() {
            let _ = connection.close(200, "sink closing".into()).await;
        }
        Ok(())
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        match &self.link {
            Some((c, _)) if c.status().connected() => Ok(()),
            _ => Err(SinkError::retryable("rabbitmq: not connected")),
        }
    }
}
