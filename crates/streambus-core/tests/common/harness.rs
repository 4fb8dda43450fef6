//! Shared helpers of the core's end-to-end tests: start a bus, wait for a condition,
//! read a subscription with a deadline. No bare sleeps: every wait is for a condition.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different subset")]

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use streambus_core::{Bus, BusConfig, BusSnapshot, Event, Message, Subscription, Topic};

/// The longest any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A bus with `tweak` applied to the default config.
pub async fn bus_with(tweak: impl FnOnce(&mut BusConfig)) -> Bus {
    let mut config = BusConfig::default();
    tweak(&mut config);
    Bus::start(config).await.expect("bus starts")
}

/// A bus with the default config.
pub async fn bus() -> Bus {
    bus_with(|_| {}).await
}

/// A message with a string payload.
pub fn msg(topic: &str, payload: impl Into<String>) -> Message {
    Message::new(Topic::new(topic).unwrap(), payload.into())
}

/// Polls `check` until it returns `Some`, or panics after [`PATIENCE`].
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the bus snapshot satisfies `pred`, and returns that snapshot.
pub async fn wait_snapshot(bus: &Bus, what: &str, pred: impl Fn(&BusSnapshot) -> bool) -> BusSnapshot {
    wait_until(what, || async {
        let snap = bus.snapshot().await.ok()?;
        pred(&snap).then_some(snap)
    })
    .await
}

/// The next event, or a panic after [`PATIENCE`].
pub async fn next(sub: &mut Subscription) -> Option<Event> {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("an event in time")
}

/// The next `n` events, which must all be deliveries; returns their payloads.
pub async fn payloads(sub: &mut Subscription, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next(sub).await {
            Some(Event::Delivery(d)) => out.push(String::from_utf8(d.payload.to_vec()).unwrap()),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    out
}

/// Every event until the subscription ends.
pub async fn drain(sub: &mut Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = next(sub).await {
        out.push(e);
    }
    out
}
