//! The `churn` workload: waves of clients that connect, each open many subscriptions,
//! and all go away again; the server's resident memory is read after each wave and
//! after an idle pause, to see whether what a flood took is given back.
//!
//! A wave opens `conns` SDK clients at once, each subscribing `subs` distinct filters
//! (`churn.<client>.<n>`), then closes them all. The report lists the server's RSS
//! before the first wave, at each wave's height, after each wave, and after the idle
//! pause that follows the last one.

use std::time::Duration;

use serde::Serialize;
use streambus::SubscriptionOptions;
use streambus::client::{Client, ClientOptions};

/// What a churn run does.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// Server URL.
    pub url: String,
    /// Clients per wave, connected at once.
    pub conns: usize,
    /// Subscriptions per client.
    pub subs: usize,
    /// Waves.
    pub waves: usize,
    /// Pause after the last wave before the final reading.
    pub idle: Duration,
    /// The server's pid, to read its RSS.
    pub server_pid: u32,
}

/// The server's RSS over the run, in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Before the first wave.
    pub rss_before_mb: f64,
    /// With each wave's clients all connected and subscribed.
    pub rss_at_height_mb: Vec<f64>,
    /// After each wave's clients closed (once the server has ended their sessions).
    pub rss_after_wave_mb: Vec<f64>,
    /// After the idle pause.
    pub rss_after_idle_mb: f64,
    /// Subscriptions opened in all.
    pub subscriptions: u64,
    /// Seconds each wave took to connect and subscribe.
    pub wave_seconds: Vec<f64>,
}

fn rss_mb(pid: u32) -> f64 {
    crate::proc_stats::current_rss_bytes(pid).unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

/// Runs the waves.
pub async fn run(options: &ChurnOptions) -> anyhow::Result<ChurnReport> {
    let pid = options.server_pid;
    let mut report = ChurnReport {
        rss_before_mb: rss_mb(pid),
        rss_at_height_mb: Vec::new(),
        rss_after_wave_mb: Vec::new(),
        rss_after_idle_mb: 0.0,
        subscriptions: 0,
        wave_seconds: Vec::new(),
    };
    for wave in 0..options.waves {
        let started = std::time::Instant::now();
        let clients: Vec<_> = (0..options.conns)
            .map(|c| {
                let url = options.url.clone();
                let subs = options.subs;
                tokio::spawn(async move {
                    let name = format!("churn-{wave}-{c}");
                    let client = Client::connect_with(ClientOptions::new(url).name(name).reconnect(false)).await?;
                    let mut held = Vec::with_capacity(subs);
                    for n in 0..subs {
                        let filter = format!("churn.c{c}.s{n}");
                        held.push(client.subscribe(&filter, SubscriptionOptions::default()).await?);
                    }
                    anyhow::Ok((client, held))
                })
            })
            .collect();
        let mut connected = Vec::with_capacity(options.conns);
        for c in clients {
            connected.push(c.await??);
        }
        report.wave_seconds.push(started.elapsed().as_secs_f64());
        report.subscriptions += (options.conns * options.subs) as u64;
        report.rss_at_height_mb.push(rss_mb(pid));
        for (client, held) in connected {
            drop(held);
            client.close();
        }
        // The server ends the sessions once their streams close.
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.rss_after_wave_mb.push(rss_mb(pid));
    }
    tokio::time::sleep(options.idle).await;
    report.rss_after_idle_mb = rss_mb(pid);
    Ok(report)
}
