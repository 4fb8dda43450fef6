//! The `mqtt` sink end to end against a real Mosquitto: the sink contract
//! (`common/contract.rs`), counted by a subscriber on the test's topics.
//!
//! Each test starts a private Mosquitto (Debian's binary, as the shared one on 1883)
//! on a free port with unlimited queues, so that the counting subscriber never has a
//! message dropped by the broker while the sink writes 100k at QoS 1.

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
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use contract::Destination;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use streambus_core::Message;

/// What the counting subscriber received: messages, and distinct payloads (every
/// reading is unique).
type Seen = Arc<parking_lot::Mutex<(usize, HashSet<bytes::Bytes>)>>;

/// A private Mosquitto and a subscriber on `sbtest/<test>/#`.
struct Broker {
    addr: SocketAddr,
    name: &'static str,
    child: Child,
    _dir: tempfile::TempDir,
    seen: Seen,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.subscriber.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Mosquitto on a free port, or says why not.
async fn broker(name: &'static str) -> Option<Broker> {
    // The shared broker tells whether MQTT is expected on this machine at all.
    servers::addr("STREAMBUS_TEST_MQTT_URL").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_queued_bytes 0\n"),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").output().is_ok());
    let child = Command::new(bin.expect("Mosquitto is installed (Debian's mosquitto)"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    harness::wait_until("the private Mosquitto listens", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let seen: Seen = Default::default();
    let mut options = MqttOptions::new(format!("sbtest-counter-{name}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    client
        .subscribe(format!("sbtest/{name}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let counted = seen.clone();
    let subscriber = tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut seen = counted.lock();
                    seen.0 += 1;
                    seen.1.insert(p.payload);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    harness::within("the counting subscription", subscribed).await.unwrap();
    Some(Broker {
        addr,
        name,
        child,
        _dir: dir,
        seen,
        subscriber,
    })
}

impl Destination for Broker {
    const KIND: &'static str = "mqtt";
    const IDEMPOTENT: bool = false;

    fn server(&self) -> SocketAddr {
        self.addr
    }

    fn options(&self, addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("host", json!(addr.ip().to_string())),
            ("port", json!(addr.port())),
            ("topic", json!(format!("sbtest/{}/{{topic}}", self.name))),
            ("qos", json!(1)),
            ("client_id", json!(format!("sbtest-sink-{}", self.name))),
            ("connect_timeout_ms", json!(1000)),
            ("ack_timeout_ms", json!(2000)),
        ]
    }

    async fn reset(&self) {
        *self.seen.lock() = (0, HashSet::new());
    }

    async fn count(&self) -> (usize, usize) {
        let seen = self.seen.lock();
        (seen.0, seen.1.len())
    }

    fn poison(&self) -> Option<Message> {
        // An MQTT 3.1.1 broker refuses no single publish (it drops the connection).
        None
    }
}

/// 100k messages published over gRPC reach the broker's subscriber at QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_writes_every_message() {
    let Some(d) = broker("every").await else { return };
    contract::writes_every_message(&d).await;
}

/// The broker cut off mid-run: nothing is lost (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_outage_loses_nothing() {
    let Some(d) = broker("outage").await else { return };
    contract::outage_loses_nothing(&d).await;
}

/// Durable acks on a disk buffer survive SIGKILL of the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_durable_acks_survive_a_kill() {
    let Some(d) = broker("kill").await else { return };
    contract::durable_acks_survive_a_kill(&d).await;
}
