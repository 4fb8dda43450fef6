//! Publish and subscribe through a streambus server with the client SDK.
//!
//! Run the server first, then the example:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --release --example pubsub
//! ```
//!
//! You should see the dashboard print six readings from three devices (in publish
//! order per topic), the round trip of a ping, and how many messages the server acked.

use anyhow::Result;
use futures::StreamExt;
use streambus::client::{Client, ClientOptions, Credit};
use streambus::{Event, Message, SubscriptionOptions, Topic};

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("STREAMBUS_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());

    // A dashboard that never has more than 256 deliveries in flight: the SDK grants
    // credit back as it reads.
    let dashboard = Client::connect_with(
        ClientOptions::new(url.clone())
            .name("dashboard")
            .credit(Credit::Window(256)),
    )
    .await?;
    let mut readings = dashboard
        .subscribe("sensors.*.temperature", SubscriptionOptions::default())
        .await?;

    // A device fleet publishing in batches, each acked once the bus admitted it.
    let fleet = Client::connect_with(ClientOptions::new(url).name("fleet")).await?;
    let batch: Vec<Message> = (0..6)
        .map(|i| {
            let topic = Topic::new(&format!("sensors.dev{}.temperature", i % 3)).expect("valid topic");
            Message::new(topic, format!("{:.1}", 20.0 + f64::from(i) / 2.0))
        })
        .collect();
    let acked = fleet.publish_batch(batch, true).await?;

    for _ in 0..6 {
        match readings.next().await {
            Some(Event::Delivery(d)) => {
                println!(
                    "{} #{} = {}",
                    d.topic.as_str(),
                    d.sequence,
                    String::from_utf8_lossy(&d.payload)
                );
            }
            Some(Event::Gap(gap)) => println!("missed {} reading(s) on {}", gap.dropped, gap.topic.as_str()),
            Some(Event::Closed(reason)) => {
                println!("subscription ended: {}", reason.as_str());
                break;
            }
            None => break,
        }
    }
    println!("ping: {:?}", dashboard.ping().await?);
    println!("acked: {acked}");
    Ok(())
}
