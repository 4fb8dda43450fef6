//! [`MqttSink`]: the writer (see the module doc of [`crate::mqtt`]).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::v5::{self as v5p, PubAckReason, PubCompReason, PubRecReason, PublishProperties};
use rumqttc::{self as v4, v5};
use streambus_types::ConfigError;

use super::config::{MqttConfig, Protocol, Retain};
use crate::record::{MESSAGE_ID_HEADER, Record};
use crate::sink::{Sink, SinkError, SinkErrorKind, SinkSpec};
use crate::template::Template;

/// Requests queued between the client handle and the event loop: the write loop fills
/// it without waiting, then polls the event loop, which drains it.
const REQUEST_CAPACITY: usize = 1024;

/// QoS 1 and 2 publishes awaiting their acknowledgement at once (rumqttc's default is
/// 100, which caps a loopback publisher at about 57k msgs/s on the machine measured).
/// Under MQTT 5 the broker's receive maximum lowers it when smaller.
const INFLIGHT: u16 = 1000;

/// Largest packet either way.
const MAX_PACKET: usize = 1 << 28;

/// Writes records to an MQTT broker.
pub struct MqttSink {
    /// The options.
    config: MqttConfig,
    /// The MQTT topic template (`/` for `{topic}`).
    template: Template,
    /// The client id.
    client_id: String,
    /// The client and its event loop, driven by `write` itself; `None` until connected
    /// and after a failure (the next write connects anew).
    link: Option<Link>,
}

/// A client handle and its event loop, in the configured protocol version (boxed: the
/// event loops are large and of different sizes; one link lives per sink).
enum Link {
    V4(v4::AsyncClient, Box<v4::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

/// What one event of the event loop means for the batch being written.
enum Step {
    /// A publish left with this packet id (packet ids are given in queueing order).
    Written(u16),
    /// The broker acknowledged this packet id (`PUBACK` at QoS 1, `PUBCOMP` at QoS 2).
    Acked(u16),
    /// The broker refused this packet id, with its MQTT 5 reason.
    Refused(u16, String),
    /// Nothing for the batch.
    Other,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: MqttConfig = spec.options()?;
    config.validate().map_err(|(field, reason)| spec.error(field, reason))?;
    let client_id = match config.client_id.as_str() {
        "" => format!("streambus-{}", spec.name),
        id => id.to_owned(),
    };
    let template = config.template().map_err(|e| spec.error("topic", e))?;
    Ok(Box::new(MqttSink {
        config,
        template,
        client_id,
        link: None,
    }))
}

/// A refused connect: bad credentials or no authorisation are fatal (retrying cannot
/// help), anything else retryable.
fn refused(code: impl std::fmt::Debug, fatal: bool) -> SinkError {
    let message = format!("mqtt: the broker refused the connection: {code:?}");
    if fatal {
        SinkError::fatal(message)
    } else {
        SinkError::retryable(message)
    }
}

impl Link {
    /// Connects: polls a fresh event loop until the broker's `CONNACK`.
    async fn connect(config: &MqttConfig, client_id: &str) -> Result<Link, SinkError> {
        let keep_alive = Duration::from_secs(config.keep_alive_s);
        let credentials = (!config.username.is_empty()).then_some((config.username.as_str(), config.password.as_str()));
        let mut link = match config.protocol {
            Protocol::V311 => {
                let mut options = v4::MqttOptions::new(client_id, config.host.as_str(), config.port);
                options
                    .set_keep_alive(keep_alive)
                    .set_clean_session(true)
                    .set_request_channel_capacity(REQUEST_CAPACITY)
                    .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                    .set_inflight(INFLIGHT);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                let (client, eventloop) = v4::AsyncClient::new(options, REQUEST_CAPACITY);
                Link::V4(client, Box::new(eventloop))
            }
            Protocol::V5 => {
                let mut options = v5::MqttOptions::new(client_id, config.host.as_str(), config.port);
                options
                    .set_keep_alive(keep_alive)
                    .set_clean_start(true)
                    .set_request_channel_capacity(REQUEST_CAPACITY)
                    .set_max_packet_size(Some(MAX_PACKET as u32))
                    .set_outgoing_inflight_upper_limit(INFLIGHT);
                if let Some((user, password)) = credentials {
                    options.set_credentials(user, password);
                }
                let (client, eventloop) = v5::AsyncClient::new(options, REQUEST_CAPACITY);
                Link::V5(client, Box::new(eventloop))
            }
        };
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        tokio::time::timeout(timeout, link.connected())
            .await
            .map_err(|_| SinkError::retryable("mqtt: connect timed out"))??;
        Ok(link)
    }

    /// Polls until the broker's `CONNACK`, and reads it.
    async fn connected(&mut self) -> Result<(), SinkError> {
        loop {
            match self {
                Link::V4(_, eventloop) => match eventloop.poll().await {
                    Ok(v4::Event::Incoming(v4::Packet::ConnAck(ack))) => {
                        use v4::ConnectReturnCode as C;
                        return match ack.code {
                            C::Success => Ok(()),
                            code => Err(refused(code, matches!(code, C::BadUserNamePassword | C::NotAuthorized))),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return Err(SinkError::retryable(format!("mqtt connect: {e}"))),
                },
                Link::V5(_, eventloop) => match eventloop.poll().await {
                    Ok(v5::Event::Incoming(v5p::Packet::ConnAck(ack))) => {
                        use v5p::ConnectReturnCode as C;
                        return match ack.code {
                            C::Success => Ok(()),
                            code => Err(refused(
                                code,
                                matches!(
                                    code,
                                    C::BadUserNamePassword
                                        | C::NotAuthorized
                                        | C::Banned
                                        | C::BadAuthenticationMethod
                                        | C::UnsupportedProtocolVersion
                                ),
                            )),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return Err(SinkError::retryable(format!("mqtt connect: {e}"))),
                },
            }
        }
    }

    /// Queues a publish without waiting; false when the request queue is full.
    fn try_publish(&self, topic: String, qos: u8, retain: bool, record: &Record) -> bool {
        match self {
            Link::V4(client, _) => {
                let qos = match qos {
                    0 => v4::QoS::AtMostOnce,
                    1 => v4::QoS::AtLeastOnce,
                    _ => v4::QoS::ExactlyOnce,
                };
                client.try_publish(topic, qos, retain, record.payload.to_vec()).is_ok()
            }
            Link::V5(client, _) => {
                let qos = match qos {
                    0 => v5::mqttbytes::QoS::AtMostOnce,
                    1 => v5::mqttbytes::QoS::AtLeastOnce,
                    _ => v5::mqttbytes::QoS::ExactlyOnce,
                };
                // Headers as user properties, and the message id for consumers that
                // deduplicate.
                let mut user_properties = record.headers.as_slice().to_vec();
                if record.headers.get(MESSAGE_ID_HEADER).is_none() {
                    user_properties.push((MESSAGE_ID_HEADER.to_owned(), record.message_id.clone()));
                }
                let properties = PublishProperties {
                    user_properties,
                    ..PublishProperties::default()
                };
                client
                    .try_publish_with_properties(topic, qos, retain, record.payload.clone(), properties)
                    .is_ok()
            }
        }
    }

    /// The next event of the event loop, as it concerns the batch.
    async fn poll(&mut self, qos: u8) -> Result<Step, SinkError> {
        let lost = |e: &dyn std::fmt::Display| SinkError::retryable(format!("mqtt: {e}"));
        Ok(match self {
            Link::V4(_, eventloop) => match eventloop.poll().await.map_err(|e| lost(&e))? {
                v4::Event::Outgoing(Outgoing::Publish(pkid)) => Step::Written(pkid),
                v4::Event::Incoming(v4::Packet::PubAck(ack)) if qos == 1 => Step::Acked(ack.pkid),
                v4::Event::Incoming(v4::Packet::PubComp(comp)) if qos == 2 => Step::Acked(comp.pkid),
                _ => Step::Other,
            },
            Link::V5(_, eventloop) => match eventloop.poll().await.map_err(|e| lost(&e))? {
                v5::Event::Outgoing(Outgoing::Publish(pkid)) => Step::Written(pkid),
                v5::Event::Incoming(v5p::Packet::PubAck(ack)) if qos == 1 => match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Step::Acked(ack.pkid),
                    reason => Step::Refused(ack.pkid, because(reason, ack.properties.and_then(|p| p.reason_string))),
                },
                v5::Event::Incoming(v5p::Packet::PubRec(rec)) if qos == 2 => match rec.reason {
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Step::Other,
                    reason => Step::Refused(rec.pkid, because(reason, rec.properties.and_then(|p| p.reason_string))),
                },
                v5::Event::Incoming(v5p::Packet::PubComp(comp)) if qos == 2 => match comp.reason {
                    PubCompReason::Success => Step::Acked(comp.pkid),
                    reason => return Err(SinkError::retryable(format!("mqtt: PUBCOMP {reason:?}"))),
                },
                v5::Event::Incoming(v5p::Packet::Disconnect(d)) => {
                    return Err(SinkError::retryable(format!(
                        "mqtt: the broker disconnected: {:?}",
                        d.reason_code
                    )));
                }
                _ => Step::Other,
            },
        })
    }

    /// Says goodbye to the broker, briefly.
    async fn disconnect(self) {
        let wait = Duration::from_millis(500);
        match self {
            Link::V4(client, mut eventloop) => {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(wait, eventloop.poll()).await;
            }
            Link::V5(client, mut eventloop) => {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(wait, eventloop.poll()).await;
            }
        }
    }
}

/// The refusal message of an MQTT 5 reason code and the broker's reason string.
fn because(reason: impl std::fmt::Debug, text: Option<String>) -> String {
    match text {
        Some(text) => format!("mqtt: the broker refused the message: {reason:?} ({text})"),
        None => format!("mqtt: the broker refused the message: {reason:?}"),
    }
}

impl MqttSink {
    /// Publishes `topics[i]` ← `batch[i]` in order and waits for every acknowledgement.
    /// The event loop gives packet ids in the order publishes were queued, which is how
    /// an acknowledgement is matched to its record. A message the broker refuses (MQTT
    /// 5 only) is a poison record once the rest of the batch is acknowledged.
    async fn publish_all(&mut self, topics: Vec<String>, batch: &[Record]) -> Result<(), SinkError> {
        let qos = self.config.qos;
        let retain_mode = self.config.retain;
        let ack_timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let Some(link) = self.link.as_mut() else {
            return Err(SinkError::retryable("mqtt: not connected"));
        };
        // Sent, awaiting the packet id the event loop gives them (in sending order).
        let mut sent = VecDeque::new();
        // Written with a packet id, awaiting the broker's acknowledgement.
        let mut awaiting: HashMap<u16, usize> = HashMap::new();
        let (mut next, mut done) = (0, 0);
        // The first record refused, by index.
        let mut refused: Option<(usize, String)> = None;
        // One deadline for the batch, pushed back whenever the broker acknowledges.
        let deadline = tokio::time::sleep(ack_timeout);
        tokio::pin!(deadline);
        while done < batch.len() {
            // Hand the event loop as many publishes as its request queue takes now.
            while next < batch.len() {
                let record = &batch[next];
                let retain = match retain_mode {
                    Retain::AsPublished => record.retain,
                    Retain::Always => true,
                    Retain::Never => false,
                };
                if !link.try_publish(topics[next].clone(), qos, retain, record) {
                    break;
                }
                sent.push_back(next);
                next += 1;
            }
            let step = tokio::select! {
                biased;
                step = link.poll(qos) => step?,
                () = &mut deadline => {
                    return Err(SinkError::retryable(format!(
                        "mqtt: no acknowledgement within {} ms ({done} of {} done)",
                        ack_timeout.as_millis(),
                        batch.len()
                    )));
                }
            };
            let before = done;
            match step {
                Step::Written(pkid) => {
                    let i = sent.pop_front().unwrap_or(0);
                    if qos == 0 {
                        done += 1;
                    } else {
                        awaiting.insert(pkid, i);
                    }
                }
                Step::Acked(pkid) => done += usize::from(awaiting.remove(&pkid).is_some()),
                Step::Refused(pkid, reason) => {
                    if let Some(i) = awaiting.remove(&pkid) {
                        done += 1;
                        if refused.as_ref().is_none_or(|(first, _)| i < *first) {
                            refused = Some((i, reason));
                        }
                    }
                }
                Step::Other => {}
            }
            if done > before {
                deadline.as_mut().reset(tokio::time::Instant::now() + ack_timeout);
            }
        }
        match refused {
            Some((i, reason)) => Err(SinkError::poison(i, reason)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.link = Some(Link::connect(&self.config, &self.client_id).await?);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let topics = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                self.template
                    .render(&r.topic)
                    .map_err(|e| SinkError::poison(i, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.link.is_none() {
            self.link = Some(Link::connect(&self.config, &self.client_id).await?);
        }
        let written = self.publish_all(topics, batch).await;
        // A refused message leaves the connection sound; anything else may not have.
        if written
            .as_ref()
            .is_err_and(|e| !matches!(e.kind, SinkErrorKind::Poison { .. }))
        {
            // A clean session next time: nothing of this one is resent behind our back.
            self.link = None;
        }
        written
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some(link) = self.link.take() {
            link.disconnect().await;
        }
        Ok(())
    }
}
