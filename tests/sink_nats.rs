//! The `nats` sink end to end against the real nats-server (JetStream): the sink
//! contract (`common/contract.rs`), counted with the stream's own state.

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

use std::net::SocketAddr;

use async_nats::jetstream;
use contract::Destination;
use serde_json::json;
use streambus_core::{Message, Topic};

/// A JetStream stream of this test's own, `SB_<test>` on `sb<test>.>`, made by the
/// test with a small `max_msg_size` so that a larger message is refused.
struct JetStream {
    server: SocketAddr,
    /// The stream's name and subject prefix.
    name: &'static str,
}

/// Largest message the test's stream takes.
const MAX_MSG_SIZE: i32 = 16 * 1024;

impl JetStream {
    async fn context(&self) -> jetstream::Context {
        let client = async_nats::connect(self.server.to_string()).await.unwrap();
        jetstream::new(client)
    }
}

impl Destination for JetStream {
    const KIND: &'static str = "nats";
    const IDEMPOTENT: bool = true;

    fn server(&self) -> SocketAddr {
        self.server
    }

    fn options(&self, addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("url", json!(format!("nats://{addr}"))),
            ("subject", json!(format!("sb{}.{{topic}}", self.name))),
            ("stream", json!(format!("SB_{}", self.name))),
            ("ack_timeout_ms", json!(2000)),
            ("connect_timeout_ms", json!(1000)),
        ]
    }

    async fn reset(&self) {
        let js = self.context().await;
        let name = format!("SB_{}", self.name);
        let _ = js.delete_stream(&name).await;
        js.create_stream(jetstream::stream::Config {
            name,
            subjects: vec![format!("sb{}.>", self.name)],
            max_message_size: MAX_MSG_SIZE,
            ..Default::default()
        })
        .await
        .unwrap();
    }

    async fn count(&self) -> (usize, usize) {
        let js = self.context().await;
        let mut stream = js.get_stream(format!("SB_{}", self.name)).await.unwrap();
        let n = stream.info().await.unwrap().state.messages as usize;
        // Every entry carries its message id; the stream deduplicates on it, so the
        // count is also the number of distinct ids.
        (n, n)
    }

    fn poison(&self) -> Option<Message> {
        let payload = "p".repeat(MAX_MSG_SIZE as usize * 2);
        Some(Message::new(Topic::new("telemetry.dev1.env").unwrap(), payload))
    }
}

async fn destination(name: &'static str) -> Option<JetStream> {
    let server = servers::addr("STREAMBUS_TEST_NATS_URL").await?;
    Some(JetStream { server, name })
}

/// 100k messages published over gRPC become 100k messages in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_writes_every_message() {
    let Some(d) = destination("every").await else { return };
    contract::writes_every_message(&d).await;
}

/// nats-server cut off mid-run: nothing is lost, nothing is doubled (message ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_loses_nothing() {
    let Some(d) = destination("outage").await else { return };
    contract::outage_loses_nothing(&d).await;
}

/// A message over the stream's size limit goes to `$dlq.sink`; the rest lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_poison_goes_to_the_dead_letter_topic() {
    let Some(d) = destination("poison").await else { return };
    contract::poison_goes_to_the_dead_letter_topic(&d).await;
}

/// Durable acks on a disk buffer survive SIGKILL of the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_durable_acks_survive_a_kill() {
    let Some(d) = destination("kill").await else { return };
    contract::durable_acks_survive_a_kill(&d).await;
}
