//! The `stalled` workload: one subscriber that never reads (it grants no delivery
//! credit) on a wildcard over many topics, and many publishers at full speed, for a
//! while; the server's resident memory is sampled every second.
//!
//! What the run shows depends on the stalled subscription's overflow policy: under
//! `block` the publishers are held once the bus's memory budget is reached; under the
//! lossy policies they go on at full speed while the subscription drops (and counts)
//! what does not fit its buffer; under `disconnect` the subscription is ended. In every
//! case the server's RSS must stay under the budget plus the process's own overhead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use streambus::client::{Client, ClientOptions, Credit};
use streambus::types::{Message, OverflowPolicy, SubscriptionOptions, Topic};

/// What a stalled run does.
#[derive(Debug, Clone)]
pub struct StalledOptions {
    /// Server URL.
    pub url: String,
    /// The stalled subscription's overflow policy.
    pub policy: OverflowPolicy,
    /// Its buffer bound in bytes.
    pub buffer_bytes: usize,
    /// Publishing clients.
    pub publishers: usize,
    /// Topics `load.t0` .. `load.t<N-1>`, all under the stalled subscriber's `load.>`.
    pub topics: usize,
    /// Payload size in bytes.
    pub size: usize,
    /// How long the publishers run.
    pub duration: Duration,
    /// The server's pid, to read its RSS.
    pub server_pid: u32,
}

/// What the run saw.
#[derive(Debug, Clone, Serialize)]
pub struct StalledReport {
    /// The stalled subscription's policy.
    pub policy: &'static str,
    /// Messages the server acknowledged to the publishers.
    pub published: u64,
    /// Acknowledged messages per second over the run.
    pub published_per_sec: f64,
    /// Server RSS before the run, MiB.
    pub rss_before_mb: f64,
    /// Highest server RSS sampled during the run, MiB.
    pub rss_peak_mb: f64,
    /// Server RSS at the end of the run (publishers still connected), MiB.
    pub rss_end_mb: f64,
    /// Publish calls the server refused (a closing server, or a limit).
    pub refused: u64,
}

fn rss_mb(pid: u32) -> f64 {
    crate::proc_stats::current_rss_bytes(pid).unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// Runs the publishers against the stalled subscriber and samples the server's RSS.
pub async fn run(options: &StalledOptions) -> anyhow::Result<StalledReport> {
    let pid = options.server_pid;
    let rss_before_mb = rss_mb(pid);
    let stalled = Client::connect_with(
        ClientOptions::new(options.url.clone())
            .name("stalled")
            .reconnect(false)
            .credit(Credit::Manual(0)),
    )
    .await?;
    let _subscription = stalled
        .subscribe(
            "load.>",
            SubscriptionOptions {
                overflow: Some(options.policy),
                buffer_bytes: Some(options.buffer_bytes),
                ..SubscriptionOptions::default()
            },
        )
        .await?;
    let published = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::with_capacity(options.publishers);
    let mut tasks = Vec::with_capacity(options.publishers);
    for p in 0..options.publishers {
        let client = Client::connect_with(
            ClientOptions::new(options.url.clone())
                .name(format!("load-{p}"))
                .reconnect(false),
        )
        .await?;
        clients.push(client.clone());
        let (published, refused, stop) = (published.clone(), refused.clone(), stop.clone());
        let (topics, size) = (options.topics, options.size);
        tasks.push(tokio::spawn(async move {
            let payload = bytes::Bytes::from(vec![7u8; size]);
            let mut n = p;
            while !stop.load(Ordering::Relaxed) {
                let topic = Topic::new(&format!("load.t{}", n % topics)).expect("a valid topic");
                let batch = (0..16).map(|_| Message::new(topic.clone(), payload.clone())).collect();
                match client.publish_batch(batch, true).await {
                    Ok(n) => published.fetch_add(n, Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    let mut rss_peak_mb = rss_before_mb;
    while started.elapsed() < options.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak_mb = rss_peak_mb.max(rss_mb(pid));
    }
    let rss_end_mb = rss_mb(pid);
    stop.store(true, Ordering::Relaxed);
    // Publishers held by `block` are waiting on the server: end them with their streams.
    for client in &clients {
        client.close();
    }
    stalled.close();
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = published.load(Ordering::Relaxed);
    Ok(StalledReport {
        policy: options.policy.as_str(),
        published,
        published_per_sec: published as f64 / elapsed,
        rss_before_mb,
        rss_peak_mb,
        rss_end_mb,
        refused: refused.load(Ordering::Relaxed),
    })
}
