//! PostgreSQL sink throughput: rows per second written with binary `COPY`, 200-byte
//! JSON payloads, measured two ways.
//!
//! Run (needs PostgreSQL; URL from `STREAMBUS_BENCH_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`):
//!
//! ```text
//! cargo bench -p streambus-core --bench postgres_sink            # 500k rows
//! cargo bench -p streambus-core --bench postgres_sink -- 100000  # another count
//! ```
//!
//! 1. `sink`: the `postgres` sink alone, batches of 10k records written back to back
//!    (plain, then idempotent).
//! 2. `bus`: the same records published into an in-process bus whose `postgres` sink
//!    (batches of 10k, memory buffer) writes them; the clock stops when the sink has
//!    acknowledged the last one.
//!
//! Each run writes into a fresh table `bench_rows`, counted afterwards.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use streambus_core::sink::{Record, SinkRegistry, SinkSpec};
use streambus_core::{Bus, BusConfig, Message, SinkConfig, Topic};

const BATCH: usize = 10_000;
const TABLE: &str = "bench_rows";

/// A reading of about 200 bytes.
fn payload(i: usize) -> String {
    let s = format!(
        r#"{{"device":"dev{:05}","seq":{i},"temperature":{:.2},"humidity":{:.1},"pressure":1013.{},"battery":0.93,"firmware":"2.4.1","site":"plant-7","line":"packaging-3","ok":true,"pad":""}}"#,
        i % 1000,
        20.0 + (i % 100) as f64 / 10.0,
        40.0 + (i % 50) as f64,
        i % 10
    );
    let pad = 200usize.saturating_sub(s.len());
    s.replacen(r#""pad":"""#, &format!(r#""pad":"{}""#, "x".repeat(pad)), 1)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

async fn reset(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .await
        .unwrap();
    client
}

async fn count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn report(what: &str, rows: usize, elapsed: Duration) {
    println!(
        "{what:<22} {rows:>8} rows in {:>6.2} s = {:>9.0} rows/s",
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64()
    );
}

async fn sink_alone(url: &str, rows: usize, idempotent: bool) {
    let db = reset(url).await;
    let spec = SinkSpec {
        name: "bench".into(),
        options: serde_json::json!({"url": url, "table": TABLE, "idempotent": idempotent})
            .as_object()
            .unwrap()
            .clone(),
    };
    let factory = SinkRegistry::with_builtins().get("postgres").unwrap();
    let mut sink = factory(&spec).unwrap();
    sink.open().await.unwrap();
    let topic = Topic::new("bench.rows").unwrap();
    let records: Vec<Record> = (0..rows)
        .map(|i| Record {
            topic: topic.clone(),
            sequence: i as u64 + 1,
            timestamp_ns: now_ns(),
            message_id: format!("bench.rows:{i}"),
            headers: Default::default(),
            payload: Bytes::from(payload(i)),
            retain: false,
        })
        .collect();
    let start = Instant::now();
    for chunk in records.chunks(BATCH) {
        sink.write(chunk).await.unwrap();
        sink.flush().await.unwrap();
    }
    let elapsed = start.elapsed();
    sink.close().await.unwrap();
    assert_eq!(count(&db).await, rows as i64);
    report(if idempotent { "sink (idempotent)" } else { "sink" }, rows, elapsed);
}

async fn through_bus(url: &str, rows: usize) {
    let db = reset(url).await;
    let mut sink = SinkConfig::new("pg", "postgres", &["bench.>"])
        .option("url", url)
        .option("table", TABLE);
    sink.batch.max_events = BATCH;
    sink.batch.max_bytes = 64 << 20;
    sink.batch.max_delay_ms = 50;
    sink.buffer.when_full = streambus_types::config::WhenFull::Block;
    let bus = Bus::start(BusConfig {
        sinks: vec![sink],
        ..BusConfig::default()
    })
    .await
    .unwrap();
    let session = bus.default_session().await.unwrap();
    let topic = Topic::new("bench.rows").unwrap();
    let messages: Vec<Message> = (0..rows).map(|i| Message::new(topic.clone(), payload(i))).collect();
    let start = Instant::now();
    for chunk in messages.chunks(1000) {
        session.publish_batch(chunk.to_vec()).await.unwrap();
    }
    while bus.sinks().await.unwrap()[0].written < rows as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    bus.shutdown().await;
    assert_eq!(count(&db).await, rows as i64);
    report("bus → sink", rows, elapsed);
}

#[tokio::main]
async fn main() {
    let url = std::env::var("STREAMBUS_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // `cargo bench` passes `--bench`; a bare number is the row count.
    let rows = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(500_000);
    println!("payload {} bytes, batches of {BATCH}", payload(0).len());
    sink_alone(&url, rows, false).await;
    sink_alone(&url, rows, true).await;
    through_bus(&url, rows).await;
    reset(&url).await;
}
