//! The article's workload: N connections, each one `BidirectionalChat` stream, closed
//! loop with `window` messages in flight; every echo is timed from its send.
//!
//! With a `rate`, each stream also waits for its turn: the streams share the rate
//! evenly, their turns spread over one period, so the same load can be offered by 100
//! streams or by 10,000 and the server's cost per echo compared between the two.
//!
//! With `steady_after`, the server's CPU and the echoes answered are also counted over
//! a steady window alone, from that long after the start to the deadline: opening and
//! closing the streams (a session, a subscription and a topic each on the bus) fall
//! outside it, so the window gives the cost per message, the whole run the cost per
//! message and stream together.
//!
//! The send time travels in the message: the first 20 characters of the content are the
//! nanoseconds since the run started, the rest is padding up to `size` bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use streambus::proto::stream::Message;
use streambus::proto::stream::chat_service_client::ChatServiceClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::proc_stats;
use crate::report::Latencies;

/// Width of the send timestamp at the start of each message.
const STAMP_LEN: usize = 20;
/// The prefix the echo service adds.
const ECHO_PREFIX: &str = "echo: ";

/// What to run.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Server URL, e.g. `http://127.0.0.1:50051`.
    pub url: String,
    /// Connections, one stream each.
    pub conns: usize,
    /// Message size in bytes (at least the 20-byte timestamp).
    pub size: usize,
    /// How long to keep sending.
    pub duration: Duration,
    /// Messages in flight per stream.
    pub window: usize,
    /// Echoes per second across all streams, paced; `None` sends as fast as the echoes
    /// come back.
    pub rate: Option<f64>,
    /// The server's pid, to measure the CPU it spends on the streams (from the first
    /// stream opening to the last echo: the connections' set-up is left out).
    pub server_pid: Option<u32>,
    /// Where the steady window starts, after the run's start (it ends at the deadline).
    pub steady_after: Option<Duration>,
}

impl EchoOptions {
    /// Checks the options before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        if self.conns == 0 {
            return Err("--conns must be at least 1".into());
        }
        if self.window == 0 {
            return Err("--window must be at least 1".into());
        }
        if self.size < STAMP_LEN {
            return Err(format!(
                "--size must be at least {STAMP_LEN} bytes (the send timestamp)"
            ));
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if self.steady_after.is_some_and(|after| after >= self.duration) {
            return Err("--steady-after must be shorter than --duration".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) {
                return Err("--rate must be between 0 and 10000000 messages per second".into());
            }
            if self.window != 1 {
                return Err("--rate paces one message in flight per stream: leave --window at 1".into());
            }
        }
        Ok(())
    }
}

/// A message whose content is `size` bytes and starts with `sent_ns`.
pub fn stamped(sent_ns: u128, size: usize) -> String {
    let mut content = format!("{sent_ns:0STAMP_LEN$}");
    content.truncate(STAMP_LEN);
    content.extend(std::iter::repeat_n('x', size.saturating_sub(STAMP_LEN)));
    content
}

/// The send time stamped into an echo's content.
pub fn stamp_of(echo: &str) -> Option<u128> {
    echo.strip_prefix(ECHO_PREFIX)?.get(..STAMP_LEN)?.parse().ok()
}

/// The outcome of a run.
#[derive(Debug)]
pub struct EchoRun {
    /// Round-trip latency of every echo.
    pub latencies: Latencies,
    /// From the first send to the last echo.
    pub elapsed: Duration,
    /// Streams that failed.
    pub errors: Vec<String>,
    /// CPU seconds the server spent over `elapsed`, when its pid was given.
    pub server_cpu_seconds: Option<f64>,
    /// The steady window, when asked for and the server's pid was given.
    pub steady: Option<Steady>,
}

/// What the steady window measured.
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    /// The window's length.
    pub seconds: f64,
    /// Echoes answered in it.
    pub echoes: u64,
    /// CPU seconds the server spent in it.
    pub server_cpu_seconds: f64,
}

impl Steady {
    /// Echoes per second in the window.
    pub fn msgs_per_sec(&self) -> f64 {
        self.echoes as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Server CPU per echo in the window, µs.
    pub fn server_cpu_us_per_msg(&self) -> f64 {
        self.server_cpu_seconds * 1e6 / self.echoes.max(1) as f64
    }
}

/// Samples the server's CPU and the echoes answered at `from` and at `to`.
async fn steady_window(pid: u32, answered: Arc<AtomicU64>, from: Instant, to: Instant) -> Option<Steady> {
    tokio::time::sleep_until(from).await;
    let (cpu_from, echoes_from, at) = (
        proc_stats::cpu_seconds(pid)?,
        answered.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep_until(to).await;
    Some(Steady {
        seconds: at.elapsed().as_secs_f64(),
        echoes: answered.load(Ordering::Relaxed) - echoes_from,
        server_cpu_seconds: proc_stats::cpu_seconds(pid)? - cpu_from,
    })
}

/// Runs the workload.
pub async fn run(options: &EchoOptions) -> anyhow::Result<EchoRun> {
    let endpoint = Endpoint::from_shared(options.url.clone())?.tcp_nodelay(true);
    let mut clients = Vec::with_capacity(options.conns);
    for _ in 0..options.conns {
        // One TCP connection per stream, as the article's 100 connections.
        clients.push(ChatServiceClient::new(endpoint.connect().await?));
    }
    let cpu_before = options.server_pid.and_then(proc_stats::cpu_seconds);
    let start = Instant::now();
    let deadline = start + options.duration;
    let answered = Arc::new(AtomicU64::new(0));
    let steady = options
        .server_pid
        .zip(options.steady_after)
        .map(|(pid, after)| tokio::spawn(steady_window(pid, answered.clone(), start + after, deadline)));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let pace = options.rate.map(|rate| pace(rate, options.conns, i));
            let shape = Shape {
                size: options.size,
                window: options.window,
                pace,
            };
            tokio::spawn(stream(client, start, deadline, shape, answered.clone()))
        })
        .collect();
    let mut latencies = Latencies::new();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(l) => latencies.merge(&l),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let elapsed = start.elapsed();
    let cpu_after = options.server_pid.and_then(proc_stats::cpu_seconds);
    let steady = match steady {
        Some(window) => window.await?,
        None => None,
    };
    Ok(EchoRun {
        latencies,
        elapsed,
        errors,
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(before, after)| after - before),
        steady,
    })
}

/// Stream `i` of `conns` sharing `rate` echoes per second: its period, and its first
/// turn's offset within that period (the streams' turns spread evenly over it).
fn pace(rate: f64, conns: usize, i: usize) -> (Duration, Duration) {
    let period = Duration::from_secs_f64(conns as f64 / rate);
    (period, period.mul_f64(i as f64 / conns as f64))
}

/// What one stream sends.
struct Shape {
    /// Message size.
    size: usize,
    /// Messages in flight.
    window: usize,
    /// Its turns, if paced: (period, first offset).
    pace: Option<(Duration, Duration)>,
}

/// One stream: keeps `window` messages in flight until `deadline`, then drains, and
/// counts each echo in `answered`. With a `pace` (period, first offset), each send
/// also waits for the stream's next turn; a late echo delays the turns after it rather
/// than bunching them.
async fn stream(
    mut client: ChatServiceClient<tonic::transport::Channel>,
    start: Instant,
    deadline: Instant,
    shape: Shape,
    answered: Arc<AtomicU64>,
) -> anyhow::Result<Latencies> {
    let Shape { size, window, pace } = shape;
    let mut turns = pace.map(|(period, offset)| {
        let mut turns = tokio::time::interval_at(start + offset, period);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        turns
    });
    let (tx, rx) = mpsc::channel(window);
    let message = |start: Instant| Message {
        content: stamped(start.elapsed().as_nanos(), size),
        timestamp: 0,
    };
    for _ in 0..window {
        if let Some(turns) = &mut turns {
            turns.tick().await;
        }
        tx.send(message(start)).await?;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    crate::credentials::auth().apply(&mut request);
    let mut echoes = client.bidirectional_chat(request).await?.into_inner();
    let mut tx = Some(tx);
    let mut latencies = Latencies::new();
    loop {
        let echo = match echoes.message().await {
            Ok(Some(echo)) => echo,
            Ok(None) => break,
            // Servers written like the article's end a stream by returning the io.EOF
            // their Recv gave after our CloseSend: grpc-go sends that as UNKNOWN "EOF".
            Err(status) if tx.is_none() && status.code() == tonic::Code::Unknown && status.message() == "EOF" => break,
            Err(status) => return Err(status.into()),
        };
        answered.fetch_add(1, Ordering::Relaxed);
        let now = start.elapsed().as_nanos();
        let sent = stamp_of(&echo.content).ok_or_else(|| anyhow::anyhow!("unexpected echo {:?}", echo.content))?;
        latencies.record(Duration::from_nanos(
            u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX),
        ));
        if Instant::now() >= deadline {
            // Dropping the sender ends the request stream; the rest drains.
            tx = None;
        }
        if let Some(turns) = &mut turns
            && tx.is_some()
        {
            turns.tick().await;
            if Instant::now() >= deadline {
                tx = None;
            }
        }
        if let Some(tx) = &tx {
            tx.send(message(start)).await?;
        }
    }
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamped message has the requested size and its echo gives the stamp back.
    #[test]
    fn stamps_round_trip() {
        let m = stamped(123_456_789, 1024);
        assert_eq!(m.len(), 1024);
        assert_eq!(stamp_of(&format!("echo: {m}")), Some(123_456_789));
        assert_eq!(stamp_of("echo: short"), None);
        assert_eq!(stamp_of(&m), None, "not an echo");
    }

    /// Bad parameters are refused before anything connects.
    #[test]
    fn options_are_validated() {
        let ok = EchoOptions {
            url: "http://127.0.0.1:1".into(),
            conns: 1,
            size: 1024,
            duration: Duration::from_secs(1),
            server_pid: None,
            window: 1,
            rate: None,
            steady_after: None,
        };
        assert!(ok.validate().is_ok());
        assert!(
            EchoOptions {
                rate: Some(1000.0),
                ..ok.clone()
            }
            .validate()
            .is_ok()
        );
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                EchoOptions {
                    rate: Some(rate),
                    ..ok.clone()
                }
                .validate()
                .is_err(),
                "{rate}"
            );
        }
        assert!(
            EchoOptions {
                rate: Some(1000.0),
                window: 2,
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(EchoOptions { conns: 0, ..ok.clone() }.validate().is_err());
        assert!(
            EchoOptions {
                window: 0,
                ..ok.clone()
            }
            .validate()
            .is_err()
        );
        assert!(EchoOptions { size: 8, ..ok.clone() }.validate().is_err());
        assert!(
            EchoOptions {
                steady_after: Some(Duration::from_secs(1)),
                ..ok.clone()
            }
            .validate()
            .is_err(),
            "the window starts before the deadline"
        );
        assert!(
            EchoOptions {
                duration: Duration::ZERO,
                ..ok
            }
            .validate()
            .is_err()
        );
    }

    /// A short run against a real bus and against the baseline (with tonic's and with the
    /// bus's HTTP/2 settings): every stream finishes,
    /// every echo is timed, and nothing fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_against_the_bus_and_the_baseline() {
        let bus = streambus::Bus::start(streambus::BusConfig::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = streambus::server::start(bus, listener);
        let mut urls = vec![server.url()];
        for bus_transport in [false, true] {
            let baseline = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", baseline.local_addr().unwrap()));
            tokio::spawn(crate::baseline::serve(baseline, bus_transport));
        }
        for url in urls {
            let options = EchoOptions {
                url,
                conns: 3,
                size: 64,
                duration: Duration::from_millis(200),
                window: 4,
                rate: None,
                // This process serves them all.
                server_pid: Some(std::process::id()),
                steady_after: Some(Duration::from_millis(100)),
            };
            let run = run(&options).await.unwrap();
            assert!(run.errors.is_empty(), "{:?}", run.errors);
            assert!(
                run.server_cpu_seconds.is_some_and(|s| s > 0.0),
                "the server's CPU is measured"
            );
            assert!(run.latencies.len() >= 12, "every stream answers its window at least");
            // The steady window is the second half of the sending: some echoes, fewer
            // than the whole run's, its CPU within the whole run's.
            let steady = run.steady.expect("a steady window");
            assert!(steady.echoes > 0 && steady.echoes < run.latencies.len(), "{steady:?}");
            assert!((0.05..0.2).contains(&steady.seconds), "{steady:?}");
            assert!(
                steady.server_cpu_seconds <= run.server_cpu_seconds.unwrap(),
                "{steady:?}"
            );
        }
        server.shutdown().await.unwrap();
    }

    /// The streams share the rate: each stream's period, and first turns spread over it.
    #[test]
    fn pace_shares_the_rate() {
        assert_eq!(pace(20_000.0, 10_000, 0), (Duration::from_millis(500), Duration::ZERO));
        assert_eq!(
            pace(20_000.0, 10_000, 5_000),
            (Duration::from_millis(500), Duration::from_millis(250))
        );
        assert_eq!(pace(100.0, 1, 0).0, Duration::from_millis(10));
    }

    /// A paced run sends at its rate, not as fast as the echoes come back: 4 streams
    /// sharing 40 echoes a second answer a handful each in half a second, where an
    /// unpaced run answers thousands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_paces_the_streams() {
        let bus = streambus::Bus::start(streambus::BusConfig::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = streambus::server::start(bus, listener);
        let options = EchoOptions {
            url: server.url(),
            conns: 4,
            size: 64,
            duration: Duration::from_millis(500),
            window: 1,
            rate: Some(40.0),
            server_pid: None,
            steady_after: None,
        };
        let run = run(&options).await.unwrap();
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        // Every stream's turns are 100 ms apart: at most 6 each in 500 ms (a late turn
        // delays the next, never adds one), and the first turn of each is within the run.
        let echoes = run.latencies.len();
        assert!((4..=24).contains(&echoes), "{echoes} echoes");
        server.shutdown().await.unwrap();
    }
}
