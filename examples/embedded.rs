//! The bus embedded in a program: no network, no external service.
//!
//! Run: `cargo run --release --example embedded`
//!
//! You should see a dashboard subscriber print the temperature of each simulated
//! device (newest values, as `drop_oldest` keeps them), a queue group of two workers
//! share the alarm jobs between them, a late subscriber get the retained firmware
//! version first, and finally the bus snapshot as JSON.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use streambus::{
    BatchEvent, Bus, BusConfig, ConnectOptions, Event, Message, OverflowPolicy, SubscriptionOptions, Topic,
};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let bus = Bus::start(BusConfig::default()).await?;

    // A dashboard: every device's temperature, freshest values first if it falls behind.
    let mut dashboard = bus
        .subscribe(
            "sensors.*.temperature",
            SubscriptionOptions::default().overflow(OverflowPolicy::DropOldest),
        )
        .await?;

    // Two workers sharing alarm jobs: each alarm goes to exactly one of them.
    let mut workers = Vec::new();
    for name in ["worker-1", "worker-2"] {
        let mut jobs = bus
            .subscribe("alarms.>", SubscriptionOptions::default().queue_group("alarm-workers"))
            .await?;
        workers.push(tokio::spawn(async move {
            let mut handled = 0;
            while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(300), jobs.next()).await {
                if let Event::Delivery(d) = event {
                    handled += 1;
                    println!("{name} handles {} ({})", d.topic, String::from_utf8_lossy(&d.payload));
                }
            }
            (name, handled)
        }));
    }

    // Ten devices, each with its own session, publishing a batch of readings.
    for device in 0..10 {
        let session = bus.connect(ConnectOptions::named(format!("device-{device}"))).await?;
        let temperature = Topic::new(&format!("sensors.dev{device}.temperature"))?;
        let readings = (0..3).map(|i| {
            Message::new(
                temperature.clone(),
                format!("{:.1}", 20.0 + device as f64 + i as f64 / 10.0),
            )
        });
        session.publish_batch(readings.collect()).await?;
        if device % 3 == 0 {
            session
                .publish(&format!("alarms.dev{device}.overheat"), "check cooling")
                .await?;
        }
        session.close().await?;
    }

    // The dashboard reads whole runs of deliveries without copying them.
    let mut shown = 0;
    while shown < 30 {
        match dashboard.next_batch().await {
            Some(BatchEvent::Deliveries(run)) => {
                for d in run.iter() {
                    println!(
                        "dashboard: {} = {} (seq {})",
                        d.topic,
                        String::from_utf8_lossy(&d.payload),
                        d.sequence
                    );
                }
                shown += run.len();
            }
            Some(BatchEvent::Gap(gap)) => {
                println!("dashboard lagged: {} readings of {} dropped", gap.dropped, gap.topic)
            }
            other => anyhow::bail!("dashboard ended: {other:?}"),
        }
    }
    for worker in workers {
        let (name, handled) = worker.await?;
        println!("{name} handled {handled} alarms");
    }

    // Retained: a late subscriber learns the current firmware version at once.
    bus.publish_message(Message::new(Topic::new("fleet.firmware")?, "v2.4.1").retained())
        .await?;
    let mut late = bus.subscribe("fleet.firmware", SubscriptionOptions::default()).await?;
    if let Some(Event::Delivery(d)) = late.next().await {
        println!(
            "late subscriber: firmware {} (retained: {})",
            String::from_utf8_lossy(&d.payload),
            d.retained
        );
    }

    println!("{}", serde_json::to_string_pretty(&bus.snapshot().await?)?);
    bus.shutdown().await;
    Ok(())
}
