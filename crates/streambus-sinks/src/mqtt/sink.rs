//! [`MqttSink`]: the writer (see the module doc of [`crate::mqtt`]).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use streambus_types::ConfigError;

use super::config::MqttConfig;
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};
use crate::template::Template;

/// Requests queued between the client handle and the event loop: the write loop fills
/// it without waiting, then polls the event loop, which drains it.
const REQUEST_CAPACITY: usize = 1024;

/// QoS 1 and 2 publishes awaiting their acknowledgement at once (rumqttc's default is
/// 100, which caps a loopback publisher at about 57k msgs/s on the machine measured).
const INFLIGHT: u16 = 1000;

/// Writes records to an MQTT broker.
pub struct MqttSink {
    /// The options.
    config: MqttConfig,
    /// The MQTT topic template (`/` for `{topic}`).
    template: Template,
    /// The client id.
    client_id: String,
    /// The client handle and its event loop, driven by `write` itself; `None` until
    /// connected and after a failure (the next write connects anew).
    link: Option<(AsyncClient, EventLoop)>,
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

impl MqttSink {
    /// The quality of service.
    fn qos(&self) -> QoS {
        match self.config.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// Connects: polls a fresh event loop until the broker's `CONNACK`. Takes the parts
    /// it needs rather than `&self`: the event loop is not `Sync`.
    async fn connect(config: &MqttConfig, client_id: &str) -> Result<(AsyncClient, EventLoop), SinkError> {
        let mut options = MqttOptions::new(client_id, config.host.as_str(), config.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_s))
            .set_clean_session(true)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_max_packet_size(1 << 28, 1 << 28)
            .set_inflight(INFLIGHT);
        if !config.username.is_empty() {
            options.set_credentials(config.username.as_str(), config.password.as_str());
        }
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let connected = tokio::time::timeout(timeout, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return match ack.code {
                            ConnectReturnCode::Success => Ok(()),
                            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized) => Err(
                                SinkError::fatal(format!("mqtt: the broker refused the connection: {code:?}")),
                            ),
                            code => Err(SinkError::retryable(format!(
                                "mqtt: the broker refused the connection: {code:?}"
                            ))),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return Err(SinkError::retryable(format!("mqtt connect: {e}"))),
                }
            }
        })
        .await
        .map_err(|_| SinkError::retryable("mqtt: connect timed out"))?;
        connected.map(|()| (client, eventloop))
    }

    /// Publishes `topics[i]` ← `batch[i]` in order and waits for every acknowledgement.
    /// The event loop gives packet ids in the order publishes were queued, which is how
    /// an acknowledgement is matched to its record.
    async fn publish_all(&mut self, topics: Vec<String>, batch: &[Record]) -> Result<(), SinkError> {
        let qos = self.qos();
        let retain = self.config.retain;
        let ack_timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let Some((client, eventloop)) = self.link.as_mut() else {
            return Err(SinkError::retryable("mqtt: not connected"));
        };
        // Sent, awaiting the packet id the event loop gives them (in sending order).
        let mut sent = VecDeque::new();
        // Written with a packet id, awaiting the broker's acknowledgement.
        let mut awaiting: HashMap<u16, usize> = HashMap::new();
        let (mut next, mut done) = (0, 0);
        // One deadline for the batch, pushed back whenever the broker acknowledges.
        let deadline = tokio::time::sleep(ack_timeout);
        tokio::pin!(deadline);
        while done < batch.len() {
            // Hand the event loop as many publishes as its request queue takes now.
            while next < batch.len() {
                let payload = batch[next].payload.to_vec();
                if client.try_publish(topics[next].clone(), qos, retain, payload).is_err() {
                    break;
                }
                sent.push_back(next);
                next += 1;
            }
            let event = tokio::select! {
                biased;
                event = eventloop.poll() => event,
                () = &mut deadline => {
                    return Err(SinkError::retryable(format!(
                        "mqtt: no acknowledgement within {} ms ({done} of {} done)",
                        ack_timeout.as_millis(),
                        batch.len()
                    )));
                }
            };
            let before = done;
            match event {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let i = sent.pop_front().unwrap_or(0);
                    if qos == QoS::AtMostOnce {
                        done += 1;
                    } else {
                        awaiting.insert(pkid, i);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) if qos == QoS::AtLeastOnce => {
                    done += usize::from(awaiting.remove(&ack.pkid).is_some());
                }
                Ok(Event::Incoming(Packet::PubComp(comp))) if qos == QoS::ExactlyOnce => {
                    done += usize::from(awaiting.remove(&comp.pkid).is_some());
                }
                Ok(_) => {}
                Err(e) => return Err(SinkError::retryable(format!("mqtt: {e}"))),
            }
            if done > before {
                deadline.as_mut().reset(tokio::time::Instant::now() + ack_timeout);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.link = Some(Self::connect(&self.config, &self.client_id).await?);
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
            self.link = Some(Self::connect(&self.config, &self.client_id).await?);
        }
        let written = self.publish_all(topics, batch).await;
        if written.is_err() {
            // A clean session next time: nothing of this one is resent behind our back.
            self.link = None;
        }
        written
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        if let Some((client, mut eventloop)) = self.link.take() {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        }
        Ok(())
    }
}
