//! Queue and time-series sink throughput at 200-byte payloads, each beside the same
//! server driven directly by its own client at its best (the ceiling), alternated.
//!
//! Run (the servers on loopback, as `.ci/run` has them; each one missing is skipped):
//!
//! ```text
//! cargo bench -p streambus-core --bench queue_sinks             # 200k messages each
//! cargo bench -p streambus-core --bench queue_sinks -- 100000   # another count
//! ```
//!
//! For each sink: `sink` writes the records with the sink's own `write` in batches of
//! 5000 back to back (what the bus's sink runtime does); `raw` sends the same payloads
//! with the server's client the way a hand-written fastest publisher would (pipelined,
//! the same acknowledgement level and entry shape), no bus at all; native tools give the
//! servers' own ceilings beside these (`redis-benchmark`, `mosquitto_pub`: see
//! docs/BENCHMARKS.md). Servers: `STREAMBUS_BENCH_NATS_URL`,
//! `…_REDIS_URL`, `…_RABBITMQ_URL`, `…_MQTT_URL`, `…_INFLUXDB_URL`, defaults on loopback.

use std::time::{Duration, Instant};

use bytes::Bytes;
use streambus_core::sink::{Record, SinkRegistry, SinkSpec};
use streambus_core::{Headers, Topic};

const BATCH: usize = 5000;

/// A reading of about 200 bytes (JSON, so InfluxDB gets fields).
fn payload(i: usize) -> Bytes {
    let s = format!(
        r#"{{"device":"dev{:05}","seq":{i},"temperature":{:.2},"humidity":{:.1},"pressure":1013.{},"battery":0.93,"site":"plant-7","ok":true,"pad":""}}"#,
        i % 1000,
        20.0 + (i % 100) as f64 / 10.0,
        40.0 + (i % 50) as f64,
        i % 10
    );
    let pad = 200usize.saturating_sub(s.len());
    Bytes::from(s.replacen(r#""pad":"""#, &format!(r#""pad":"{}""#, "x".repeat(pad)), 1))
}

fn records(n: usize) -> Vec<Record> {
    let topic = Topic::new("bench.dev1.env").unwrap();
    (0..n)
        .map(|i| Record {
            topic: topic.clone(),
            sequence: i as u64 + 1,
            timestamp_ns: 1_700_000_000_000_000_000 + i as u64,
            message_id: format!("bench-{i}"),
            headers: Headers::default(),
            payload: payload(i),
            retain: false,
        })
        .collect()
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn authority(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or(rest);
    rest.rsplit('@').next().unwrap_or(rest).to_owned()
}

async fn reachable(url: &str) -> bool {
    tokio::net::TcpStream::connect(authority(url)).await.is_ok()
}

/// Writes `records` with sink `kind` built from `options`, batch after batch.
async fn sink(kind: &str, options: serde_json::Value, records: &[Record]) -> Duration {
    let factory = SinkRegistry::with_builtins().get(kind).unwrap();
    let spec = SinkSpec {
        name: "bench".into(),
        options: options.as_object().unwrap().clone(),
    };
    let mut sink = factory(&spec).unwrap();
    sink.open().await.unwrap();
    let start = Instant::now();
    for batch in records.chunks(BATCH) {
        sink.write(batch).await.unwrap();
        sink.flush().await.unwrap();
    }
    let elapsed = start.elapsed();
    sink.close().await.unwrap();
    elapsed
}

fn report(what: &str, n: usize, d: Duration) -> f64 {
    let rate = n as f64 / d.as_secs_f64();
    println!("{what:<28} {n:>8} in {:>6.2} s = {rate:>9.0} msgs/s", d.as_secs_f64());
    rate
}

/// NATS JetStream: publishes with acknowledgements, pipelined per batch.
async fn nats_raw(url: &str, stream: &str, records: &[Record]) -> Duration {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let start = Instant::now();
    for batch in records.chunks(BATCH) {
        let mut acks = Vec::with_capacity(batch.len());
        for r in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, r.message_id.as_str());
            let ack = js
                .publish_with_headers(format!("{stream}.raw"), headers, r.payload.clone())
                .await
                .unwrap();
            acks.push(ack);
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    start.elapsed()
}

async fn nats_stream(url: &str, name: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Redis: one pipeline of XADDs per batch.
async fn redis_raw(url: &str, records: &[Record]) -> Duration {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let start = Instant::now();
    for batch in records.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for r in batch {
            // The same entry shape as the sink's.
            pipe.cmd("XADD")
                .arg("bench:raw")
                .arg("MAXLEN")
                .arg("~")
                .arg(100_000)
                .arg("*")
                .arg("topic")
                .arg(r.topic.as_str())
                .arg("seq")
                .arg(r.sequence)
                .arg("id")
                .arg(r.message_id.as_str())
                .arg("time_ns")
                .arg(r.timestamp_ns)
                .arg("payload")
                .arg(r.payload.as_ref())
                .ignore();
        }
        let () = pipe.query_async(&mut c).await.unwrap();
    }
    start.elapsed()
}

/// RabbitMQ: persistent publishes with confirms, awaited per batch.
async fn rabbitmq_raw(url: &str, records: &[Record]) -> Duration {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let start = Instant::now();
    for batch in records.chunks(BATCH) {
        let mut confirms = Vec::with_capacity(batch.len());
        for r in batch {
            let props = lapin::BasicProperties::default().with_delivery_mode(2);
            let confirm = ch
                .basic_publish(
                    "amq.topic".into(),
                    "bench.raw".into(),
                    BasicPublishOptions::default(),
                    &r.payload,
                    props,
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for c in confirms {
            c.await.unwrap();
        }
    }
    start.elapsed()
}

/// The point the sink makes of `r` (its documented rule, for this payload's shape):
/// measurement `bench`, tag `topic`, one field per JSON member in key order.
fn point(r: &Record) -> String {
    let value: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    let fields: Vec<String> = value
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::Number(n) => format!("{k}={:?}", n.as_f64().unwrap()),
            serde_json::Value::Bool(b) => format!("{k}={b}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("bench,topic={} {} {}", r.topic, fields.join(","), r.timestamp_ns)
}

/// InfluxDB: one POST of the batch's lines (the same points the sink writes, made
/// before the clock starts: this is the server's ingest alone).
async fn influxdb_raw(url: &str, db: &str, records: &[Record]) -> Duration {
    let http = reqwest::Client::new();
    let lines: Vec<String> = records.iter().map(point).collect();
    let start = Instant::now();
    for batch in lines.chunks(BATCH) {
        let response = http
            .post(format!("{url}/write?db={db}&precision=ns"))
            .body(batch.join("\n"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{:?}", response.text().await);
    }
    start.elapsed()
}

/// Creates database `db` (a new name each run: InfluxDB 1.x may refuse writes for a
/// moment after a database is dropped and made again).
async fn influx_database(url: &str, db: &str) {
    let http = reqwest::Client::new();
    let q = format!("CREATE DATABASE {db}");
    http.post(format!("{url}/query"))
        .form(&[("q", q)])
        .send()
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let records = records(n);
    let nats = env("STREAMBUS_BENCH_NATS_URL", "nats://127.0.0.1:4222");
    let redis_url = env("STREAMBUS_BENCH_REDIS_URL", "redis://127.0.0.1:6379");
    let amqp = env("STREAMBUS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let mqtt = env("STREAMBUS_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883");
    let influx = env("STREAMBUS_BENCH_INFLUXDB_URL", "http://127.0.0.1:18086");
    for round in 1..=2 {
        println!("-- round {round}");
        if reachable(&nats).await {
            nats_stream(&nats, "BENCH").await;
            let raw = report("nats jetstream raw", n, nats_raw(&nats, "BENCH", &records).await);
            nats_stream(&nats, "BENCH").await;
            let options = serde_json::json!({ "url": nats, "stream": "BENCH", "subject": "BENCH.{topic}" });
            let s = report("nats jetstream sink", n, sink("nats", options, &records).await);
            println!("{:<28} {:.2}", "  sink / raw", s / raw);
        }
        if reachable(&redis_url).await {
            let raw = report("redis streams raw", n, redis_raw(&redis_url, &records).await);
            let options = serde_json::json!({ "url": redis_url, "key": "bench:{topic}", "maxlen": 100000 });
            let s = report("redis streams sink", n, sink("redis", options, &records).await);
            println!("{:<28} {:.2}", "  sink / raw", s / raw);
        }
        if reachable(&amqp).await {
            let raw = report("rabbitmq raw", n, rabbitmq_raw(&amqp, &records).await);
            let options = serde_json::json!({ "url": amqp, "mandatory": false });
            let s = report("rabbitmq sink", n, sink("rabbitmq", options, &records).await);
            println!("{:<28} {:.2}", "  sink / raw", s / raw);
        }
        if reachable(&mqtt).await {
            let host = authority(&mqtt);
            let (h, p) = host.split_once(':').unwrap_or((host.as_str(), "1883"));
            let options =
                serde_json::json!({ "host": h, "port": p.parse::<u16>().unwrap(), "qos": 1, "topic": "bench/{topic}" });
            report("mqtt qos 1 sink", n, sink("mqtt", options.clone(), &records).await);
            let mut options = options;
            options["protocol"] = "5".into();
            report("mqtt 5 qos 1 sink", n, sink("mqtt", options, &records).await);
        }
        if reachable(&influx).await {
            let db = format!("bench_raw{round}_{}", std::process::id());
            influx_database(&influx, &db).await;
            let raw = report("influxdb raw", n, influxdb_raw(&influx, &db, &records).await);
            let options = serde_json::json!({ "url": influx, "database": format!("bench_sink{round}_{}", std::process::id()), "create_database": true });
            let s = report("influxdb sink", n, sink("influxdb", options, &records).await);
            println!("{:<28} {:.2}", "  sink / raw", s / raw);
        }
    }
}
