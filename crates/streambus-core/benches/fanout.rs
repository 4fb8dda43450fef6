//! In-process publish → deliver throughput: 1→1 and 1→100 fan-out, 128 B and 1 KB
//! payloads, single and batched publishes.
//!
//! Run: `cargo bench -p streambus-core --bench fanout` (add `-- quick` for a short run).
//! Each scenario publishes a fixed number of messages from one session to one topic and
//! stops the clock when every subscriber has received every message. Subscribers use
//! the `block` policy with large buffers, so nothing is dropped (checked at the end) and
//! the figure is end-to-end delivered throughput, not publish-side admission.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use streambus_core::{
    BatchEvent, Bus, BusConfig, ConnectOptions, Event, Message, OverflowPolicy, SubscriptionOptions, Topic,
};

struct Scenario {
    /// Consumers read through the per-event `Stream` (cloning each delivery out) rather
    /// than `next_batch` (zero-copy runs).
    stream: bool,
    subscribers: usize,
    size: usize,
    batch: usize,
    messages: usize,
}

struct Outcome {
    elapsed: Duration,
    deliveries: u64,
    dropped: u64,
}

async fn run(s: &Scenario) -> Outcome {
    let mut config = BusConfig::default();
    config.topics.mailbox_messages = 65_536;
    config.topics.mailbox_bytes = 256 << 20;
    let bus = Bus::start(config).await.unwrap();
    let options = SubscriptionOptions::default()
        .overflow(OverflowPolicy::Block)
        .buffer(65_536, 256 << 20);
    let mut consumers = Vec::new();
    for _ in 0..s.subscribers {
        let mut sub = bus.subscribe("bench.topic", options.clone()).await.unwrap();
        let total = s.messages as u64;
        let stream = s.stream;
        consumers.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut bytes = 0usize;
            while got < total {
                if stream {
                    match sub.next().await {
                        Some(Event::Delivery(d)) => {
                            bytes += d.payload.len();
                            got += 1;
                        }
                        Some(other) => panic!("unexpected {other:?}"),
                        None => break,
                    }
                    continue;
                }
                match sub.next_batch().await {
                    Some(BatchEvent::Deliveries(run)) => {
                        bytes += run.iter().map(|d| d.payload.len()).sum::<usize>();
                        got += run.len() as u64;
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break,
                }
            }
            std::hint::black_box(bytes);
            (got, sub.buffer().dropped)
        }));
    }
    let publisher = bus.connect(ConnectOptions::named("bench")).await.unwrap();
    let topic = Topic::new("bench.topic").unwrap();
    let payload = Bytes::from(vec![b'x'; s.size]);
    let (messages, batch) = (s.messages, s.batch);
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < messages {
            let n = batch.min(messages - sent);
            if n == 1 {
                publisher
                    .publish_message(Message::new(topic.clone(), payload.clone()))
                    .await
                    .unwrap();
            } else {
                let msgs = (0..n).map(|_| Message::new(topic.clone(), payload.clone())).collect();
                publisher.publish_batch(msgs).await.unwrap();
            }
            sent += n;
        }
    });
    let mut deliveries = 0;
    let mut dropped = 0;
    for c in consumers {
        let (got, d) = c.await.unwrap();
        deliveries += got;
        dropped += d;
    }
    let elapsed = start.elapsed();
    producer.await.unwrap();
    bus.shutdown().await;
    Outcome {
        elapsed,
        deliveries,
        dropped,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let scale = if quick { 10 } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut scenarios = Vec::new();
    for &size in &[128, 1024] {
        for &(subscribers, single, batched) in &[(1, 1_000_000, 4_000_000), (100, 100_000, 400_000)] {
            scenarios.push(Scenario {
                stream: false,
                subscribers,
                size,
                batch: 1,
                messages: single / scale,
            });
            scenarios.push(Scenario {
                stream: false,
                subscribers,
                size,
                batch: 256,
                messages: batched / scale,
            });
            scenarios.push(Scenario {
                stream: true,
                subscribers,
                size,
                batch: 256,
                messages: batched / scale,
            });
        }
    }
    println!(
        "| fan-out | payload | batch | consumer API | messages | deliveries | seconds | msgs/s published | deliveries/s | dropped |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &scenarios {
        let o = runtime.block_on(run(s));
        let secs = o.elapsed.as_secs_f64();
        println!(
            "| 1→{} | {} B | {} | {} | {} | {} | {:.3} | {:.0} | {:.0} | {} |",
            s.subscribers,
            s.size,
            s.batch,
            if s.stream { "Stream" } else { "next_batch" },
            s.messages,
            o.deliveries,
            secs,
            s.messages as f64 / secs,
            o.deliveries as f64 / secs,
            o.dropped
        );
        assert_eq!(
            o.deliveries,
            (s.messages * s.subscribers) as u64,
            "every message delivered"
        );
        assert_eq!(o.dropped, 0);
    }
}
