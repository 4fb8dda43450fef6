//! `GET /metrics`: the bus in Prometheus's text exposition format (0.0.4).
//!
//! Nothing is counted for Prometheus on the hot path: every value is read at scrape
//! time from what the bus already keeps ([`Bus::counters`]: the supervisors' counters,
//! the bus-wide atomics and the memory budget; the sink snapshots; the configured
//! topics' snapshots) and turned into metric families here, then encoded by the
//! `prometheus` crate's text encoder, which also gives the process metrics (RSS, CPU,
//! open file descriptors).
//!
//! A scrape costs two supervisor calls, one sink-supervisor call and one call per topic
//! named in `admin.metrics_topics`, whatever the number of sessions and topics. Label
//! values come from fixed sets (error codes, overflow policies, sink statuses,
//! configured sink and topic names), so the number of series never grows with the
//! number of devices.

use prometheus::core::Collector;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use streambus_core::{Bus, BusCounters, BusError, SinkSnapshot, SinkStatus, TopicSnapshot};

/// Every sink status, for the one-hot `streambus_sink_status` gauge.
const SINK_STATUSES: [SinkStatus; 6] = [
    SinkStatus::Starting,
    SinkStatus::Running,
    SinkStatus::Retrying,
    SinkStatus::Restarting,
    SinkStatus::Quarantined,
    SinkStatus::Stopped,
];

/// The stable name of a sink status (as in the JSON API).
pub(crate) fn status_name(status: SinkStatus) -> &'static str {
    match status {
        SinkStatus::Starting => "starting",
        SinkStatus::Running => "running",
        SinkStatus::Retrying => "retrying",
        SinkStatus::Restarting => "restarting",
        SinkStatus::Quarantined => "quarantined",
        SinkStatus::Stopped => "stopped",
    }
}

/// Metric families under construction.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

/// One sample: its label pairs and value.
type Sample<'a> = (Vec<(&'a str, String)>, f64);

impl Families {
    /// Adds a family of `kind` with `samples`.
    fn add(&mut self, name: &str, help: &str, kind: MetricType, samples: Vec<Sample<'_>>) {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        for (labels, value) in samples {
            let mut metric = Metric::default();
            metric.set_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(k.to_owned());
                        pair.set_value(v);
                        pair
                    })
                    .collect(),
            );
            match kind {
                MetricType::COUNTER => {
                    let mut c = Counter::default();
                    c.set_value(value);
                    metric.set_counter(c);
                }
                _ => {
                    let mut g = Gauge::default();
                    g.set_value(value);
                    metric.set_gauge(g);
                }
            }
            family.mut_metric().push(metric);
        }
        self.0.push(family);
    }

    /// A counter without labels.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.add(name, help, MetricType::COUNTER, vec![(vec![], value as f64)]);
    }

    /// A gauge without labels.
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.add(name, help, MetricType::GAUGE, vec![(vec![], value)]);
    }

    /// A counter with one sample per sink.
    fn per_sink(&mut self, name: &str, help: &str, sinks: &[SinkSnapshot], value: impl Fn(&SinkSnapshot) -> u64) {
        let samples = sinks
            .iter()
            .map(|s| (vec![("sink", s.name.clone())], value(s) as f64))
            .collect();
        self.add(name, help, MetricType::COUNTER, samples);
    }
}

/// Everything one scrape reads from the bus.
pub(crate) struct Scrape {
    /// The bus's cheap counters.
    pub(crate) counters: BusCounters,
    /// Every sink.
    pub(crate) sinks: Vec<SinkSnapshot>,
    /// The configured topics that are alive now.
    pub(crate) topics: Vec<TopicSnapshot>,
    /// The cluster backplane, when the node federates.
    pub(crate) cluster: Option<streambus_cluster::ClusterSnapshot>,
}

impl Scrape {
    /// Reads the bus; `topics` are the names configured for per-topic series.
    pub(crate) async fn read(
        bus: &Bus,
        topics: &[String],
        cluster: Option<&streambus_cluster::Cluster>,
    ) -> Result<Scrape, BusError> {
        let counters = bus.counters().await?;
        let sinks = bus.sinks().await?;
        let mut live = Vec::new();
        for name in topics {
            if let Some(t) = bus.topic(name).await? {
                live.push(t);
            }
        }
        Ok(Scrape {
            counters,
            sinks,
            topics: live,
            cluster: cluster.map(streambus_cluster::Cluster::snapshot),
        })
    }
}

/// The text exposition of `scrape` and the process metrics.
pub(crate) fn render(scrape: &Scrape) -> Vec<u8> {
    let mut f = Families::default();
    let c = &scrape.counters;
    let m = &c.metrics;
    let sm = &c.session_manager;
    let ts = &c.topic_supervisor;
    f.add(
        "streambus_info",
        "The running streambus: its version.",
        MetricType::GAUGE,
        vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
    );
    f.gauge(
        "streambus_uptime_seconds",
        "Seconds since the bus started.",
        c.uptime_seconds,
    );
    f.gauge(
        "streambus_draining",
        "1 while the bus drains for shutdown (it takes no new sessions or publishes).",
        if c.draining { 1.0 } else { 0.0 },
    );
    // Sessions.
    f.gauge("streambus_sessions", "Sessions open now.", sm.sessions as f64);
    f.counter(
        "streambus_sessions_opened_total",
        "Sessions opened.",
        sm.sessions_opened,
    );
    let ended = sm.sessions_opened.saturating_sub(sm.sessions as u64);
    let closed = ended
        .saturating_sub(sm.sessions_failed)
        .saturating_sub(sm.sessions_slow_consumer);
    f.add(
        "streambus_sessions_closed_total",
        "Sessions ended, by reason: closed (by the client, an operator, idleness or shutdown), failed (the session crashed), slow_consumer (its client stopped reading).",
        MetricType::COUNTER,
        vec![
            (vec![("reason", "closed".to_owned())], closed as f64),
            (vec![("reason", "failed".to_owned())], sm.sessions_failed as f64),
            (vec![("reason", "slow_consumer".to_owned())], sm.sessions_slow_consumer as f64),
        ],
    );
    // Topics and subscriptions.
    f.gauge("streambus_topics", "Live topics, asleep or awake.", ts.topics as f64);
    f.gauge(
        "streambus_topics_asleep",
        "Live topics asleep: nothing subscribes to them.",
        ts.topics_asleep as f64,
    );
    f.counter(
        "streambus_topic_actors_started_total",
        "Topic actors started (each when its topic first needed one after being idle).",
        ts.topic_actors_started,
    );
    f.gauge(
        "streambus_topic_actors",
        "Topic actors running: awake topics that needed one (a stalled subscriber's room, batches queued while busy).",
        ts.topic_actors as f64,
    );
    f.counter(
        "streambus_topics_reaped_total",
        "Topics stopped for idleness.",
        ts.topics_reaped,
    );
    f.gauge(
        "streambus_subscriptions",
        "Live subscriptions.",
        ts.subscriptions as f64,
    );
    f.gauge(
        "streambus_subscription_buffered_messages",
        "Deliveries waiting in subscription buffers, summed over every subscription.",
        ts.buffered_messages as f64,
    );
    f.gauge(
        "streambus_subscription_buffered_bytes",
        "Payload and header bytes waiting in subscription buffers.",
        ts.buffered_bytes as f64,
    );
    // Messages.
    f.counter(
        "streambus_messages_published_total",
        "Messages admitted to topics.",
        m.published_messages,
    );
    f.counter(
        "streambus_published_bytes_total",
        "Payload and header bytes admitted to topics.",
        m.published_bytes,
    );
    f.counter(
        "streambus_messages_delivered_total",
        "Deliveries taken by subscribers (live subscribers and sinks).",
        m.delivered_messages,
    );
    f.counter(
        "streambus_delivered_bytes_total",
        "Payload and header bytes delivered.",
        m.delivered_bytes,
    );
    f.add(
        "streambus_refusals_total",
        "Requests refused (publishes, subscriptions, sessions), by error code.",
        MetricType::COUNTER,
        m.refused
            .iter()
            .map(|(code, n)| (vec![("code", code.as_str().to_owned())], *n as f64))
            .collect(),
    );
    f.add(
        "streambus_dropped_messages_total",
        "Deliveries dropped by subscriber buffers, by the subscription's overflow policy.",
        MetricType::COUNTER,
        m.dropped
            .iter()
            .map(|(p, n)| (vec![("policy", p.as_str().to_owned())], *n as f64))
            .collect(),
    );
    f.add(
        "streambus_gaps_total",
        "Gap events handed to subscribers, by the subscription's overflow policy.",
        MetricType::COUNTER,
        m.gaps
            .iter()
            .map(|(p, n)| (vec![("policy", p.as_str().to_owned())], *n as f64))
            .collect(),
    );
    // Admission and memory.
    f.gauge(
        "streambus_inflight_batches",
        "Publish batches admitted and not yet fanned out.",
        c.inflight_batches as f64,
    );
    f.gauge(
        "streambus_memory_budget_bytes",
        "The bus-wide memory budget (limits.max_memory_bytes).",
        c.memory.budget_bytes as f64,
    );
    f.gauge(
        "streambus_memory_admitted_bytes",
        "Bytes of the memory budget held by admitted messages.",
        c.memory.admitted_bytes as f64,
    );
    f.counter(
        "streambus_admission_waits_total",
        "Publishes that waited for the bus-wide memory budget.",
        c.memory.budget_waits,
    );
    f.counter(
        "streambus_admission_refusals_total",
        "Publishes refused because the bus-wide memory budget was used up.",
        c.memory.budget_refusals,
    );
    // Supervision.
    let sink_restarts: u64 = scrape.sinks.iter().map(|s| u64::from(s.restarts)).sum();
    f.add(
        "streambus_actor_restarts_total",
        "Actors restarted by their supervisor after a failure, by kind (sessions are not restarted: see streambus_sessions_closed_total{reason=\"failed\"}).",
        MetricType::COUNTER,
        vec![
            (vec![("kind", "topic".to_owned())], ts.topic_restarts as f64),
            (vec![("kind", "sink".to_owned())], sink_restarts as f64),
        ],
    );
    // Latency.
    f.0.push(latency_family(&m.latency));
    // Sinks.
    let sinks = &scrape.sinks;
    f.per_sink(
        "streambus_sink_written_total",
        "Records written and acknowledged by the sink.",
        sinks,
        |s| s.written,
    );
    f.per_sink("streambus_sink_batches_total", "Successful batch writes.", sinks, |s| {
        s.batches
    });
    f.per_sink(
        "streambus_sink_retries_total",
        "Failed writes that were retried.",
        sinks,
        |s| s.retries,
    );
    f.per_sink(
        "streambus_sink_dead_lettered_total",
        "Records sent to the sink's dead-letter topic.",
        sinks,
        |s| s.dead_lettered,
    );
    f.per_sink(
        "streambus_sink_dropped_total",
        "Records lost before reaching the sink.",
        sinks,
        |s| s.dropped,
    );
    f.per_sink("streambus_sink_restarts_total", "Restarts of the sink.", sinks, |s| {
        u64::from(s.restarts)
    });
    f.add(
        "streambus_sink_pending_records",
        "Records on their way to the sink.",
        MetricType::GAUGE,
        sinks
            .iter()
            .map(|s| (vec![("sink", s.name.clone())], s.pending as f64))
            .collect(),
    );
    f.add(
        "streambus_sink_buffer_bytes",
        "Bytes in the sink's disk buffer (durable sinks only).",
        MetricType::GAUGE,
        sinks
            .iter()
            .filter_map(|s| {
                s.buffer
                    .as_ref()
                    .map(|b| (vec![("sink", s.name.clone())], b.bytes as f64))
            })
            .collect(),
    );
    f.add(
        "streambus_sink_status",
        "1 for the sink's current status, 0 for the others.",
        MetricType::GAUGE,
        sinks
            .iter()
            .flat_map(|s| {
                SINK_STATUSES.iter().map(move |st| {
                    let on = if s.status == *st { 1.0 } else { 0.0 };
                    (
                        vec![("sink", s.name.clone()), ("status", status_name(*st).to_owned())],
                        on,
                    )
                })
            })
            .collect(),
    );
    if let Some(c) = &scrape.cluster {
        cluster_families(&mut f, c);
    }
    // The configured topics.
    let topics = &scrape.topics;
    let per_topic = |value: fn(&TopicSnapshot) -> f64| -> Vec<Sample<'static>> {
        topics
            .iter()
            .map(|t| (vec![("topic", t.topic.to_string())], value(t)))
            .collect()
    };
    f.add(
        "streambus_topic_published_total",
        "Messages published to the topic since its actor started (configured topics only).",
        MetricType::COUNTER,
        per_topic(|t| t.published as f64),
    );
    f.add(
        "streambus_topic_mailbox_messages",
        "Messages admitted to the topic and not yet fanned out (configured topics only).",
        MetricType::GAUGE,
        per_topic(|t| t.mailbox_messages as f64),
    );
    f.add(
        "streambus_topic_subscribers",
        "Subscriptions matching the topic (configured topics only).",
        MetricType::GAUGE,
        per_topic(|t| t.subscribers as f64),
    );
    // Families without samples are left out (the text format has nothing to say).
    let mut families: Vec<MetricFamily> = f.0.into_iter().filter(|f| !f.get_metric().is_empty()).collect();
    families.extend(process_families());
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a family without samples, filtered out above.
    let _ = TextEncoder::new().encode(&families, &mut out);
    out
}

/// The publish→deliver histogram.
/// `streambus_cluster_*`: the backplane of a federated node.
fn cluster_families(f: &mut Families, c: &streambus_cluster::ClusterSnapshot) {
    f.gauge(
        "streambus_cluster_connected",
        "1 while the node's NATS connection is up.",
        if c.connected { 1.0 } else { 0.0 },
    );
    let counters: [(&str, &str, u64); 13] = [
        (
            "forwarded",
            "Messages published here and forwarded to NATS.",
            c.forwarded,
        ),
        (
            "forward_lost",
            "Messages published here that were not forwarded (the NATS connection was down).",
            c.forward_lost,
        ),
        ("received", "Messages received from NATS.", c.received),
        ("relayed", "Received messages handed to local subscribers.", c.relayed),
        (
            "duplicates",
            "Messages received twice (overlapping subscriptions) and dropped.",
            c.duplicates,
        ),
        (
            "gaps",
            "Gaps found in other nodes' runs, reported to the affected subscribers.",
            c.gaps,
        ),
        ("lost", "Messages those gaps stand for.", c.lost),
        (
            "served_elsewhere",
            "Queue-group copies dropped because the publishing node served the group.",
            c.served_elsewhere,
        ),
        (
            "invalid",
            "Received messages that were not a topic or had a broken stamp.",
            c.invalid,
        ),
        ("refused", "Received messages the local bus refused.", c.refused),
        (
            "retained_written",
            "Retained publishes written to the retained stream.",
            c.retained_written,
        ),
        (
            "retained_received",
            "Retained values taken from other nodes.",
            c.retained_received,
        ),
        ("disconnects", "Times the NATS connection was lost.", c.disconnects),
    ];
    for (name, help, value) in counters {
        f.counter(&format!("streambus_cluster_{name}_total"), help, value);
    }
    f.gauge(
        "streambus_cluster_subscriptions",
        "NATS subscriptions the node holds for its local interest.",
        c.subscriptions as f64,
    );
}

fn latency_family(h: &streambus_core::HistogramSnapshot) -> MetricFamily {
    let mut histogram = Histogram::default();
    histogram.set_sample_count(h.count);
    histogram.set_sample_sum(h.sum_seconds);
    histogram.set_bucket(
        h.buckets
            .iter()
            .filter(|(bound, _)| bound.is_finite())
            .map(|(bound, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(*n);
                b
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name("streambus_publish_to_delivery_seconds".to_owned());
    family.set_help(
        "Time from publish to the subscriber taking the delivery from its buffer (live deliveries; retained replays are not counted)."
            .to_owned(),
    );
    family.set_field_type(MetricType::HISTOGRAM);
    family.mut_metric().push(metric);
    family
}

/// `process_*` metrics of this process (Linux; none elsewhere).
fn process_families() -> Vec<MetricFamily> {
    #[cfg(target_os = "linux")]
    {
        prometheus::process_collector::ProcessCollector::for_self().collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}
