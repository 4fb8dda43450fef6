//! A sink written outside streambus: implement `Sink`, register it by name, configure it.
//!
//! Run: `cargo run --release --example custom_sink`
//!
//! You should see the `averages` sink receive batches of temperature readings and print
//! a running average per device, then a bad reading refused as a poison record land on
//! the `$dlq.averages` dead-letter topic with the sink's reason, while the rest of its
//! batch is counted. At the end the sink's snapshot shows what it wrote.

use std::collections::BTreeMap;

use anyhow::Result;
use futures::StreamExt;
use streambus::sink::{Record, Sink, SinkError, SinkRegistry, SinkSpec, async_trait};
use streambus::{Bus, BusConfig, Event, Message, SinkConfig, SubscriptionOptions, Topic};

/// Keeps a running average of `temperature` readings per device.
struct Averages {
    /// How many decimals to print (the sink's own config field).
    precision: usize,
    sums: BTreeMap<String, (f64, u64)>,
}

#[async_trait]
impl Sink for Averages {
    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        // Check the whole batch first: a write is all or nothing.
        let mut parsed = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let value: f64 = std::str::from_utf8(&r.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| SinkError::poison(i, "payload is not a number"))?;
            parsed.push((r.topic.as_str().to_owned(), value));
        }
        for (device, value) in parsed {
            let e = self.sums.entry(device).or_default();
            e.0 += value;
            e.1 += 1;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        for (device, (sum, n)) in &self.sums {
            println!("{device}: {:.*} over {n} readings", self.precision, sum / *n as f64);
        }
        Ok(())
    }
}

/// The factory: parses the sink's own fields (refusing unknown ones) into a new sink.
fn averages(spec: &SinkSpec) -> Result<Box<dyn Sink>, streambus::ConfigError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        precision: usize,
    }
    let options: Options = spec.options()?;
    Ok(Box::new(Averages {
        precision: options.precision,
        sums: BTreeMap::new(),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let mut registry = SinkRegistry::with_builtins();
    registry.register("averages", averages);
    // The same entry could come from a TOML file: [[sinks]] type = "averages" ...
    let mut sink = SinkConfig::new("averages", "averages", &["sensors.*.temperature"]).option("precision", 2);
    sink.batch.max_delay_ms = 50;
    let config = BusConfig {
        sinks: vec![sink],
        ..BusConfig::default()
    };
    let bus = Bus::start_with_sinks(config, registry).await?;
    let mut dead_letters = bus.subscribe("$dlq.averages", SubscriptionOptions::default()).await?;

    let session = bus.default_session().await?;
    let mut readings = Vec::new();
    for i in 0..30 {
        let device = format!("sensors.dev{}.temperature", i % 3);
        let value = if i == 17 {
            "n/a".to_owned()
        } else {
            format!("{}", 20.0 + i as f64 / 10.0)
        };
        readings.push(Message::new(Topic::new(&device)?, value));
    }
    session.publish_batch(readings).await?;

    if let Some(Event::Delivery(d)) = dead_letters.next().await {
        println!(
            "dead letter from {}: {:?} ({})",
            d.headers.get("dlq-topic").unwrap_or("?"),
            String::from_utf8_lossy(&d.payload),
            d.headers.get("dlq-reason").unwrap_or("?")
        );
    }
    // Wait for the other 29 readings, then show the sink's snapshot.
    loop {
        let sinks = bus.sinks().await?;
        if sinks[0].written >= 29 {
            println!("{}", serde_json::to_string_pretty(&sinks[0])?);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bus.shutdown().await;
    Ok(())
}
