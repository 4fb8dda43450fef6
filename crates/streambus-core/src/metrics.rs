//! Bus-wide counters for what no single actor sees whole: messages in and out, refusals
//! by error code, drops and gaps by overflow policy, and the publish→deliver latency.
//!
//! One [`BusMetrics`] is made by [`crate::Bus::start`] and shared by the router (publish
//! counts), every session handle (refusals) and every subscriber buffer (deliveries,
//! drops, gaps, latency). The hot path pays a few relaxed atomic additions per *batch*
//! (a publish batch of one topic, a delivery run popped by a consumer), never a lock
//! and never per message. Everything else the admin plane shows (sessions, topics,
//! mailboxes, sinks) is read from the actors' own snapshots at scrape time.
//!
//! # Invariants
//!
//! - Counters only grow; [`BusMetrics::snapshot`] reads each one once, so two counters
//!   in one snapshot may be a few batches apart, never torn within one.
//! - A drop is counted once, by the buffer that dropped it, under the policy of that
//!   buffer's subscription (the same count as its `dropped` snapshot field).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use streambus_types::{ErrorCode, OverflowPolicy};

/// Upper bounds of the latency histogram's buckets, in seconds (the last bucket,
/// `+Inf`, is implicit). From 50 µs, where a loopback delivery lands, to 10 s, past
/// which a subscriber is lagging rather than slow.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every overflow policy, in the order of the per-policy counters.
const POLICIES: [OverflowPolicy; 4] = [
    OverflowPolicy::Block,
    OverflowPolicy::DropOldest,
    OverflowPolicy::DropNewest,
    OverflowPolicy::Disconnect,
];

/// The bus-wide counters (see the module doc).
#[derive(Debug, Default)]
pub struct BusMetrics {
    /// Messages admitted to topics, bus-wide (the sum of every session's count, including
    /// sessions that have ended).
    published_messages: AtomicU64,
    /// Payload and header bytes of those messages.
    published_bytes: AtomicU64,
    /// Deliveries taken by consumers from their buffers (retained replays included).
    delivered_messages: AtomicU64,
    /// Payload and header bytes of those deliveries.
    delivered_bytes: AtomicU64,
    /// Requests refused, by [`ErrorCode`] in [`ErrorCode::ALL`] order.
    refused: [AtomicU64; ErrorCode::ALL.len()],
    /// Deliveries dropped by subscriber buffers, by policy in `POLICIES` order.
    dropped: [AtomicU64; POLICIES.len()],
    /// Gap events handed to consumers, by policy in `POLICIES` order.
    gaps: [AtomicU64; POLICIES.len()],
    /// Publish→deliver latency of live (not retained) deliveries.
    latency: Histogram,
}

/// A fixed-bucket histogram of seconds, filled with relaxed atomics.
#[derive(Debug, Default)]
struct Histogram {
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    /// Sum of every observation, in nanoseconds.
    sum_ns: AtomicU64,
}

/// What [`BusMetrics`] holds at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSnapshot {
    /// Messages admitted to topics, bus-wide.
    pub published_messages: u64,
    /// Payload and header bytes published.
    pub published_bytes: u64,
    /// Deliveries taken by consumers.
    pub delivered_messages: u64,
    /// Payload and header bytes delivered.
    pub delivered_bytes: u64,
    /// Refusals by error code, every code listed.
    pub refused: Vec<(ErrorCode, u64)>,
    /// Deliveries dropped by subscriber buffers, by overflow policy, every policy listed.
    pub dropped: Vec<(OverflowPolicy, u64)>,
    /// Gap events handed to consumers, by overflow policy, every policy listed.
    pub gaps: Vec<(OverflowPolicy, u64)>,
    /// Publish→deliver latency.
    pub latency: HistogramSnapshot,
}

/// A histogram at one moment, in Prometheus's shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, cumulative, ending with
    /// `f64::INFINITY` (whose count is `count`).
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

/// The index of `policy` in the per-policy counters.
fn policy_index(policy: OverflowPolicy) -> usize {
    POLICIES.iter().position(|p| *p == policy).unwrap_or(0)
}

/// Nanoseconds since the Unix epoch, as [`streambus_types::Delivery::timestamp_ns`].
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl BusMetrics {
    /// Counts `messages` admitted to a topic, `bytes` in all.
    pub(crate) fn published(&self, messages: usize, bytes: usize) {
        self.published_messages.fetch_add(messages as u64, Ordering::Relaxed);
        self.published_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a run of `messages` deliveries (`bytes` in all) taken by a consumer; a
    /// live run's latency is observed once per delivery, from the publish time of its
    /// first (a run is one topic's consecutive deliveries, published together).
    pub(crate) fn delivered(&self, messages: usize, bytes: usize, first_timestamp_ns: Option<u64>) {
        self.delivered_messages.fetch_add(messages as u64, Ordering::Relaxed);
        self.delivered_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(published) = first_timestamp_ns {
            let latency_ns = now_ns().saturating_sub(published);
            self.latency.observe(latency_ns, messages as u64);
        }
    }

    /// Counts a request refused with `code` (a publish, a subscribe, a session).
    pub fn refused(&self, code: ErrorCode) {
        let i = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` deliveries dropped by a buffer under `policy`.
    pub(crate) fn dropped(&self, policy: OverflowPolicy, n: u64) {
        self.dropped[policy_index(policy)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a gap event handed to a consumer of a buffer under `policy`.
    pub(crate) fn gap(&self, policy: OverflowPolicy) {
        self.gaps[policy_index(policy)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, read once.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            published_messages: load(&self.published_messages),
            published_bytes: load(&self.published_bytes),
            delivered_messages: load(&self.delivered_messages),
            delivered_bytes: load(&self.delivered_bytes),
            refused: ErrorCode::ALL
                .iter()
                .zip(&self.refused)
                .map(|(c, n)| (*c, load(n)))
                .collect(),
            dropped: POLICIES.iter().zip(&self.dropped).map(|(p, n)| (*p, load(n))).collect(),
            gaps: POLICIES.iter().zip(&self.gaps).map(|(p, n)| (*p, load(n))).collect(),
            latency: self.latency.snapshot(),
        }
    }
}

impl Histogram {
    /// Adds `n` observations of `ns` nanoseconds.
    fn observe(&self, ns: u64, n: u64) {
        let seconds = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS_SECONDS.partition_point(|bound| *bound < seconds);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let bounds = LATENCY_BUCKETS_SECONDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations land in the first bucket whose bound is at or above them; the
    /// snapshot is cumulative and ends with +Inf holding the count.
    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(40_000, 1); // 40 µs: first bucket
        h.observe(50_000, 2); // exactly 50 µs: still the first
        h.observe(3_000_000, 1); // 3 ms: the 5 ms bucket
        h.observe(60_000_000_000, 4); // 60 s: +Inf
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.000_05, 3));
        let five_ms = s.buckets.iter().find(|(b, _)| *b == 0.005).unwrap();
        assert_eq!(five_ms.1, 4);
        assert_eq!(s.buckets[s.buckets.len() - 2].1, 4);
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 8));
        assert_eq!(s.count, 8);
        assert!((s.sum_seconds - (0.00004 + 0.0001 + 0.003 + 240.0)).abs() < 1e-9);
    }

    /// Refusals and drops are counted under their own code and policy.
    #[test]
    fn counters_by_code_and_policy() {
        let m = BusMetrics::default();
        m.refused(ErrorCode::PermissionDenied);
        m.refused(ErrorCode::PermissionDenied);
        m.dropped(OverflowPolicy::DropOldest, 5);
        m.gap(OverflowPolicy::DropNewest);
        m.published(3, 30);
        let s = m.snapshot();
        assert!(s.refused.contains(&(ErrorCode::PermissionDenied, 2)));
        assert!(s.refused.contains(&(ErrorCode::Internal, 0)));
        assert!(s.dropped.contains(&(OverflowPolicy::DropOldest, 5)));
        assert!(s.gaps.contains(&(OverflowPolicy::DropNewest, 1)));
        assert_eq!((s.published_messages, s.published_bytes), (3, 30));
    }
}
