//! `streambus-bench`: load generator.
//!
//! ```text
//! streambus-bench echo --addr 127.0.0.1:50051 --conns 100 --size 1024 --duration 10
//! streambus-bench pub --addr 127.0.0.1:50051 --conns 4 --size 1024 --msgs 1000000
//! streambus-bench sub --addr 127.0.0.1:50051 --conns 2 --msgs 1000000
//! streambus-bench pubsub --pubs 10 --subs 1 --size 1024 --duration 10     # fan-in
//! streambus-bench pubsub --pubs 1 --subs 10 --embedded --duration 5        # fan-out, in-process
//! streambus-bench pubsub --target nats --addr 127.0.0.1:4222 --pubs 10 --subs 1 --duration 10
//! streambus-bench baseline-server --addr 127.0.0.1:50052
//! streambus-bench baseline-server --addr 127.0.0.1:50052 --bus-transport   # the bus's HTTP/2 settings
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use streambus::types::OverflowPolicy;
use streambus_bench::pubsub::{self, Progress, PubSubOptions, Target, Workload};
use streambus_bench::report::{Report, SteadySummary};
use streambus_bench::{baseline, churn, devices, echo, plot, proc_stats, stalled};

/// Load generator for streambus and its baselines.
#[derive(Debug, Parser)]
#[command(name = "streambus-bench", version, about)]
struct Cli {
    /// Bearer token every streambus connection presents (a bus with `[auth]` on).
    #[arg(long, global = true, env = "STREAMBUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The article's workload: `stream.ChatService/BidirectionalChat` echo.
    Echo {
        /// Server address (host:port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// Connections, one stream each.
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Messages in flight per stream (closed loop).
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Echoes per second across all streams, paced evenly (each stream waits for
        /// its turn); without it, each stream sends as soon as its echo is back.
        #[arg(long)]
        rate: Option<f64>,
        /// Also measure the server's CPU per echo and the rate over a steady window,
        /// from this many seconds after the start to the end of sending (opening and
        /// closing the streams left out); needs `--server-pid`.
        #[arg(long)]
        steady_after: Option<f64>,
        #[command(flatten)]
        output: Output,
    },
    /// Publishers only: `--conns` publishers.
    Pub(PubSubArgs),
    /// Subscribers only (on `bench.>`): `--conns` subscribers; run a `pub` elsewhere.
    Sub(PubSubArgs),
    /// Publishers and subscribers in one run: `--pubs` N → `--subs` M.
    Pubsub(PubSubArgs),
    /// Waves of clients, each with many subscriptions, connecting and leaving; reports
    /// the server's RSS after each wave and after idling.
    Churn {
        /// Server address (host:port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// Clients per wave.
        #[arg(long, default_value_t = 500)]
        conns: usize,
        /// Subscriptions per client.
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Waves.
        #[arg(long, default_value_t = 4)]
        waves: usize,
        /// Seconds to idle after the last wave before the final reading.
        #[arg(long, default_value_t = 10.0)]
        idle: f64,
        /// Pid of the server, whose RSS is read.
        #[arg(long)]
        server_pid: u32,
    },
    /// IoT fan-in: N device streams connect at once (timed), each publishes R msgs/s to
    /// `sensors.<device>.<metric>`, M subscribers take `sensors.>`; reports the connect
    /// storm, delivered rate, latency, server RSS and server CPU per message (JSON).
    Devices {
        /// Server address (host:port); default 127.0.0.1:50051, or :4222 for nats.
        #[arg(long)]
        addr: Option<String>,
        /// The kind of server at `--addr`.
        #[arg(long, value_enum, default_value = "streambus")]
        target: TargetKind,
        /// Device streams.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Messages per second per device.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Topics per device.
        #[arg(long, default_value_t = 4)]
        metrics: usize,
        /// Subscribers on `sensors.>`.
        #[arg(long, default_value_t = 1)]
        subs: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Pid of the server, whose RSS and CPU are read.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// One subscriber that never reads, on `load.>` over many topics, and many
    /// publishers at full speed; reports the server's RSS (peak and at the end) and
    /// what the publishers got through.
    Stalled {
        /// Server address (host:port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// The stalled subscription's overflow policy: block, drop_oldest, drop_newest
        /// or disconnect.
        #[arg(long, value_parser = parse_policy)]
        policy: OverflowPolicy,
        /// The stalled subscription's buffer bound in bytes.
        #[arg(long, default_value_t = 512 * 1024)]
        buffer_bytes: usize,
        /// Publishing clients.
        #[arg(long, default_value_t = 50)]
        pubs: usize,
        /// Topics under `load.>`.
        #[arg(long, default_value_t = 200)]
        topics: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Pid of the server, whose RSS is read.
        #[arg(long)]
        server_pid: u32,
    },
    /// A plain tonic echo server for the same proto, with no actors (the ceiling).
    BaselineServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50052")]
        addr: String,
        /// Use `streambus serve`'s HTTP/2 settings (windows, keepalive) instead of
        /// tonic's defaults, so that a comparison isolates the bus's actors.
        #[arg(long)]
        bus_transport: bool,
        /// Start each stream's codec buffers at the bus's 1 KiB instead of tonic's own
        /// 8 KiB (see `streambus::codec`).
        #[arg(long)]
        lean_buffers: bool,
    },
}

/// What the pub/sub workloads talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// A streambus server over gRPC.
    Streambus,
    /// A nats-server.
    Nats,
}

/// Parameters of `pub`, `sub` and `pubsub`.
#[derive(Debug, Args)]
struct PubSubArgs {
    /// Server address (host:port); default 127.0.0.1:50051, or :4222 for nats.
    #[arg(long)]
    addr: Option<String>,
    /// The kind of server at `--addr`.
    #[arg(long, value_enum, default_value = "streambus")]
    target: TargetKind,
    /// Run against a bus inside this process instead of a server.
    #[arg(long, conflicts_with_all = ["addr", "target"])]
    embedded: bool,
    /// Subscribers connect here instead of `--addr` (a server of the same kind): for a
    /// fan-in across the nodes of a cluster.
    #[arg(long, conflicts_with = "embedded")]
    sub_addr: Option<String>,
    /// Connections of `pub` (publishers) or `sub` (subscribers).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Publishers of `pubsub`.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Subscribers of `pubsub`.
    #[arg(long, default_value_t = 1)]
    subs: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seconds of publishing.
    #[arg(long)]
    duration: Option<f64>,
    /// Messages to publish in all (`sub`: to receive, each).
    #[arg(long)]
    msgs: Option<u64>,
    /// Open loop: messages per second across all publishers (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Subjects `bench.0` .. `bench.<N-1>`, published round robin.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Messages per publish call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[command(flatten)]
    output: Output,
}

/// How results are reported.
#[derive(Debug, Args)]
struct Output {
    /// Pid of the server, to report its peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the latency distribution and throughput over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

impl Output {
    fn emit(
        &self,
        mut report: Report,
        latencies: &streambus_bench::report::Latencies,
        timeline: &[(f64, u64)],
    ) -> anyhow::Result<()> {
        report.server_peak_rss_bytes = self.server_pid.and_then(proc_stats::peak_rss_bytes);
        report.client_cpu_seconds = proc_stats::own_cpu_seconds();
        if let Some(file) = &self.plot {
            let title = format!(
                "{} · {} conns × {} B · {}",
                report.workload, report.conns, report.size_bytes, report.target
            );
            plot::write_svg(file, &title, latencies, timeline)?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.table());
        }
        Ok(())
    }
}

fn seconds(value: Option<f64>) -> anyhow::Result<Option<Duration>> {
    named_seconds("--duration", value)
}

/// [`seconds`] for the option `name`, which its error names.
fn named_seconds(name: &str, value: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(_) => anyhow::bail!("{name} must be between 0 and 3600 seconds"),
    }
}

/// A server over the network: its target and how reports name it. Without `addr`, the
/// kind's usual port on loopback.
fn network_target(kind: TargetKind, addr: Option<&str>) -> (Target, String) {
    let addr = addr
        .unwrap_or(match kind {
            TargetKind::Streambus => "127.0.0.1:50051",
            TargetKind::Nats => "127.0.0.1:4222",
        })
        .to_owned();
    match kind {
        TargetKind::Streambus => (Target::Grpc(format!("http://{addr}")), addr),
        TargetKind::Nats => (Target::Nats(format!("nats://{addr}")), format!("nats {addr}")),
    }
}

fn pubsub_options(workload: Workload, args: &PubSubArgs) -> anyhow::Result<(PubSubOptions, String)> {
    let (target, shown) = if args.embedded {
        (Target::Embedded, "embedded".to_owned())
    } else {
        network_target(args.target, args.addr.as_deref())
    };
    let (pubs, subs) = match workload {
        Workload::Pub => (args.conns, 0),
        Workload::Sub => (0, args.conns),
        Workload::PubSub => (args.pubs, args.subs),
    };
    let sub_target = args
        .sub_addr
        .as_deref()
        .map(|addr| network_target(args.target, Some(addr)).0);
    let options = PubSubOptions {
        workload,
        target,
        sub_target,
        pubs,
        subs,
        size: args.size,
        duration: seconds(args.duration)?,
        msgs: args.msgs,
        rate: args.rate,
        topics: args.topics,
        batch: args.batch,
    };
    options.validate().map_err(anyhow::Error::msg)?;
    Ok((options, shown))
}

/// A progress bar on a terminal (hidden otherwise), fed from the run's counters.
fn progress_bar(options: &PubSubOptions, progress: Arc<Progress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let by_count = options.msgs.is_some();
    let total = options
        .msgs
        .unwrap_or_else(|| options.duration.map_or(0, |d| d.as_millis() as u64));
    let bar = ProgressBar::new(total);
    let template = if by_count {
        "{elapsed_precise} [{bar:40}] {pos}/{len} msgs  {msg}"
    } else {
        "{elapsed_precise} [{bar:40}] {msg}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    let workload = options.workload;
    let (b, start) = (bar.clone(), std::time::Instant::now());
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let (p, r) = (
                progress.published.load(Ordering::Relaxed),
                progress.received.load(Ordering::Relaxed),
            );
            b.set_position(match (by_count, workload) {
                (true, Workload::Sub) => r,
                (true, _) => p,
                (false, _) => start.elapsed().as_millis() as u64,
            });
            b.set_message(format!("published {p}  received {r}"));
        }
    });
    (bar, ticker)
}

async fn run_pubsub(workload: Workload, args: PubSubArgs) -> anyhow::Result<()> {
    let (options, shown) = pubsub_options(workload, &args)?;
    let progress = Arc::new(Progress::default());
    let (bar, ticker) = progress_bar(&options, progress.clone());
    let run = pubsub::run(&options, progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let run = run?;
    let name = match workload {
        Workload::Pub => "pub",
        Workload::Sub => "sub",
        Workload::PubSub => "pubsub",
    };
    let conns = options.pubs + options.subs;
    let (messages, latencies) = match workload {
        Workload::Pub => (run.published, &run.publish_latencies),
        _ => (run.received, &run.latencies),
    };
    let mut report = Report::new(name, &shown, conns, options.size, latencies, run.elapsed).counting(messages);
    report.published_messages = (workload == Workload::PubSub).then_some(run.published);
    report.errors = run.errors.clone();
    args.output.emit(report, latencies, &run.timeline)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(token) = cli.token {
        streambus_bench::credentials::set_token(token);
    }
    match cli.command {
        Command::Echo {
            addr,
            conns,
            size,
            duration,
            window,
            rate,
            steady_after,
            output,
        } => {
            let options = echo::EchoOptions {
                url: format!("http://{addr}"),
                conns,
                size,
                duration: seconds(Some(duration))?.expect("given"),
                window,
                rate,
                server_pid: output.server_pid,
                steady_after: named_seconds("--steady-after", steady_after)?,
            };
            options.validate().map_err(anyhow::Error::msg)?;
            let run = echo::run(&options).await?;
            let mut report = Report::new("echo", &addr, conns, size, &run.latencies, run.elapsed);
            report.errors = run.errors;
            report.server_cpu_us_per_msg = run
                .server_cpu_seconds
                .map(|cpu| cpu * 1e6 / report.messages.max(1) as f64);
            report.steady = run.steady.map(|s| SteadySummary {
                seconds: s.seconds,
                msgs_per_sec: s.msgs_per_sec(),
                server_cpu_us_per_msg: s.server_cpu_us_per_msg(),
            });
            output.emit(report, &run.latencies, &[])
        }
        Command::Churn {
            addr,
            conns,
            subs,
            waves,
            idle,
            server_pid,
        } => {
            let options = churn::ChurnOptions {
                url: format!("http://{addr}"),
                conns,
                subs,
                waves,
                idle: named_seconds("--idle", Some(idle))?.expect("given"),
                server_pid,
            };
            let report = churn::run(&options).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Devices {
            addr,
            target,
            devices,
            rate,
            metrics,
            subs,
            size,
            duration,
            server_pid,
        } => {
            let options = devices::DevicesOptions {
                target: network_target(target, addr.as_deref()).0,
                devices,
                rate,
                metrics,
                subs,
                size,
                duration: seconds(Some(duration))?.expect("given"),
                server_pid,
            };
            options.validate().map_err(anyhow::Error::msg)?;
            let report = devices::run(&options).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Stalled {
            addr,
            policy,
            buffer_bytes,
            pubs,
            topics,
            size,
            duration,
            server_pid,
        } => {
            let options = stalled::StalledOptions {
                url: format!("http://{addr}"),
                policy,
                buffer_bytes,
                publishers: pubs,
                topics,
                size,
                duration: seconds(Some(duration))?.expect("given"),
                server_pid,
            };
            let report = stalled::run(&options).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Pub(args) => run_pubsub(Workload::Pub, args).await,
        Command::Sub(args) => run_pubsub(Workload::Sub, args).await,
        Command::Pubsub(args) => run_pubsub(Workload::PubSub, args).await,
        Command::BaselineServer {
            addr,
            bus_transport,
            lean_buffers,
        } => {
            // Generated services share the bus's codec: tonic as it comes unless asked.
            streambus::codec::set_initial_buffer_bytes(if lean_buffers {
                streambus::codec::INITIAL_BUFFER_BYTES
            } else {
                streambus::codec::TONIC_BUFFER_BYTES
            });
            // Like for like: the bus's listener (deep accept queue) with its transport.
            let listener = if bus_transport {
                streambus::server::bind(addr.parse()?)?
            } else {
                tokio::net::TcpListener::bind(&addr).await?
            };
            println!("baseline echo server listening on {}", listener.local_addr()?);
            baseline::serve(listener, bus_transport).await?;
            Ok(())
        }
    }
}

/// An overflow policy by its config name.
fn parse_policy(name: &str) -> Result<OverflowPolicy, String> {
    [
        OverflowPolicy::Block,
        OverflowPolicy::DropOldest,
        OverflowPolicy::DropNewest,
        OverflowPolicy::Disconnect,
    ]
    .into_iter()
    .find(|p| p.as_str() == name)
    .ok_or_else(|| format!("unknown policy {name:?}: block, drop_oldest, drop_newest or disconnect"))
}
