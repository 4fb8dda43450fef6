//! Results of a run: throughput, latency percentiles, resource use; as a table for
//! people and as JSON for scripts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest and highest latencies recorded, in microseconds (1 µs .. 60 s).
const LATENCY_RANGE_US: (u64, u64) = (1, 60_000_000);

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Self {
        let (low, high) = LATENCY_RANGE_US;
        Latencies(Histogram::new_with_bounds(low, high, 3).expect("static bounds are valid"))
    }

    /// Records one latency; values beyond the range are clamped to it.
    pub fn record(&mut self, latency: Duration) {
        let (low, high) = LATENCY_RANGE_US;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(low, high);
        self.0.record(us).expect("clamped into range");
    }

    /// Adds every value of `other` (one histogram per connection, merged at the end).
    pub fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The latency at percentile `p` (0 to 100), in microseconds.
    pub fn at_percentile(&self, p: f64) -> u64 {
        self.0.value_at_percentile(p)
    }

    /// The percentiles reported.
    pub fn summary(&self) -> LatencySummary {
        let q = |p: f64| self.0.value_at_quantile(p);
        LatencySummary {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.0.max(),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload name (`echo`).
    pub workload: String,
    /// Server address.
    pub target: String,
    /// Connections (streams).
    pub conns: usize,
    /// Message size in bytes.
    pub size_bytes: usize,
    /// Messages answered.
    pub messages: u64,
    /// Wall time of the measured phase, seconds.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second, one direction.
    pub mb_per_sec: f64,
    /// Round-trip latency.
    pub latency_us: LatencySummary,
    /// Messages published, for runs that report deliveries (`pubsub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_messages: Option<u64>,
    /// The server's peak resident memory, when `--server-pid` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_bytes: Option<u64>,
    /// Server CPU per message answered, in microseconds, over the measured phase, when
    /// `--server-pid` was given (`echo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_msg: Option<f64>,
    /// The steady window's figures (`echo --steady-after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady: Option<SteadySummary>,
    /// CPU seconds this client used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_seconds: Option<f64>,
    /// Streams that failed (their error), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A run's steady window: from a while after the start to the end of sending.
#[derive(Debug, Clone, Serialize)]
pub struct SteadySummary {
    /// The window's length.
    pub seconds: f64,
    /// Messages answered per second in it.
    pub msgs_per_sec: f64,
    /// Server CPU per message answered in it, µs.
    pub server_cpu_us_per_msg: f64,
}

impl Report {
    /// Builds a report from the raw counts.
    pub fn new(
        workload: &str,
        target: &str,
        conns: usize,
        size: usize,
        latencies: &Latencies,
        elapsed: Duration,
    ) -> Self {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let messages = latencies.len();
        Report {
            workload: workload.to_owned(),
            target: target.to_owned(),
            conns,
            size_bytes: size,
            messages,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: (messages as f64 * size as f64) / seconds / 1e6,
            latency_us: latencies.summary(),
            published_messages: None,
            server_peak_rss_bytes: None,
            server_cpu_us_per_msg: None,
            steady: None,
            client_cpu_seconds: None,
            errors: Vec::new(),
        }
    }

    /// The same report counting `messages` (not one per latency sample): for runs whose
    /// latencies are per batch, like `pub`.
    pub fn counting(mut self, messages: u64) -> Self {
        self.messages = messages;
        self.msgs_per_sec = messages as f64 / self.seconds;
        self.mb_per_sec = messages as f64 * self.size_bytes as f64 / self.seconds / 1e6;
        self
    }

    /// The table printed for people.
    pub fn table(&self) -> String {
        let l = &self.latency_us;
        let mut out = format!(
            "{} against {}: {} conns × {} B\n\
             messages      {:>12}   in {:.2} s\n\
             throughput    {:>12.0} msgs/s   {:.1} MB/s\n\
             latency (µs)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            self.workload,
            self.target,
            self.conns,
            self.size_bytes,
            self.messages,
            self.seconds,
            self.msgs_per_sec,
            self.mb_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
        );
        if let Some(p) = self.published_messages {
            out += &format!("published     {p:>12}   (deliveries above: each subscriber counts)\n");
        }
        if let Some(rss) = self.server_peak_rss_bytes {
            out += &format!("server peak   {:.1} MB RSS\n", rss as f64 / 1e6);
        }
        if let Some(cpu) = self.server_cpu_us_per_msg {
            out += &format!("server cpu    {cpu:.1} µs per message\n");
        }
        if let Some(s) = &self.steady {
            out += &format!(
                "steady        {:.0} msgs/s, server cpu {:.1} µs per message (last {:.1} s)\n",
                s.msgs_per_sec, s.server_cpu_us_per_msg, s.seconds
            );
        }
        if let Some(cpu) = self.client_cpu_seconds {
            out += &format!("client cpu    {cpu:.2} s\n");
        }
        for e in &self.errors {
            out += &format!("error         {e}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merged histograms hold every value of both, and percentiles follow them.
    #[test]
    fn merging_keeps_every_value() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        for us in 1..=500 {
            a.record(Duration::from_micros(us));
        }
        for us in 501..=1000 {
            b.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.len(), 1000);
        let s = a.summary();
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((989..=991).contains(&s.p99), "{s:?}");
        assert_eq!(s.max, 1000);
    }

    /// Latencies outside the range are clamped, never an error or a panic.
    #[test]
    fn out_of_range_is_clamped() {
        let mut l = Latencies::new();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(3600));
        assert_eq!(l.len(), 2);
        assert!(l.summary().max >= 59_000_000);
    }

    /// The JSON carries the documented fields, and the optional ones only when known.
    #[test]
    fn json_format() {
        let mut l = Latencies::new();
        l.record(Duration::from_micros(100));
        let mut report = Report::new("echo", "127.0.0.1:1", 2, 1024, &l, Duration::from_secs(2));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["msgs_per_sec"], 0.5);
        assert_eq!(json["mb_per_sec"], 0.000512);
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert_eq!(json["latency_us"][p], 100, "{p}");
        }
        assert!(json.get("server_peak_rss_bytes").is_none());
        report.server_peak_rss_bytes = Some(96_000_000);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["server_peak_rss_bytes"], 96_000_000);
        assert!(report.table().contains("96.0 MB RSS"));
    }
}
