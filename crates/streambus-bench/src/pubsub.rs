//! The pub/sub workloads, like `nats bench`: publishers, subscribers, or both.
//!
//! - `pub`: `pubs` publishers send `size`-byte messages round robin over `topics`
//!   subjects `bench.<n>`, in batches of `batch`; throughput is what the server took.
//! - `sub`: `subs` subscribers on `bench.>` count and time what arrives (run a `pub`
//!   elsewhere); throughput is deliveries received.
//! - `pubsub`: both in one run, subscribers first. `pubs` N > 1 with `subs` M is fan-in
//!   (N → M, every subscriber gets every message); `pubs` 1 is fan-out (1 → M).
//!
//! Targets: a streambus server over gRPC (`--addr`), an in-process bus (`--embedded`),
//! or a nats-server (`--target nats`), with the same subjects and payloads.
//!
//! Each payload starts with its send time (nanoseconds since the Unix epoch, 8 bytes
//! little-endian), so latency is measured across processes on one machine. Closed loop
//! by default (a publisher sends its next batch when the previous one is taken, flow
//! controlled by the transport); `rate` makes it open loop (batches sent on a fixed
//! schedule, so queueing shows up as latency rather than as a slower sender).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use streambus::client::{Client, ClientOptions};
use streambus::{
    BatchEvent, Bus, BusConfig, ConnectOptions, Event, Message, OverflowPolicy, SubscriptionOptions, Topic,
};
use tokio::time::Instant;

use crate::report::Latencies;

/// Bytes of the send timestamp at the start of each payload.
pub const STAMP_BYTES: usize = 8;
/// How long subscribers wait for stragglers after the publishers are done.
const GRACE: Duration = Duration::from_secs(3);

/// Which of the three workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Publishers only.
    Pub,
    /// Subscribers only.
    Sub,
    /// Both, in one run.
    PubSub,
}

/// What the workload talks to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A streambus server, by URL (`http://host:port`).
    Grpc(String),
    /// A bus inside this process.
    Embedded,
    /// A nats-server, by URL (`nats://host:port`).
    Nats(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PubSubOptions {
    /// The workload.
    pub workload: Workload,
    /// The server.
    pub target: Target,
    /// Where subscribers connect instead of `target` (another node of a cluster, or
    /// another server of a NATS cluster): what crossing the backplane costs.
    pub sub_target: Option<Target>,
    /// Publishers, one connection each.
    pub pubs: usize,
    /// Subscribers, one connection each.
    pub subs: usize,
    /// Payload size in bytes (at least the 8-byte timestamp).
    pub size: usize,
    /// Stop after this long (publishers; subscribers then wait a short grace).
    pub duration: Option<Duration>,
    /// Stop after this many messages published in all (`pub`, `pubsub`) or received
    /// per subscriber (`sub`).
    pub msgs: Option<u64>,
    /// Open loop: messages per second across all publishers.
    pub rate: Option<f64>,
    /// Subjects `bench.0` .. `bench.<topics-1>`.
    pub topics: usize,
    /// Messages per publish call.
    pub batch: usize,
}

impl PubSubOptions {
    /// Checks the options before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        let needs_pubs = self.workload != Workload::Sub;
        let needs_subs = self.workload != Workload::Pub;
        if needs_pubs && self.pubs == 0 {
            return Err("--pubs must be at least 1".into());
        }
        if needs_subs && self.subs == 0 {
            return Err("--subs must be at least 1".into());
        }
        if self.size < STAMP_BYTES {
            return Err(format!(
                "--size must be at least {STAMP_BYTES} bytes (the send timestamp)"
            ));
        }
        if self.topics == 0 || self.topics > 100_000 {
            return Err("--topics must be between 1 and 100000".into());
        }
        if self.batch == 0 || self.batch > 4096 {
            return Err("--batch must be between 1 and 4096".into());
        }
        match (self.duration, self.msgs) {
            (None, None) => return Err("give --duration or --msgs".into()),
            (Some(_), Some(_)) => return Err("give --duration or --msgs, not both".into()),
            (Some(d), None) if d.is_zero() || d > Duration::from_secs(3600) => {
                return Err("--duration must be between 0 and 3600 seconds".into());
            }
            (None, Some(0)) => return Err("--msgs must be at least 1".into()),
            _ => {}
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err("--rate must be a positive number of messages per second".into());
        }
        if self.workload == Workload::Sub && self.rate.is_some() {
            return Err("--rate applies to publishers; `sub` has none".into());
        }
        Ok(())
    }
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct PubSubRun {
    /// Messages the publishers sent (and the server took).
    pub published: u64,
    /// Deliveries the subscribers received, all together.
    pub received: u64,
    /// Send-to-receive latency of every delivery (empty for `pub`).
    pub latencies: Latencies,
    /// Publish-call latency of every batch (what `pub` reports).
    pub publish_latencies: Latencies,
    /// From the first publish (or subscribe, for `sub`) to the last message.
    pub elapsed: Duration,
    /// Throughput samples: (seconds since start, messages that second), for plots.
    pub timeline: Vec<(f64, u64)>,
    /// What failed (a connection, a subscriber that missed messages).
    pub errors: Vec<String>,
}

/// Counts shared with the progress display while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages published so far.
    pub published: AtomicU64,
    /// Deliveries received so far.
    pub received: AtomicU64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A payload of `size` bytes stamped with the current time.
pub fn stamped_payload(size: usize) -> Bytes {
    let mut p = vec![b'x'; size.max(STAMP_BYTES)];
    p[..STAMP_BYTES].copy_from_slice(&now_ns().to_le_bytes());
    Bytes::from(p)
}

/// The send time of a stamped payload.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..STAMP_BYTES)?.try_into().ok()?))
}

pub(crate) fn latency_since(stamp: u64) -> Duration {
    Duration::from_nanos(now_ns().saturating_sub(stamp))
}

/// A connection to the target.
pub(crate) enum Conn {
    Grpc(Client),
    Embedded(streambus::SessionHandle),
    Nats(async_nats::Client),
}

/// What a subscriber reads.
pub(crate) enum Feed {
    Grpc(streambus::client::ClientSubscription),
    Embedded(streambus::Subscription),
    Nats(async_nats::Subscriber),
}

impl Feed {
    /// Stamps of the next deliveries; `None` when the subscription ended.
    pub(crate) async fn next(&mut self) -> Option<Vec<u64>> {
        let stamps = |p: &[u8]| stamp_of(p).unwrap_or(0);
        match self {
            Feed::Grpc(s) => s.next_batch().await.map(|events| {
                events
                    .iter()
                    .filter_map(|e| match e {
                        Event::Delivery(d) => Some(stamps(&d.payload)),
                        _ => None,
                    })
                    .collect()
            }),
            Feed::Embedded(s) => match s.next_batch().await? {
                BatchEvent::Deliveries(run) => Some(run.iter().map(|d| stamps(&d.payload)).collect()),
                BatchEvent::Gap(_) => Some(Vec::new()),
                BatchEvent::Closed(_) => None,
            },
            Feed::Nats(s) => s.next().await.map(|m| vec![stamps(&m.payload)]),
        }
    }
}

pub(crate) async fn connect(target: &Target, bus: Option<&Bus>, name: String) -> anyhow::Result<Conn> {
    Ok(match target {
        Target::Grpc(url) => {
            let mut options = ClientOptions::new(url.clone()).name(name);
            options.auth = crate::credentials::auth();
            Conn::Grpc(Client::connect_with(options).await?)
        }
        Target::Embedded => Conn::Embedded(
            bus.expect("an embedded target has a bus")
                .connect(ConnectOptions::named(name))
                .await?,
        ),
        Target::Nats(url) => Conn::Nats(
            async_nats::ConnectOptions::new()
                .name(name)
                .subscription_capacity(1 << 20)
                .connect(url.as_str())
                .await?,
        ),
    })
}

impl Conn {
    pub(crate) async fn subscribe(&self, filter: &str) -> anyhow::Result<Feed> {
        // Subscribers of a benchmark must not lose anything: `block`, big buffers.
        let options = SubscriptionOptions::default()
            .overflow(OverflowPolicy::Block)
            .buffer(65_536, 64 << 20);
        Ok(match self {
            Conn::Grpc(c) => Feed::Grpc(c.subscribe(filter, options).await?),
            Conn::Embedded(s) => Feed::Embedded(s.subscribe(filter, options).await?),
            Conn::Nats(c) => Feed::Nats(c.subscribe(filter.to_owned()).await?),
        })
    }

    /// Publishes a batch; `last` asks for the server's acknowledgement (so that when
    /// the publisher is done, the server has everything).
    pub(crate) async fn publish(&self, topic: &Topic, payloads: Vec<Bytes>, last: bool) -> anyhow::Result<()> {
        match self {
            Conn::Grpc(c) => {
                let messages = payloads.into_iter().map(|p| Message::new(topic.clone(), p)).collect();
                c.publish_batch(messages, last).await?;
            }
            Conn::Embedded(s) => {
                let messages = payloads.into_iter().map(|p| Message::new(topic.clone(), p)).collect();
                s.publish_batch(messages).await?;
            }
            Conn::Nats(c) => {
                for p in payloads {
                    c.publish(topic.as_str().to_owned(), p).await?;
                }
                if last {
                    c.flush().await?;
                }
            }
        }
        Ok(())
    }
}

/// One publisher's share of the run.
struct Share {
    index: usize,
    quota: Option<u64>,
    deadline: Option<Instant>,
    /// Seconds between two batches (open loop).
    interval: Option<Duration>,
}

async fn publisher(
    conn: Conn,
    share: Share,
    options: PubSubOptions,
    topics: Arc<Vec<Topic>>,
    progress: Arc<Progress>,
) -> anyhow::Result<(u64, Latencies)> {
    let mut sent = 0u64;
    let mut latencies = Latencies::new();
    let mut next_topic = share.index % topics.len();
    let mut tick = share.interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    loop {
        let remaining = share.quota.map_or(u64::MAX, |q| q - sent);
        let time_left = share.deadline.is_none_or(|d| Instant::now() < d);
        if remaining == 0 || !time_left {
            break;
        }
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let n = (options.batch as u64).min(remaining) as usize;
        let last = share.quota.is_some_and(|q| sent + n as u64 == q);
        let payloads = (0..n).map(|_| stamped_payload(options.size)).collect();
        let started = Instant::now();
        conn.publish(&topics[next_topic], payloads, last).await?;
        latencies.record(started.elapsed());
        next_topic = (next_topic + 1) % topics.len();
        sent += n as u64;
        progress.published.fetch_add(n as u64, Ordering::Relaxed);
    }
    // A run bounded by time ends with an acknowledged (or flushed) empty-handed call,
    // so everything sent has reached the server.
    if share.quota.is_none() {
        conn.publish(&topics[next_topic], Vec::new(), true).await?;
    }
    if let Conn::Grpc(c) = &conn {
        c.close();
    }
    Ok((sent, latencies))
}

async fn subscriber(
    mut feed: Feed,
    expected: Arc<AtomicU64>,
    publishers_done: Arc<tokio::sync::Notify>,
    done_flag: Arc<std::sync::atomic::AtomicBool>,
    progress: Arc<Progress>,
) -> Received {
    let mut r = Received {
        count: 0,
        latencies: Latencies::new(),
        first: None,
        last: None,
    };
    loop {
        let want = expected.load(Ordering::Acquire);
        if r.count >= want {
            break;
        }
        let wait = if done_flag.load(Ordering::Acquire) {
            GRACE
        } else {
            Duration::from_secs(3600)
        };
        let next = tokio::select! {
            n = tokio::time::timeout(wait, feed.next()) => n,
            _ = publishers_done.notified() => continue,
        };
        match next {
            Ok(Some(stamps)) => {
                let now = Instant::now();
                r.first.get_or_insert(now);
                r.last = Some(now);
                r.count += stamps.len() as u64;
                progress.received.fetch_add(stamps.len() as u64, Ordering::Relaxed);
                for s in stamps {
                    r.latencies.record(latency_since(s));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    r
}

/// What one subscriber got.
struct Received {
    count: u64,
    latencies: Latencies,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Runs the workload. `progress` is updated as it goes.
pub async fn run(options: &PubSubOptions, progress: Arc<Progress>) -> anyhow::Result<PubSubRun> {
    let bus = match options.target {
        Target::Embedded => Some(Bus::start(BusConfig::default()).await?),
        _ => None,
    };
    let topics: Arc<Vec<Topic>> = Arc::new(
        (0..options.topics)
            .map(|i| Topic::new(&format!("bench.{i}")))
            .collect::<Result<_, _>>()?,
    );
    let has_pubs = options.workload != Workload::Sub;
    let has_subs = options.workload != Workload::Pub;

    // Subscribers first, so that none misses the start.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let publishers_done = Arc::new(tokio::sync::Notify::new());
    let done_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut subs = Vec::new();
    if has_subs {
        if options.workload == Workload::Sub
            && let Some(m) = options.msgs
        {
            expected.store(m, Ordering::Release);
        }
        for i in 0..options.subs {
            let target = options.sub_target.as_ref().unwrap_or(&options.target);
            let conn = connect(target, bus.as_ref(), format!("bench-sub-{i}")).await?;
            let feed = conn.subscribe("bench.>").await?;
            if let Conn::Nats(c) = &conn {
                c.flush().await?;
            }
            subs.push((
                conn,
                tokio::spawn(subscriber(
                    feed,
                    expected.clone(),
                    publishers_done.clone(),
                    done_flag.clone(),
                    progress.clone(),
                )),
            ));
        }
    }

    let start = Instant::now();
    let mut pubs = Vec::new();
    if has_pubs {
        let deadline = options.duration.map(|d| start + d);
        let per_pub_rate = options.rate.map(|r| r / options.pubs as f64);
        for i in 0..options.pubs {
            let quota = options
                .msgs
                .map(|m| m / options.pubs as u64 + u64::from((i as u64) < m % options.pubs as u64));
            let interval = per_pub_rate.map(|r| Duration::from_secs_f64(options.batch as f64 / r));
            let conn = connect(&options.target, bus.as_ref(), format!("bench-pub-{i}")).await?;
            let share = Share {
                index: i,
                quota,
                deadline,
                interval,
            };
            pubs.push(tokio::spawn(publisher(
                conn,
                share,
                options.clone(),
                topics.clone(),
                progress.clone(),
            )));
        }
    }

    // Throughput samples (messages per second, every 250 ms) for the plot.
    let timeline = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sampler = {
        let (progress, timeline) = (progress.clone(), timeline.clone());
        let count_received = has_subs;
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = if count_received {
                    progress.received.load(Ordering::Relaxed)
                } else {
                    progress.published.load(Ordering::Relaxed)
                };
                timeline.lock().push((start.elapsed().as_secs_f64(), (now - last) * 4));
                last = now;
            }
        })
    };

    let mut run = PubSubRun::default();
    for p in pubs {
        match p.await? {
            Ok((sent, l)) => {
                run.published += sent;
                run.publish_latencies.merge(&l);
            }
            Err(e) => run.errors.push(format!("publisher: {e}")),
        }
    }
    if has_pubs && has_subs {
        expected.store(run.published, Ordering::Release);
    }
    done_flag.store(true, Ordering::Release);
    publishers_done.notify_waiters();
    let publish_elapsed = start.elapsed();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for (conn, s) in subs {
        let r = s.await?;
        run.received += r.count;
        run.latencies.merge(&r.latencies);
        first = first.into_iter().chain(r.first).min();
        last = last.into_iter().chain(r.last).max();
        let want = expected.load(Ordering::Acquire);
        if r.count < want && want != u64::MAX {
            run.errors
                .push(format!("a subscriber received {} of {want} messages", r.count));
        }
        if let Conn::Grpc(c) = conn {
            c.close();
        }
    }
    run.elapsed = match (options.workload, first, last) {
        (Workload::Pub, ..) => publish_elapsed,
        // `sub` measures from its first delivery: the publisher starts when it likes.
        (Workload::Sub, Some(f), Some(l)) => l - f,
        (_, _, Some(l)) => l - start,
        _ => publish_elapsed,
    };
    sampler.abort();
    run.timeline = std::mem::take(&mut *timeline.lock());
    if let Some(bus) = bus {
        bus.shutdown().await;
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(workload: Workload, target: Target) -> PubSubOptions {
        PubSubOptions {
            workload,
            target,
            sub_target: None,
            pubs: 2,
            subs: 2,
            size: 64,
            duration: None,
            msgs: Some(2000),
            rate: None,
            topics: 3,
            batch: 50,
        }
    }

    /// A stamp round-trips and a payload has the requested size.
    #[test]
    fn stamps() {
        let p = stamped_payload(100);
        assert_eq!(p.len(), 100);
        let s = stamp_of(&p).unwrap();
        assert!(s > 1_600_000_000_000_000_000);
        assert_eq!(stamp_of(b"short"), None);
    }

    /// Bad parameters are refused, each with its flag named.
    #[test]
    fn options_are_validated() {
        let ok = options(Workload::PubSub, Target::Embedded);
        assert!(ok.validate().is_ok());
        let bad = |o: PubSubOptions, flag: &str| {
            let e = o.validate().unwrap_err();
            assert!(e.contains(flag), "{e}");
        };
        bad(PubSubOptions { pubs: 0, ..ok.clone() }, "--pubs");
        bad(PubSubOptions { subs: 0, ..ok.clone() }, "--subs");
        bad(PubSubOptions { size: 4, ..ok.clone() }, "--size");
        bad(
            PubSubOptions {
                topics: 0,
                ..ok.clone()
            },
            "--topics",
        );
        bad(PubSubOptions { batch: 0, ..ok.clone() }, "--batch");
        bad(
            PubSubOptions {
                msgs: None,
                ..ok.clone()
            },
            "--duration or --msgs",
        );
        bad(
            PubSubOptions {
                duration: Some(Duration::from_secs(1)),
                ..ok.clone()
            },
            "not both",
        );
        bad(
            PubSubOptions {
                rate: Some(-1.0),
                ..ok.clone()
            },
            "--rate",
        );
        bad(
            PubSubOptions {
                workload: Workload::Sub,
                rate: Some(10.0),
                ..ok.clone()
            },
            "--rate",
        );
        // `pub` needs no subscriber, `sub` no publisher.
        assert!(
            PubSubOptions {
                subs: 0,
                workload: Workload::Pub,
                ..ok.clone()
            }
            .validate()
            .is_ok()
        );
        assert!(
            PubSubOptions {
                pubs: 0,
                workload: Workload::Sub,
                ..ok
            }
            .validate()
            .is_ok()
        );
    }

    async fn check_fan_in(target: Target) {
        let o = options(Workload::PubSub, target);
        let fan_in = run(&o, Arc::default()).await.unwrap();
        assert!(fan_in.errors.is_empty(), "{:?}", fan_in.errors);
        assert_eq!(fan_in.published, 2000);
        assert_eq!(fan_in.received, 4000, "every subscriber gets every message");
        assert_eq!(fan_in.latencies.len(), 4000);
        let o = PubSubOptions {
            rate: Some(20_000.0),
            ..options(Workload::Pub, o.target)
        };
        let publish = run(&o, Arc::default()).await.unwrap();
        assert_eq!(publish.published, 2000);
        assert_eq!(publish.publish_latencies.len(), 40, "2000 messages in batches of 50");
    }

    /// Fan-in against an in-process bus and a real server: counts exact, every delivery
    /// timed; an open-loop `pub` publishes its quota in batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_against_the_bus() {
        check_fan_in(Target::Embedded).await;
        let bus = Bus::start(BusConfig::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = streambus::server::start(bus, listener);
        check_fan_in(Target::Grpc(server.url())).await;
        server.shutdown().await.unwrap();
    }

    /// The same against the real nats-server named by `STREAMBUS_TEST_NATS_URL`
    /// (skipped without it, a failure under `CI=true`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_against_nats() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let Ok(url) = std::env::var("STREAMBUS_TEST_NATS_URL") else {
            assert!(!ci, "CI=true: STREAMBUS_TEST_NATS_URL must name the test nats-server");
            eprintln!("skipped: STREAMBUS_TEST_NATS_URL is not set");
            return;
        };
        if let Err(e) = async_nats::connect(url.as_str()).await {
            assert!(!ci, "CI=true: nats-server at {url} is unreachable: {e}");
            eprintln!("skipped: nats-server at {url} is unreachable: {e}");
            return;
        }
        check_fan_in(Target::Nats(url)).await;
    }
}
