//! `streambus-bench`: load generator.
//!
//! ```text
//! streambus-bench echo --addr 127.0.0.1:50051 --conns 100 --size 1024 --duration 10
//! streambus-bench baseline-server --addr 127.0.0.1:50052
//! ```

use std::time::Duration;

use clap::{Parser, Subcommand};
use streambus_bench::{baseline, echo, proc_stats, report::Report};

/// Load generator for streambus and its baselines.
#[derive(Debug, Parser)]
#[command(name = "streambus-bench", version, about)]
struct Cli {
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
        /// Pid of the server, to report its peak RSS.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// A plain tonic echo server for the same proto, with no actors (the ceiling).
    BaselineServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50052")]
        addr: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Echo {
            addr,
            conns,
            size,
            duration,
            window,
            server_pid,
            json,
        } => {
            if !(duration.is_finite() && duration > 0.0 && duration <= 3600.0) {
                anyhow::bail!("--duration must be between 0 and 3600 seconds");
            }
            let options = echo::EchoOptions {
                url: format!("http://{addr}"),
                conns,
                size,
                duration: Duration::from_secs_f64(duration),
                window,
            };
            options.validate().map_err(anyhow::Error::msg)?;
            let run = echo::run(&options).await?;
            let mut report = Report::new("echo", &addr, conns, size, &run.latencies, run.elapsed);
            report.errors = run.errors;
            report.server_peak_rss_bytes = server_pid.and_then(proc_stats::peak_rss_bytes);
            report.client_cpu_seconds = proc_stats::own_cpu_seconds();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::BaselineServer { addr } => {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("baseline echo server listening on {}", listener.local_addr()?);
            baseline::serve(listener).await?;
            Ok(())
        }
    }
}
