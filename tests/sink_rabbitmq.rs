//! The `rabbitmq` sink end to end against the real RabbitMQ: the sink contract
//! (`common/contract.rs`), counted by draining the test's queue with `basic.get`.

#[path = "common/contract.rs"]
mod contract;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/served.rs"]
mod served;
#[path = "common/servers.rs"]
mod servers;

use std::collections::HashSet;
use std::net::SocketAddr;

use contract::Destination;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use streambus_core::{Message, Topic};

/// The test's own topic exchange and durable queue, bound to `telemetry.*.env`; what the
/// queue held is drained into `seen` at each count.
struct Queue {
    server: SocketAddr,
    name: &'static str,
    /// Messages drained so far, and their distinct message ids.
    seen: parking_lot::Mutex<(usize, HashSet<String>)>,
}

impl Queue {
    fn exchange(&self) -> String {
        format!("sbtest.{}", self.name)
    }

    async fn channel(&self) -> (Connection, Channel) {
        let url = format!("amqp://guest:guest@{}/%2f", self.server);
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }
}

impl Destination for Queue {
    const KIND: &'static str = "rabbitmq";
    const IDEMPOTENT: bool = false;

    fn server(&self) -> SocketAddr {
        self.server
    }

    fn options(&self, addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("url", json!(format!("amqp://guest:guest@{addr}/%2f"))),
            ("exchange", json!(self.exchange())),
            ("connect_timeout_ms", json!(1000)),
        ]
    }

    async fn reset(&self) {
        let (_connection, ch) = self.channel().await;
        let name = self.exchange();
        let _ = ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
        let (_connection, ch) = self.channel().await;
        let _ = ch
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(name.as_str().into(), queue, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            name.as_str().into(),
            name.as_str().into(),
            "telemetry.*.env".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        *self.seen.lock() = (0, HashSet::new());
    }

    async fn count(&self) -> (usize, usize) {
        let (_connection, ch) = self.channel().await;
        let no_ack = BasicGetOptions { no_ack: true };
        while let Some(got) = ch.basic_get(self.exchange().as_str().into(), no_ack).await.unwrap() {
            let id = got.delivery.properties.message_id().clone().map(|id| id.to_string());
            let mut seen = self.seen.lock();
            seen.0 += 1;
            seen.1.insert(id.expect("every message carries its message id"));
        }
        let seen = self.seen.lock();
        (seen.0, seen.1.len())
    }

    fn poison(&self) -> Option<Message> {
        // No queue is bound for a two-token routing key: returned as unroutable.
        Some(Message::new(Topic::new("telemetry.unroutable").unwrap(), "no route"))
    }
}

async fn destination(name: &'static str) -> Option<Queue> {
    let server = servers::addr("STREAMBUS_TEST_RABBITMQ_URL").await?;
    Some(Queue {
        server,
        name,
        seen: Default::default(),
    })
}

/// 100k messages published over gRPC become 100k messages in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sink_writes_every_message() {
    let Some(d) = destination("every").await else { return };
    contract::writes_every_message(&d).await;
}

/// RabbitMQ cut off mid-run: nothing is lost (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_outage_loses_nothing() {
    let Some(d) = destination("outage").await else { return };
    contract::outage_loses_nothing(&d).await;
}

/// A message no queue takes (mandatory, returned) goes to `$dlq.sink`; the rest lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unroutable_goes_to_the_dead_letter_topic() {
    let Some(d) = destination("poison").await else { return };
    contract::poison_goes_to_the_dead_letter_topic(&d).await;
}

/// Durable acks on a disk buffer survive SIGKILL of the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_durable_acks_survive_a_kill() {
    let Some(d) = destination("kill").await else { return };
    contract::durable_acks_survive_a_kill(&d).await;
}
