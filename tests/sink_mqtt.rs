//! The `mqtt` sink end to end against a real Mosquitto: the sink contract
//! (`common/contract.rs`), counted by a subscriber on the test's topics.
//!
//! Each test starts a private Mosquitto (Debian's binary, as the shared one on 1883)
//! on a free port with unlimited queues, so that the counting subscriber never has a
//! message dropped by the broker while the sink writes 100k at QoS 1. The contract runs
//! for MQTT 3.1.1 and MQTT 5; under MQTT 5 the broker's ACL refuses one topic, which
//! makes the poison record.

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
use streambus_core::{BusConfig, Message, Topic};

/// What the counting subscriber received: messages, and distinct payloads (every
/// reading is unique).
type Seen = Arc<parking_lot::Mutex<(usize, HashSet<bytes::Bytes>)>>;

/// A private Mosquitto and a subscriber on `sbtest/<test>/#`; the sink speaks
/// `protocol` to it.
struct Broker {
    addr: SocketAddr,
    name: &'static str,
    protocol: &'static str,
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

/// The ACL of the private brokers: everything but `…/telemetry/denied/…`.
const ACL: &str = "topic readwrite #\ntopic deny sbtest/+/telemetry/denied/#\n";

/// Starts Mosquitto on a free port for a sink speaking `protocol`, or says why not.
async fn broker(name: &'static str, protocol: &'static str) -> Option<Broker> {
    // The shared broker tells whether MQTT is expected on this machine at all.
    servers::addr("STREAMBUS_TEST_MQTT_URL").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).unwrap();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_queued_bytes 0\nacl_file {}\n",
            acl.display()
        ),
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
        protocol,
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
            ("protocol", json!(self.protocol)),
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
        // An MQTT 3.1.1 broker refuses no single publish (it drops the connection); an
        // MQTT 5 broker answers with a reason code (here: not authorised, by the ACL).
        (self.protocol == "5").then(|| Message::new(Topic::new("telemetry.denied.x").unwrap(), "refused"))
    }
}

/// 100k messages published over gRPC reach the broker's subscriber at QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_writes_every_message() {
    let Some(d) = broker("every", "3.1.1").await else {
        return;
    };
    contract::writes_every_message(&d).await;
}

/// The same under MQTT 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_sink_writes_every_message() {
    let Some(d) = broker("every5", "5").await else { return };
    contract::writes_every_message(&d).await;
}

/// The broker cut off mid-run: nothing is lost (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_outage_loses_nothing() {
    let Some(d) = broker("outage", "3.1.1").await else {
        return;
    };
    contract::outage_loses_nothing(&d).await;
}

/// The same under MQTT 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_outage_loses_nothing() {
    let Some(d) = broker("outage5", "5").await else { return };
    contract::outage_loses_nothing(&d).await;
}

/// Under MQTT 5, a publish the broker refuses (its ACL) is dead-lettered with the
/// broker's reason and the rest of its batch lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_refused_publish_goes_to_the_dead_letter_topic() {
    let Some(d) = broker("poison5", "5").await else { return };
    contract::poison_goes_to_the_dead_letter_topic(&d).await;
}

/// Durable acks on a disk buffer survive SIGKILL of the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_durable_acks_survive_a_kill() {
    let Some(d) = broker("kill", "3.1.1").await else { return };
    contract::durable_acks_survive_a_kill(&d).await;
}

/// What the bus's publisher set reaches the broker: a message published with `retain`
/// becomes the broker's retained message (a subscriber arriving later gets it, flagged
/// retained, and not the other topic's message), and under MQTT 5 the headers arrive as
/// user properties with the message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_carries_retain_and_headers() {
    use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

    let Some(d) = broker("carried", "5").await else { return };
    // A subscriber on the test's topics before anything is written: the live messages.
    let mut options = Options5::new("sbtest-carried-live", "127.0.0.1", d.addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (live, mut live_loop) = Client5::new(options, 64);
    live.subscribe("sbtest/carried/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    let live_task = tokio::spawn(async move {
        let _live = live;
        loop {
            match live_loop.poll().await {
                Ok(Event5::Incoming(Packet5::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event5::Incoming(Packet5::Publish(p))) => {
                    let _ = tx.send(Some(p));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    assert_eq!(
        harness::within("the live subscription", received.recv()).await,
        Some(None)
    );

    let config = BusConfig {
        sinks: vec![contract::sink(&d, d.addr)],
        ..BusConfig::default()
    };
    let server = harness::TestServer::start_with(config).await;
    let client = server.client("telemetry").await;
    let state = Message::new(Topic::new("telemetry.dev3.state").unwrap(), "on")
        .with_headers(vec![("unit".to_owned(), "none".to_owned())])
        .retained();
    let reading = Message::new(Topic::new("telemetry.dev4.env").unwrap(), "21.5");
    client.publish_batch(vec![state, reading], true).await.unwrap();
    contract::expect_entries(&d, 2).await;

    let mut live_seen = Vec::new();
    while live_seen.len() < 2 {
        let p = harness::within("a live message", received.recv())
            .await
            .unwrap()
            .unwrap();
        live_seen.push(p);
    }
    live_seen.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(live_seen[0].topic.as_ref(), b"sbtest/carried/telemetry/dev3/state");
    let props = live_seen[0].properties.clone().unwrap_or_default().user_properties;
    assert!(props.contains(&("unit".to_owned(), "none".to_owned())), "{props:?}");
    assert!(
        props
            .iter()
            .any(|(k, v)| k == "msg-id" && v.starts_with("telemetry.dev3.state:")),
        "{props:?}"
    );
    live_task.abort();

    // A subscriber arriving now gets the retained message only.
    let mut options = Options5::new("sbtest-carried-late", "127.0.0.1", d.addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (late, mut late_loop) = Client5::new(options, 64);
    late.subscribe("sbtest/carried/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = harness::within("the retained message", async {
        loop {
            if let Ok(Event5::Incoming(Packet5::Publish(p))) = late_loop.poll().await {
                return p;
            }
        }
    })
    .await;
    assert!(retained.retain, "{retained:?}");
    assert_eq!(
        (retained.topic.as_ref(), retained.payload.as_ref()),
        (&b"sbtest/carried/telemetry/dev3/state"[..], &b"on"[..])
    );
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event5::Incoming(Packet5::Publish(p))) = late_loop.poll().await {
                return p;
            }
        }
    })
    .await;
    assert!(more.is_err(), "only one retained message: {more:?}");
    server.shutdown().await;
}
