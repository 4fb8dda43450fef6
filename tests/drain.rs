//! The graceful stop delivers: on SIGTERM the real `streambus serve` refuses new work,
//! goes on delivering everything it admitted to the subscribers still connected, and
//! says in its exit status whether it managed.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/served.rs"]
mod served;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use harness::{wait_until, within};
use served::Served;
use streambus::client::{Client, ClientOptions, ClientSubscription, Credit};
use streambus::{Event, Message, OverflowPolicy, SubscriptionOptions, Topic};
use tokio::sync::watch;

const PUBLISHERS: usize = 4;
const SUBSCRIBERS: usize = 3;
const BATCH: usize = 50;

/// A `block` subscriber on every publisher's topic, with a small buffer and a credit
/// window, so that the topics' backlog builds up while it does not read.
async fn block_subscriber(url: &str, name: &str) -> (Client, ClientSubscription) {
    let options = ClientOptions::new(url)
        .name(name)
        .reconnect(false)
        .credit(Credit::Window(64));
    let client = Client::connect_with(options).await.unwrap();
    let subscription = client
        .subscribe(
            "load.>",
            SubscriptionOptions::default()
                .overflow(OverflowPolicy::Block)
                .buffer(64, 1 << 20),
        )
        .await
        .unwrap();
    (client, subscription)
}

/// Publishes acked batches to `load.p<i>` until the server refuses or goes away;
/// returns the payloads it got acks for.
async fn publish_until_refused(url: String, i: usize, acked_total: Arc<AtomicU64>) -> Vec<String> {
    let options = ClientOptions::new(url).name(format!("pub{i}")).reconnect(false);
    let client = Client::connect_with(options).await.unwrap();
    let topic = Topic::new(&format!("load.p{i}")).unwrap();
    let mut acked = Vec::new();
    for n in 0.. {
        let payloads: Vec<String> = (0..BATCH).map(|k| format!("p{i}-{}", n * BATCH + k)).collect();
        let batch = payloads
            .iter()
            .map(|p| Message::new(topic.clone(), p.clone().into_bytes()))
            .collect();
        match client.publish_batch(batch, true).await {
            Ok(accepted) => {
                assert_eq!(accepted, BATCH as u64);
                acked.extend(payloads);
                acked_total.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
            Err(_) => return acked,
        }
    }
    unreachable!()
}

/// Reads everything once `go` turns true, until the server ends the subscription.
async fn read_all(mut subscription: ClientSubscription, mut go: watch::Receiver<bool>) -> HashSet<String> {
    let _ = go.wait_for(|go| *go).await;
    let mut got = HashSet::new();
    while let Some(event) = subscription.next().await {
        match event {
            Event::Delivery(d) => {
                assert!(
                    got.insert(String::from_utf8(d.payload.to_vec()).unwrap()),
                    "a message was delivered twice"
                );
            }
            Event::Gap(g) => panic!("a block subscriber lost {} messages", g.dropped),
            Event::Closed(_) => break,
        }
    }
    got
}

/// SIGTERM with publishers blocked behind `block` subscribers that are not reading:
/// once they read again, each receives every message any publisher got an ack for
/// (before and after the signal), and the server exits 0 when all is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_delivers_everything_admitted() {
    let served = Served::start(
        &["--grpc-addr", "127.0.0.1:0"],
        &[
            ("STREAMBUS_TOPICS__MAILBOX_MESSAGES", "512"),
            ("STREAMBUS_SHUTDOWN__DRAIN_TIMEOUT_MS", "20000"),
        ],
    );
    let (go_tx, go) = watch::channel(false);
    let mut readers = Vec::new();
    let mut subscribers = Vec::new();
    for s in 0..SUBSCRIBERS {
        let (client, subscription) = block_subscriber(&served.url, &format!("sub{s}")).await;
        subscribers.push(client);
        readers.push(tokio::spawn(read_all(subscription, go.clone())));
    }
    let acked_total = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publish_until_refused(served.url.clone(), i, acked_total.clone())))
        .collect();
    // Far more than the subscribers hold (64 buffered + 64 in the window + the SDK's
    // queue): the rest waits in the topics' backlog, admitted and acked.
    wait_until("publishers are acked well past what the subscribers hold", || {
        let acked = acked_total.clone();
        async move { acked.load(Ordering::Relaxed) >= 1500 }
    })
    .await;

    let probe = Client::connect_with(ClientOptions::new(&served.url).name("probe").reconnect(false))
        .await
        .unwrap();
    let stopped = tokio::task::spawn_blocking(move || served.terminate_with_status(Duration::from_secs(30)));
    wait_until("the server refuses new publishes", || {
        let probe = probe.clone();
        async move { probe.publish_acked("probe.x", "?").await.is_err() }
    })
    .await;
    // The subscribers read again: the blocked publishes are admitted and acked, the
    // next ones refused.
    go_tx.send(true).unwrap();
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(within("a publisher to be refused", p).await.unwrap());
    }
    for (s, reader) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the subscriber's stream ended")
            .unwrap();
        let missing: Vec<&String> = acked.iter().filter(|p| !got.contains(*p)).collect();
        assert!(
            missing.is_empty(),
            "subscriber {s}: {} of {} acked messages never arrived (e.g. {:?})",
            missing.len(),
            acked.len(),
            missing.first()
        );
    }
    let status = stopped.await.unwrap();
    assert!(status.success(), "serve exited with {status} after a complete drain");
    drop(subscribers);
}

/// A `block` subscriber that never reads again holds its topic's backlog: the drain
/// cannot complete, the server still stops at the drain timeout, and its exit status
/// (3) says that messages were left undelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_complete_says_so() {
    let served = Served::start(
        &["--grpc-addr", "127.0.0.1:0"],
        &[
            ("STREAMBUS_TOPICS__MAILBOX_MESSAGES", "256"),
            ("STREAMBUS_SHUTDOWN__DRAIN_TIMEOUT_MS", "500"),
        ],
    );
    let (_stuck, _subscription) = block_subscriber(&served.url, "stuck").await;
    let acked_total = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish_until_refused(served.url.clone(), 0, acked_total.clone()));
    wait_until("the topic's backlog is full", || {
        let acked = acked_total.clone();
        async move { acked.load(Ordering::Relaxed) >= 200 }
    })
    .await;
    let status = tokio::task::spawn_blocking(move || served.terminate_with_status(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "serve exited with {status}");
    let _ = within("the publisher to stop", publisher).await;
}
