//! [`KafkaSink`]: the writer (see the module doc of [`crate::kafka`]).

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use streambus_types::ConfigError;

use super::config::{Compression, KafkaConfig};
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};
use crate::template::Template;

/// Writes records to Kafka.
pub struct KafkaSink {
    /// The options.
    config: KafkaConfig,
    /// The key template, when a key is sent.
    key: Option<Template>,
    /// The producer (it connects and reconnects by itself); `None` before `open`.
    producer: Option<FutureProducer>,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: KafkaConfig = spec.options()?;
    config.validate().map_err(|(field, reason)| spec.error(field, reason))?;
    let key = config.key_template().map_err(|e| spec.error("key", e))?;
    Ok(Box::new(KafkaSink {
        config,
        key,
        producer: None,
    }))
}

/// Whether `name` is a topic name Kafka takes.
fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// What a failed delivery of record `i` asks the runtime to do.
fn classify(i: usize, e: &KafkaError) -> SinkError {
    let code = match e {
        KafkaError::MessageProduction(code) => Some(*code),
        _ => e.rdkafka_error_code(),
    };
    match code {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidMessage,
        ) => SinkError::poison(i, format!("kafka refused the message: {e}")),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed,
        ) => SinkError::fatal(format!("kafka: {e}")),
        _ => SinkError::retryable(format!("kafka: {e}")),
    }
}

impl KafkaSink {
    /// The topic, key and headers of `record`, or why it cannot have them.
    fn address(&self, record: &Record) -> Result<(String, Option<String>, OwnedHeaders), String> {
        let topic = self.config.topic.render(&record.topic).map_err(|e| e.to_string())?;
        if !valid_topic(&topic) {
            return Err(format!(
                "{topic:?} is not a Kafka topic name ([a-zA-Z0-9._-], 1 to 249)"
            ));
        }
        let key = match &self.key {
            Some(t) => Some(t.render(&record.topic).map_err(|e| e.to_string())?),
            None => None,
        };
        let sequence = record.sequence.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.as_slice().len() + 3);
        for (name, value) in record.headers.as_slice() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        headers = headers
            .insert(Header {
                key: "streambus-topic",
                value: Some(record.topic.as_str()),
            })
            .insert(Header {
                key: "streambus-sequence",
                value: Some(&sequence),
            })
            .insert(Header {
                key: "streambus-msg-id",
                value: Some(&record.message_id),
            });
        Ok((topic, key, headers))
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        let compression = match self.config.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        };
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", self.config.linger_ms.to_string())
            .set("message.timeout.ms", self.config.message_timeout_ms.to_string())
            .set("compression.type", compression)
            .create()
            .map_err(|e| SinkError::fatal(format!("kafka producer: {e}")))?;
        self.producer = Some(producer);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let Some(producer) = &self.producer else {
            return Err(SinkError::retryable("kafka: no producer"));
        };
        let mut deliveries = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            let (topic, key, headers) = self.address(record).map_err(|e| SinkError::poison(i, e))?;
            let mut message = FutureRecord::to(&topic)
                .payload(&record.payload[..])
                .headers(headers)
                .timestamp((record.timestamp_ns / 1_000_000) as i64);
            if let Some(key) = &key {
                message = message.key(key.as_str());
            }
            loop {
                match producer.send_result(message) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    // The producer's queue is full: let it drain, then hand it over again.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(classify(i, &e)),
                }
            }
        }
        for (i, delivery) in deliveries.into_iter().enumerate() {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(classify(i, &e)),
                Err(_) => return Err(SinkError::retryable("kafka: the producer dropped a delivery")),
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(producer) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Topic names follow Kafka's rule.
    #[test]
    fn topic_names() {
        assert!(valid_topic("sensors.dev-1_x"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic(&"a".repeat(250)));
    }
}
