//! The live dashboard: a page served by the binary itself (no build step, no CDN; it
//! works offline) that draws what [`state`] answers, updated over server-sent events.
//!
//! `GET /api/v1/dashboard` answers one [`DashboardData`]; `GET /api/v1/dashboard/stream`
//! sends one as an SSE `data:` event at once and then every
//! `admin.dashboard_interval_ms` for as long as the page is open (the page computes
//! rates from consecutive totals). Each update reads [`streambus_core::Bus::snapshot`],
//! which asks every actor, so an open dashboard costs the bus one snapshot per interval;
//! nothing is computed while no dashboard is open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::json;
use streambus_core::{BusCounters, BusError, SinkSnapshot, TopicSnapshot};

use crate::AdminState;
use crate::api::{SubscriptionRow, TreeNode, subscription_rows, tree};
use crate::error::ApiError;

/// The page, with its script and styles inline.
const PAGE: &str = include_str!("dashboard.html");

/// Rows of each table the page shows (the busiest first).
const ROWS: usize = 15;

/// What one dashboard update carries.
#[derive(Debug, Serialize)]
pub(crate) struct DashboardData {
    /// When it was read, milliseconds since the Unix epoch.
    at_ms: u64,
    /// The bus's version.
    version: &'static str,
    /// Whether the bus takes new streams.
    accepting: bool,
    /// Totals, latency, memory.
    counters: BusCounters,
    /// Every sink.
    sinks: Vec<SinkSnapshot>,
    /// Live topics in all.
    topics_total: usize,
    /// The busiest topics: deepest mailbox first, then most published.
    topics: Vec<TopicSnapshot>,
    /// Subscriptions in all.
    subscriptions_total: usize,
    /// The subscriptions most behind: fullest buffer first, then most dropped.
    subscriptions: Vec<SubscriptionRow>,
    /// The supervision tree, each supervisor's children cut at [`ROWS`].
    tree: TreeNode,
    /// The cluster backplane, when the node federates.
    cluster: Option<streambus_cluster::ClusterSnapshot>,
}

/// Reads one update.
async fn collect(state: &AdminState) -> Result<DashboardData, BusError> {
    let bus = &state.bus;
    let counters = bus.counters().await?;
    let snapshot = bus.snapshot().await?;
    let accepting = bus.is_accepting();
    let tree = tree(&snapshot, accepting, ROWS);
    let mut subscriptions = subscription_rows(&snapshot);
    subscriptions.sort_by(|a, b| {
        b.fill
            .total_cmp(&a.fill)
            .then(b.subscription.buffer.dropped.cmp(&a.subscription.buffer.dropped))
    });
    let subscriptions_total = subscriptions.len();
    subscriptions.truncate(ROWS);
    let mut topics = snapshot.topics;
    topics.sort_by(|a, b| {
        b.mailbox_messages
            .cmp(&a.mailbox_messages)
            .then(b.published.cmp(&a.published))
    });
    let topics_total = topics.len();
    topics.truncate(ROWS);
    Ok(DashboardData {
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        version: env!("CARGO_PKG_VERSION"),
        accepting,
        counters,
        sinks: snapshot.sinks,
        topics_total,
        topics,
        subscriptions_total,
        subscriptions,
        tree,
        cluster: state.cluster.as_ref().map(streambus_cluster::Cluster::snapshot),
    })
}

/// `GET /`: the page.
pub(crate) async fn page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(PAGE)
}

/// `GET /api/v1/dashboard`: one update.
pub(crate) async fn state(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(collect(&state).await?))
}

/// One SSE event with `data` (a `data:` line per line of JSON; ours has none inside).
fn event(name: Option<&str>, data: &str) -> web::Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    web::Bytes::from(out)
}

/// `GET /api/v1/dashboard/stream`: an update now and then every interval.
pub(crate) async fn stream(state: web::Data<AdminState>) -> HttpResponse {
    let interval = Duration::from_millis(state.config.dashboard_interval_ms);
    let events = futures::stream::unfold((state, true), move |(state, first)| async move {
        if !first {
            tokio::time::sleep(interval).await;
        }
        let bytes = match collect(&state).await {
            Ok(data) => match serde_json::to_string(&data) {
                Ok(json) => event(None, &json),
                Err(e) => event(Some("error"), &json!({ "message": e.to_string() }).to_string()),
            },
            Err(e) => event(Some("error"), &json!({ "message": e.to_string() }).to_string()),
        };
        Some((Ok::<_, actix_web::Error>(bytes), (state, false)))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event is `event:` (if named), one `data:` line, and a blank line.
    #[test]
    fn sse_framing() {
        assert_eq!(&event(None, "{}")[..], b"data: {}\n\n");
        assert_eq!(&event(Some("error"), "x")[..], b"event: error\ndata: x\n\n");
    }
}
