//! The `influxdb` sink end to end against a real InfluxDB (Debian's 1.x `influxd`, a
//! private instance on loopback started by `.ci/influxdb`): the sink contract
//! (`common/contract.rs`), counted with InfluxQL over the HTTP API.
//!
//! The 2.x write API (org, bucket, token) is checked by the sink's unit tests only: no
//! InfluxDB 2 can be installed on these machines.

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

use contract::Destination;
use serde_json::{Value, json};
use streambus_core::{Message, Topic};

/// The test's own database, `sbtest_<test>`; points go to measurement `telemetry`.
struct Database {
    server: SocketAddr,
    name: &'static str,
}

impl Database {
    fn db(&self) -> String {
        format!("sbtest_{}", self.name)
    }

    async fn query(&self, q: &str) -> Value {
        let response = reqwest::Client::new()
            .post(format!("http://{}/query", self.server))
            .form(&[("q", q), ("db", &self.db())])
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }
}

impl Destination for Database {
    const KIND: &'static str = "influxdb";
    // A point written again replaces itself (same series, same time).
    const IDEMPOTENT: bool = true;

    fn server(&self) -> SocketAddr {
        self.server
    }

    fn options(&self, addr: SocketAddr) -> Vec<(&'static str, serde_json::Value)> {
        vec![
            ("url", json!(format!("http://{addr}"))),
            ("database", json!(self.db())),
            ("tags", json!({ "device": "{2}" })),
            ("timeout_ms", json!(2000)),
        ]
    }

    async fn reset(&self) {
        self.query(&format!("DROP DATABASE \"{}\"", self.db())).await;
        self.query(&format!("CREATE DATABASE \"{}\"", self.db())).await;
        // A first point makes `temperature` a float in this measurement: a string later
        // conflicts with it, the refusal the poison test needs.
        let seed = "telemetry,device=seed temperature=1.0 1";
        let response = reqwest::Client::new()
            .post(format!("http://{}/write?db={}&precision=ns", self.server, self.db()))
            .body(seed)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    async fn count(&self) -> (usize, usize) {
        // Readings carry `seq`; the seed point does not.
        let v = self.query("SELECT count(\"seq\") FROM \"telemetry\"").await;
        let n = v["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0) as usize;
        (n, n)
    }

    fn poison(&self) -> Option<Message> {
        let payload = r#"{"seq":-1,"temperature":"hot"}"#;
        Some(Message::new(Topic::new("telemetry.dev1.env").unwrap(), payload))
    }
}

async fn destination(name: &'static str) -> Option<Database> {
    let server = servers::addr("STREAMBUS_TEST_INFLUXDB_URL").await?;
    Some(Database { server, name })
}

/// 100k messages published over gRPC become 100k points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_sink_writes_every_message() {
    let Some(d) = destination("every").await else { return };
    contract::writes_every_message(&d).await;
}

/// InfluxDB cut off mid-run: nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_outage_loses_nothing() {
    let Some(d) = destination("outage").await else { return };
    contract::outage_loses_nothing(&d).await;
}

/// A point whose field type conflicts with the series goes to `$dlq.sink`; the other
/// points of its batch land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_refused_point_goes_to_the_dead_letter_topic() {
    let Some(d) = destination("poison").await else { return };
    contract::poison_goes_to_the_dead_letter_topic(&d).await;
}

/// Durable acks on a disk buffer survive SIGKILL of the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_durable_acks_survive_a_kill() {
    let Some(d) = destination("kill").await else { return };
    contract::durable_acks_survive_a_kill(&d).await;
}
