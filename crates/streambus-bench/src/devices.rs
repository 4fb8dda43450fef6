//! The `devices` workload: IoT fan-in. N device streams connect at once (the connect
//! storm, timed until every one is established), then each publishes at R messages a
//! second, one message per call, round robin over its own topics
//! `sensors.<device>.<metric>`; M subscribers on `sensors.>` take everything.
//!
//! Reported: the connect storm's duration, what was published and delivered, the
//! publish-to-delivery latency (every payload carries its send time), the server's peak
//! RSS and its CPU time per delivered message over the publishing phase. Devices start
//! spread over one period, as real devices do, not all on the same tick. Against a
//! nats-server (`--target nats`) the same subjects, payloads and schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use streambus::Topic;
use tokio::time::Instant;

use crate::proc_stats;
use crate::pubsub::{Conn, Feed, Target, connect, latency_since, stamped_payload};
use crate::report::{Latencies, LatencySummary};

/// How long subscribers wait for stragglers once the devices are done.
const GRACE: Duration = Duration::from_secs(5);

/// What a devices run does.
#[derive(Debug, Clone)]
pub struct DevicesOptions {
    /// The server.
    pub target: Target,
    /// Device streams, one connection each.
    pub devices: usize,
    /// Messages per second each device publishes.
    pub rate: f64,
    /// Topics per device (`sensors.<device>.m<k>`).
    pub metrics: usize,
    /// Subscribers on `sensors.>`, one connection each.
    pub subs: usize,
    /// Payload size in bytes (at least the 8-byte timestamp).
    pub size: usize,
    /// How long the devices publish.
    pub duration: Duration,
    /// The server's pid, for its RSS and CPU (not for an in-process bus).
    pub server_pid: Option<u32>,
}

impl DevicesOptions {
    /// Checks the options before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        if matches!(self.target, Target::Embedded) {
            return Err("devices connects over the network: give --addr (and --target)".into());
        }
        if self.devices == 0 || self.devices > 100_000 {
            return Err("--devices must be between 1 and 100000".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000.0) {
            return Err("--rate must be between 0 and 10000 messages per second per device".into());
        }
        if self.metrics == 0 || self.metrics > 1000 {
            return Err("--metrics must be between 1 and 1000".into());
        }
        if self.size < crate::pubsub::STAMP_BYTES {
            return Err("--size must be at least 8 bytes (the send timestamp)".into());
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(3600) {
            return Err("--duration must be between 0 and 3600 seconds".into());
        }
        Ok(())
    }
}

/// What a devices run saw.
#[derive(Debug, Clone, Serialize)]
pub struct DevicesReport {
    /// Device streams.
    pub devices: usize,
    /// Messages per second per device.
    pub rate_per_device: f64,
    /// Subscribers.
    pub subs: usize,
    /// Payload bytes.
    pub size: usize,
    /// Seconds from the first connect to the last device's session established.
    pub connect_seconds: f64,
    /// Messages the devices published.
    pub published: u64,
    /// Deliveries the subscribers should get (published × subscribers).
    pub expected: u64,
    /// Deliveries they got.
    pub delivered: u64,
    /// Deliveries per second, from the start of publishing until the last delivery
    /// arrived. The devices' closing confirmations (below) are not deliveries and do
    /// not count in this window.
    pub delivered_per_sec: f64,
    /// Seconds from the start of publishing until the last delivery arrived.
    pub delivering_seconds: f64,
    /// Seconds from the start of publishing until every device's last publish was
    /// confirmed (an acked empty publish on the bus, a flush on nats): each device's
    /// round trip once it stopped publishing.
    pub devices_done_seconds: f64,
    /// Seconds from the start of publishing until the run was over (every device
    /// confirmed, every delivery in).
    pub elapsed_seconds: f64,
    /// Publish-to-delivery latency, microseconds.
    pub latency_us: LatencySummary,
    /// The server's peak RSS over its life, MiB.
    pub server_peak_rss_mb: Option<f64>,
    /// The server's CPU time per delivered message over the publishing phase, µs.
    pub server_cpu_us_per_msg: Option<f64>,
    /// What went wrong (connects refused, publishes failed, deliveries missing).
    pub errors: Vec<String>,
}

/// One device: publishes at its rate until the deadline, then an acknowledged empty
/// call so that everything it sent has reached the server.
async fn device(
    conn: Conn,
    topics: Vec<Topic>,
    period: Duration,
    offset: Duration,
    deadline: Instant,
    size: usize,
    published: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        conn.publish(&topics[n % topics.len()], vec![stamped_payload(size)], false)
            .await?;
        published.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    conn.publish(&topics[0], Vec::new(), true).await?;
    if let Conn::Grpc(c) = &conn {
        c.close();
    }
    Ok(())
}

/// One subscriber: counts and times deliveries until it has `expected` (known once the
/// devices are done) or nothing arrives for [`GRACE`] after that. Returns the count,
/// the latencies and when the last delivery arrived.
async fn subscriber(mut feed: Feed, expected: Arc<AtomicU64>) -> (u64, Latencies, Option<Instant>) {
    let mut count = 0;
    let mut latencies = Latencies::new();
    let mut last = None;
    loop {
        let want = expected.load(Ordering::Acquire);
        if count >= want {
            break;
        }
        // Until the devices are done, look at `expected` again every 100 ms.
        let wait = if want == u64::MAX {
            Duration::from_millis(100)
        } else {
            GRACE
        };
        match tokio::time::timeout(wait, feed.next()).await {
            Ok(Some(stamps)) => {
                last = Some(Instant::now());
                count += stamps.len() as u64;
                for s in stamps {
                    latencies.record(latency_since(s));
                }
            }
            Ok(None) => break,
            Err(_) if want == u64::MAX => {}
            Err(_) => break,
        }
    }
    (count, latencies, last)
}

/// Runs the workload.
pub async fn run(options: &DevicesOptions) -> anyhow::Result<DevicesReport> {
    let mut errors = Vec::new();
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let mut subs = Vec::new();
    for i in 0..options.subs {
        let conn = connect(&options.target, None, format!("sink-{i}")).await?;
        let feed = conn.subscribe("sensors.>").await?;
        if let Conn::Nats(c) = &conn {
            c.flush().await?;
        }
        subs.push((conn, tokio::spawn(subscriber(feed, expected.clone()))));
    }

    // The connect storm: every device at once.
    let storm = Instant::now();
    let connects: Vec<_> = (0..options.devices)
        .map(|d| {
            let target = options.target.clone();
            tokio::spawn(async move { connect(&target, None, format!("dev{d:05}")).await })
        })
        .collect();
    let mut devices = Vec::with_capacity(options.devices);
    for (d, c) in connects.into_iter().enumerate() {
        match c.await? {
            Ok(conn) => devices.push((d, conn)),
            Err(e) => errors.push(format!("device {d} could not connect: {e}")),
        }
    }
    let connect_seconds = storm.elapsed().as_secs_f64();

    let period = Duration::from_secs_f64(1.0 / options.rate);
    let published = Arc::new(AtomicU64::new(0));
    let cpu_before = options.server_pid.and_then(proc_stats::cpu_seconds);
    let start = Instant::now();
    let deadline = start + options.duration;
    let count = devices.len().max(1);
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|(d, conn)| {
            let topics = (0..options.metrics)
                .map(|m| Topic::new(&format!("sensors.dev{d:05}.m{m}")))
                .collect::<Result<Vec<_>, _>>()
                .expect("valid topics");
            let offset = period.mul_f64(d as f64 / count as f64);
            tokio::spawn(device(
                conn,
                topics,
                period,
                offset,
                deadline,
                options.size,
                published.clone(),
            ))
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    if failed > 0 {
        errors.push(format!("{failed} devices failed while publishing"));
    }
    let devices_done_seconds = start.elapsed().as_secs_f64();
    let published = published.load(Ordering::Relaxed);
    let want = published * options.subs as u64;
    expected.store(published, Ordering::Release);
    let mut delivered = 0;
    let mut latencies = Latencies::new();
    let mut last_delivery: Option<Instant> = None;
    for (conn, s) in subs {
        let (n, l, at) = s.await?;
        last_delivery = last_delivery.max(at);
        delivered += n;
        latencies.merge(&l);
        if n < published {
            errors.push(format!("a subscriber received {n} of {published} messages"));
        }
        if let Conn::Grpc(c) = conn {
            c.close();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let delivering_seconds = last_delivery.map_or(elapsed, |at| at.duration_since(start).as_secs_f64());
    let cpu_after = options.server_pid.and_then(proc_stats::cpu_seconds);
    let server_cpu_us_per_msg = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if delivered > 0 => Some((a - b) * 1e6 / delivered as f64),
        _ => None,
    };
    Ok(DevicesReport {
        devices: options.devices,
        rate_per_device: options.rate,
        subs: options.subs,
        size: options.size,
        connect_seconds,
        published,
        expected: want,
        delivered,
        delivered_per_sec: delivered as f64 / delivering_seconds,
        delivering_seconds,
        devices_done_seconds,
        elapsed_seconds: elapsed,
        latency_us: latencies.summary(),
        server_peak_rss_mb: options
            .server_pid
            .and_then(proc_stats::peak_rss_bytes)
            .map(|b| b as f64 / (1024.0 * 1024.0)),
        server_cpu_us_per_msg,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small device fan-in through a real server: every device connects, every
    /// message published reaches every subscriber, each timed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_device_message_is_delivered() {
        let bus = streambus::Bus::start(streambus::BusConfig::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = streambus::server::start(bus, listener);
        let options = DevicesOptions {
            target: Target::Grpc(server.url()),
            devices: 50,
            rate: 20.0,
            metrics: 3,
            subs: 2,
            size: 64,
            duration: Duration::from_millis(500),
            server_pid: Some(std::process::id()),
        };
        options.validate().unwrap();
        let report = run(&options).await.unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.published >= 50, "{report:?}");
        assert_eq!(report.delivered, report.published * 2);
        assert_eq!(report.expected, report.delivered);
        assert!(report.server_cpu_us_per_msg.is_some());
        // The rate's window ends at the last delivery, within the whole run.
        assert!(report.delivering_seconds > 0.0 && report.delivering_seconds <= report.elapsed_seconds);
        assert!(report.devices_done_seconds <= report.elapsed_seconds);
        let rate = report.delivered as f64 / report.delivering_seconds;
        assert!((report.delivered_per_sec - rate).abs() < 1e-6, "{report:?}");
        server.shutdown().await.unwrap();
    }

    /// Bad parameters are refused, each with its flag named.
    #[test]
    fn options_are_validated() {
        let ok = DevicesOptions {
            target: Target::Grpc("http://127.0.0.1:50051".into()),
            devices: 10,
            rate: 10.0,
            metrics: 1,
            subs: 1,
            size: 64,
            duration: Duration::from_secs(1),
            server_pid: None,
        };
        assert!(ok.validate().is_ok());
        for (bad, flag) in [
            (
                DevicesOptions {
                    devices: 0,
                    ..ok.clone()
                },
                "--devices",
            ),
            (
                DevicesOptions {
                    rate: 0.0,
                    ..ok.clone()
                },
                "--rate",
            ),
            (
                DevicesOptions {
                    metrics: 0,
                    ..ok.clone()
                },
                "--metrics",
            ),
            (DevicesOptions { size: 2, ..ok.clone() }, "--size"),
            (
                DevicesOptions {
                    duration: Duration::ZERO,
                    ..ok.clone()
                },
                "--duration",
            ),
            (
                DevicesOptions {
                    target: Target::Embedded,
                    ..ok.clone()
                },
                "--addr",
            ),
        ] {
            assert!(bad.validate().unwrap_err().contains(flag));
        }
    }
}
