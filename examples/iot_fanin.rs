//! IoT telemetry fan-in: many devices, each on its own gRPC stream, publish readings;
//! the bus batches them into PostgreSQL while a live dashboard watches temperatures.
//!
//! Needs a PostgreSQL (the URL in `STREAMBUS_EXAMPLE_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). The server runs inside the example:
//!
//! ```text
//! cargo run --release --example iot_fanin
//! ```
//!
//! You should see, once a second, how many readings the dashboard saw and how many rows
//! the `postgres` sink has written; after 5 seconds the devices stop, the sink catches
//! up, and the table `iot_readings` holds exactly one row per reading published (the
//! sink is idempotent on message id, so a retried batch leaves no duplicate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use streambus::client::{Client, ClientOptions};
use streambus::{Bus, BusConfig, Event, Message, OverflowPolicy, SinkConfig, SubscriptionOptions, Topic};

const DEVICES: u32 = 200;
const RUN_FOR: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let pg = std::env::var("STREAMBUS_EXAMPLE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    // The bus with one sink: every reading into a time-series table, 5000 rows a COPY.
    let mut sink = SinkConfig::new("pg", "postgres", &["sensors.>"])
        .option("url", pg)
        .option("table", "iot_readings")
        .option("idempotent", true);
    sink.batch.max_events = 5000;
    // Never drop a reading: if PostgreSQL falls behind, the devices are held back.
    sink.buffer.when_full = streambus::types::config::WhenFull::Block;
    let config = BusConfig {
        sinks: vec![sink],
        ..BusConfig::default()
    };
    let bus = Bus::start(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = streambus::server::start(bus.clone(), listener);
    let url = server.url();

    // A dashboard: every temperature, the freshest if it falls behind.
    let seen = Arc::new(AtomicU64::new(0));
    let dashboard = Client::connect_with(ClientOptions::new(url.clone()).name("dashboard")).await?;
    let mut temperatures = dashboard
        .subscribe(
            "sensors.*.temperature",
            SubscriptionOptions::default().overflow(OverflowPolicy::DropOldest),
        )
        .await?;
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = temperatures.next().await {
            if let Event::Delivery(_) = event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // The devices: one client (one stream) each, a batch of readings every 10 ms.
    let published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RUN_FOR;
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        let url = url.clone();
        let published = published.clone();
        devices.push(tokio::spawn(async move {
            let client = Client::connect_with(ClientOptions::new(url).name(format!("dev{d}"))).await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let batch = ["temperature", "humidity"]
                    .iter()
                    .map(|metric| {
                        let value = format!(
                            r#"{{"device":"dev{d}","n":{n},"{metric}":{:.2}}}"#,
                            20.0 + (n % 50) as f64 / 10.0
                        );
                        Message::new(Topic::new(&format!("sensors.dev{d}.{metric}")).expect("valid"), value)
                    })
                    .collect();
                published.fetch_add(client.publish_batch(batch, true).await?, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client.close();
            anyhow::Ok(())
        }));
    }

    let written = |bus: Bus| async move { bus.sinks().await.map(|s| s[0].written).unwrap_or(0) };
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "published {:>7}  dashboard saw {:>7}  rows written {:>7}",
            published.load(Ordering::Relaxed),
            seen.load(Ordering::Relaxed),
            written(bus.clone()).await
        );
    }
    for d in devices {
        d.await??;
    }
    let total = published.load(Ordering::Relaxed);
    while written(bus.clone()).await < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("all {total} readings are rows of iot_readings");
    dashboard.close();
    server.shutdown().await?;
    Ok(())
}
