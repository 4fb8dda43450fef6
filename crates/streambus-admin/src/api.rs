//! The JSON API under `/api/v1/`: what the bus holds (overview, sessions, topics,
//! subscriptions, sinks, the supervision tree), two actions (close a session, restart a
//! quarantined sink) and a publish for clients that only speak HTTP.
//!
//! Lists are paged like NATS's `connz`: `offset` (default 0) and `limit` (default
//! [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]), `sort` (a field name per list) and `order`
//! (`asc` or `desc`), and a substring filter (`name` for sessions and topics, `filter`
//! for subscriptions). Every answer to a list says its `total` after filtering.
//!
//! Lists read [`Bus::snapshot`], which asks every session and topic actor: its cost
//! grows with the bus, as NATS's `connz` does, and it is meant for operators, not for
//! polling by machines (those scrape `/metrics`).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use streambus_core::{
    BusCounters, BusSnapshot, Message, SessionHandle, SessionId, SessionSnapshot, SinkSnapshot, SubscriptionSnapshot,
    Topic, TopicSnapshot,
};

use crate::AdminState;
use crate::error::ApiError;

/// Items in a page when the request does not say.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Most items in one page.
pub(crate) const MAX_LIMIT: usize = 1_000;

/// Paging, sorting and filtering of a list (query string).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Items to skip.
    offset: Option<usize>,
    /// Most items to return.
    limit: Option<usize>,
    /// Field to sort by (each list names its own).
    sort: Option<String>,
    /// `asc` or `desc`.
    order: Option<SortOrder>,
    /// Substring of the session's or topic's name.
    name: Option<String>,
    /// Substring of the subscription's filter.
    filter: Option<String>,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SortOrder {
    Asc,
    Desc,
}

/// A page of a list.
#[derive(Debug, Serialize)]
pub(crate) struct Page<T> {
    /// Items after filtering, before paging.
    pub(crate) total: usize,
    /// Items skipped.
    pub(crate) offset: usize,
    /// Most items asked for.
    pub(crate) limit: usize,
    /// The items.
    pub(crate) items: Vec<T>,
}

impl actix_web::FromRequest for ListQuery {
    type Error = ApiError;
    type Future = std::future::Ready<Result<ListQuery, ApiError>>;

    /// Parses the query string, naming the parameter at fault in the error.
    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()))
    }
}

/// Parses a list's query string (see [`ListQuery`]).
fn parse_query(query: &str) -> Result<ListQuery, ApiError> {
    let pairs = form_urlencoded::parse(query.as_bytes());
    let de = serde_urlencoded::Deserializer::new(pairs);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = if path == "." {
            field_in(&message).unwrap_or_else(|| "query".to_owned())
        } else {
            path
        };
        ApiError::invalid(field, format!("malformed query: {message}"))
    })
}

impl ListQuery {
    /// Sorts `items` by the requested key (one of `keys`, the first by default), in the
    /// requested order (each key's natural default otherwise), and cuts the page.
    fn page<T>(&self, mut items: Vec<T>, keys: &[SortKey<T>]) -> Result<Page<T>, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be 1 to {MAX_LIMIT}, not {limit}"),
            ));
        }
        let key = match &self.sort {
            None => &keys[0],
            Some(name) => keys.iter().find(|k| k.name == name).ok_or_else(|| {
                let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
                ApiError::invalid("sort", format!("cannot sort by {name:?}; one of: {}", names.join(", ")))
            })?,
        };
        let order = self.order.unwrap_or(key.default_order);
        items.sort_by(|a, b| {
            let o = (key.compare)(a, b);
            if order == SortOrder::Desc { o.reverse() } else { o }
        });
        let total = items.len();
        let offset = self.offset.unwrap_or(0);
        let items = items.into_iter().skip(offset).take(limit).collect();
        Ok(Page {
            total,
            offset,
            limit,
            items,
        })
    }
}

/// A way to sort a list.
struct SortKey<T> {
    /// Its name in `?sort=`.
    name: &'static str,
    /// The order when `?order=` is not given (biggest first for counters).
    default_order: SortOrder,
    /// The comparison.
    compare: fn(&T, &T) -> Ordering,
}

const fn key<T>(name: &'static str, default_order: SortOrder, compare: fn(&T, &T) -> Ordering) -> SortKey<T> {
    SortKey {
        name,
        default_order,
        compare,
    }
}

/// One session in the list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SessionRow {
    /// The id.
    pub(crate) id: SessionId,
    /// The client's name.
    pub(crate) name: String,
    /// The client's address.
    pub(crate) peer: Option<String>,
    /// The bus's own session.
    pub(crate) internal: bool,
    /// Opened at, milliseconds since the Unix epoch.
    pub(crate) connected_at_ms: u64,
    /// Live subscriptions.
    pub(crate) subscriptions: usize,
    /// Messages published (in).
    pub(crate) messages_in: u64,
    /// Bytes published (in).
    pub(crate) bytes_in: u64,
    /// Deliveries taken by the session's subscriptions (out).
    pub(crate) messages_out: u64,
    /// Deliveries waiting in its subscriptions' buffers.
    pub(crate) buffered_messages: usize,
    /// Deliveries its subscriptions dropped.
    pub(crate) dropped: u64,
    /// Publish batches admitted and not yet fanned out.
    pub(crate) inflight_batches: usize,
}

impl From<&SessionSnapshot> for SessionRow {
    fn from(s: &SessionSnapshot) -> Self {
        SessionRow {
            id: s.id,
            name: s.name.clone(),
            peer: s.peer.clone(),
            internal: s.internal,
            connected_at_ms: s.connected_at_ms,
            subscriptions: s.subscriptions.len(),
            messages_in: s.published_messages,
            bytes_in: s.published_bytes,
            messages_out: s.subscriptions.iter().map(|x| x.buffer.delivered).sum(),
            buffered_messages: s.subscriptions.iter().map(|x| x.buffer.queued_messages).sum(),
            dropped: s.subscriptions.iter().map(|x| x.buffer.dropped).sum(),
            inflight_batches: s.inflight_batches,
        }
    }
}

/// One session in full.
#[derive(Debug, Serialize)]
struct SessionDetail {
    #[serde(flatten)]
    row: SessionRow,
    /// Its subscriptions.
    subscription_list: Vec<SubscriptionSnapshot>,
}

/// One subscription in the list, with its session.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SubscriptionRow {
    /// The owning session.
    pub(crate) session_id: SessionId,
    /// The owning session's name.
    pub(crate) session_name: String,
    /// The subscription.
    #[serde(flatten)]
    pub(crate) subscription: SubscriptionSnapshot,
    /// How full its buffer is, 0 to 1 (the larger of messages and bytes).
    pub(crate) fill: f64,
}

/// Every subscription of `snapshot`.
pub(crate) fn subscription_rows(snapshot: &BusSnapshot) -> Vec<SubscriptionRow> {
    snapshot
        .sessions
        .iter()
        .flat_map(|s| {
            s.subscriptions.iter().map(|sub| {
                let b = &sub.buffer;
                let fill = (b.queued_messages as f64 / b.capacity_messages.max(1) as f64)
                    .max(b.queued_bytes as f64 / b.capacity_bytes.max(1) as f64);
                SubscriptionRow {
                    session_id: s.id,
                    session_name: s.name.clone(),
                    subscription: sub.clone(),
                    fill,
                }
            })
        })
        .collect()
}

/// `GET /api/v1/overview`: version, uptime, configuration summary, totals.
pub(crate) async fn overview(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    #[derive(Serialize)]
    struct Overview<'a> {
        version: &'static str,
        uptime_seconds: f64,
        accepting: bool,
        config: ConfigSummary<'a>,
        totals: BusCounters,
        sinks: usize,
    }
    #[derive(Serialize)]
    struct ConfigSummary<'a> {
        grpc_addr: String,
        admin_addr: String,
        limits: &'a streambus_types::config::LimitsConfig,
        topics: &'a streambus_types::config::TopicsConfig,
        subscriptions: &'a streambus_types::config::SubscriptionDefaults,
        sinks: Vec<&'a str>,
    }
    let bus = &state.bus;
    let totals = bus.counters().await?;
    let config = bus.config();
    Ok(HttpResponse::Ok().json(Overview {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: totals.uptime_seconds,
        accepting: bus.is_accepting(),
        config: ConfigSummary {
            grpc_addr: config.grpc.addr.to_string(),
            admin_addr: state.config.addr.to_string(),
            limits: &config.limits,
            topics: &config.topics,
            subscriptions: &config.subscriptions,
            sinks: config.sinks.iter().map(|s| s.name.as_str()).collect(),
        },
        totals,
        sinks: config.sinks.len(),
    }))
}

/// `GET /api/v1/sessions`: sort by `id` (default), `name`, `messages_in`,
/// `messages_out`, `subscriptions`, `buffered`, `dropped`, `connected_at`.
pub(crate) async fn sessions(state: web::Data<AdminState>, query: ListQuery) -> Result<HttpResponse, ApiError> {
    use SortOrder::{Asc, Desc};
    let snapshot = state.bus.snapshot().await?;
    let rows: Vec<SessionRow> = snapshot
        .sessions
        .iter()
        .filter(|s| query.name.as_ref().is_none_or(|n| s.name.contains(n.as_str())))
        .map(SessionRow::from)
        .collect();
    let keys: [SortKey<SessionRow>; 8] = [
        key("id", Asc, |a, b| a.id.cmp(&b.id)),
        key("name", Asc, |a, b| a.name.cmp(&b.name)),
        key("messages_in", Desc, |a, b| a.messages_in.cmp(&b.messages_in)),
        key("messages_out", Desc, |a, b| a.messages_out.cmp(&b.messages_out)),
        key("subscriptions", Desc, |a, b| a.subscriptions.cmp(&b.subscriptions)),
        key("buffered", Desc, |a, b| a.buffered_messages.cmp(&b.buffered_messages)),
        key("dropped", Desc, |a, b| a.dropped.cmp(&b.dropped)),
        key("connected_at", Asc, |a, b| a.connected_at_ms.cmp(&b.connected_at_ms)),
    ];
    Ok(HttpResponse::Ok().json(query.page(rows, &keys)?))
}

/// Parses a session id from the path.
fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse::<u64>()
        .map(SessionId)
        .map_err(|_| ApiError::invalid("id", format!("session id {raw:?} is not a number")))
}

/// `GET /api/v1/sessions/{id}`.
pub(crate) async fn session(state: web::Data<AdminState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let snapshot = state.bus.session(session_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(SessionDetail {
        row: SessionRow::from(&snapshot),
        subscription_list: snapshot.subscriptions,
    }))
}

/// `POST /api/v1/sessions/{id}/close`: a graceful close (what it published is
/// delivered, its subscriptions' buffers are sent, then its stream ends). 202: the close
/// is under way.
pub(crate) async fn close_session(
    state: web::Data<AdminState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = session_id(&id)?;
    state.bus.close_session(id).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "session": id, "closing": true })))
}

/// `GET /api/v1/topics`: sort by `name` (default), `published`, `mailbox`,
/// `subscribers`, `restarts`.
pub(crate) async fn topics(state: web::Data<AdminState>, query: ListQuery) -> Result<HttpResponse, ApiError> {
    use SortOrder::{Asc, Desc};
    let snapshot = state.bus.snapshot().await?;
    let rows: Vec<TopicSnapshot> = snapshot
        .topics
        .into_iter()
        .filter(|t| {
            query
                .name
                .as_ref()
                .is_none_or(|n| t.topic.as_str().contains(n.as_str()))
        })
        .collect();
    let keys: [SortKey<TopicSnapshot>; 5] = [
        key("name", Asc, |a, b| a.topic.cmp(&b.topic)),
        key("published", Desc, |a, b| a.published.cmp(&b.published)),
        key("mailbox", Desc, |a, b| a.mailbox_messages.cmp(&b.mailbox_messages)),
        key("subscribers", Desc, |a, b| a.subscribers.cmp(&b.subscribers)),
        key("restarts", Desc, |a, b| a.restarts.cmp(&b.restarts)),
    ];
    Ok(HttpResponse::Ok().json(query.page(rows, &keys)?))
}

/// `GET /api/v1/subscriptions`: sort by `id` (default), `buffered`, `fill`, `dropped`,
/// `delivered`.
pub(crate) async fn subscriptions(state: web::Data<AdminState>, query: ListQuery) -> Result<HttpResponse, ApiError> {
    use SortOrder::{Asc, Desc};
    let snapshot = state.bus.snapshot().await?;
    let rows: Vec<SubscriptionRow> = subscription_rows(&snapshot)
        .into_iter()
        .filter(|r| {
            query
                .filter
                .as_ref()
                .is_none_or(|f| r.subscription.filter.as_str().contains(f.as_str()))
        })
        .collect();
    let keys: [SortKey<SubscriptionRow>; 5] = [
        key("id", Asc, |a, b| a.subscription.id.cmp(&b.subscription.id)),
        key("buffered", Desc, |a, b| {
            a.subscription
                .buffer
                .queued_messages
                .cmp(&b.subscription.buffer.queued_messages)
        }),
        key("fill", Desc, |a, b| a.fill.total_cmp(&b.fill)),
        key("dropped", Desc, |a, b| {
            a.subscription.buffer.dropped.cmp(&b.subscription.buffer.dropped)
        }),
        key("delivered", Desc, |a, b| {
            a.subscription.buffer.delivered.cmp(&b.subscription.buffer.delivered)
        }),
    ];
    Ok(HttpResponse::Ok().json(query.page(rows, &keys)?))
}

/// `GET /api/v1/sinks`: every sink's snapshot.
pub(crate) async fn sinks(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.bus.sinks().await?))
}

/// `POST /api/v1/sinks/{name}/restart`: a quarantined sink starts again with a fresh
/// restart budget; another is left alone. Answers the sink's snapshot.
pub(crate) async fn restart_sink(
    state: web::Data<AdminState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.bus.restart_sink(&name).await?))
}

/// One node of the supervision tree.
#[derive(Debug, Serialize)]
pub(crate) struct TreeNode {
    /// What it is called.
    pub(crate) name: String,
    /// `bus`, `supervisor`, `session`, `topic` or `sink`.
    pub(crate) kind: &'static str,
    /// `running`, `draining`, `stalled` (a topic waiting on a `block` subscriber), or a
    /// sink's status.
    pub(crate) status: String,
    /// Restarts after failures.
    pub(crate) restarts: u64,
    /// Children in all (the list may be cut at `limit`).
    pub(crate) children_total: usize,
    /// The children, up to the limit.
    pub(crate) children: Vec<TreeNode>,
}

impl TreeNode {
    fn leaf(name: String, kind: &'static str, status: impl Into<String>, restarts: u64) -> TreeNode {
        TreeNode {
            name,
            kind,
            status: status.into(),
            restarts,
            children_total: 0,
            children: Vec::new(),
        }
    }

    fn parent(
        name: &str,
        kind: &'static str,
        status: &str,
        restarts: u64,
        children: Vec<TreeNode>,
        limit: usize,
    ) -> Self {
        let children_total = children.len();
        TreeNode {
            name: name.to_owned(),
            kind,
            status: status.to_owned(),
            restarts,
            children_total,
            children: children.into_iter().take(limit).collect(),
        }
    }
}

/// The supervision tree of `snapshot`, each supervisor's children cut at `limit`.
pub(crate) fn tree(snapshot: &BusSnapshot, accepting: bool, limit: usize) -> TreeNode {
    let sessions = snapshot
        .sessions
        .iter()
        .map(|s| TreeNode::leaf(format!("session {} ({})", s.id, s.name), "session", "running", 0))
        .collect();
    let topics = snapshot
        .topics
        .iter()
        .map(|t| {
            let status = if t.stalled_subscribers > 0 {
                "stalled"
            } else {
                "running"
            };
            TreeNode::leaf(t.topic.to_string(), "topic", status, u64::from(t.restarts))
        })
        .collect();
    let sinks = snapshot
        .sinks
        .iter()
        .map(|s| {
            TreeNode::leaf(
                s.name.clone(),
                "sink",
                crate::metrics::status_name(s.status),
                u64::from(s.restarts),
            )
        })
        .collect();
    let status = if accepting { "running" } else { "draining" };
    let children = vec![
        TreeNode::parent("session_manager", "supervisor", status, 0, sessions, limit),
        TreeNode::parent(
            "topic_supervisor",
            "supervisor",
            status,
            snapshot.topic_supervisor.topic_restarts,
            topics,
            limit,
        ),
        TreeNode::parent("sink_supervisor", "supervisor", status, 0, sinks, limit),
    ];
    TreeNode::parent("bus", "bus", status, 0, children, limit)
}

/// `GET /api/v1/tree?limit=N`: the supervision tree (each supervisor's children cut at
/// `limit`, default [`DEFAULT_LIMIT`]).
pub(crate) async fn supervision_tree(state: web::Data<AdminState>, query: ListQuery) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let snapshot = state.bus.snapshot().await?;
    Ok(HttpResponse::Ok().json(tree(&snapshot, state.bus.is_accepting(), limit)))
}

/// The body of `POST /api/v1/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// Concrete topic.
    topic: String,
    /// The payload as UTF-8 text.
    #[serde(default)]
    payload: Option<String>,
    /// The payload as standard base64 (for binary payloads); not with `payload`.
    #[serde(default)]
    payload_base64: Option<String>,
    /// Headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Keep it as the topic's retained value.
    #[serde(default)]
    retain: bool,
}

/// `POST /api/v1/publish`: publishes one message through the admin plane's own
/// session and answers once the bus has admitted it (as a gRPC publish ack).
/// `GET /api/v1/cluster`: the node's backplane; 404 on a node that does not federate.
pub(crate) async fn cluster(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    match &state.cluster {
        Some(cluster) => Ok(HttpResponse::Ok().json(cluster.snapshot())),
        None => Err(ApiError::not_found(
            "this node does not federate (no [cluster] servers)",
        )),
    }
}

pub(crate) async fn publish(state: web::Data<AdminState>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    // A body may hold a largest message base64-encoded, its headers and the JSON around.
    let limit = state.bus.config().limits.max_message_bytes * 2 + 64 * 1024;
    let body = read_body(body, limit).await?;
    let body: PublishBody = parse_json(&body)?;
    let payload = match (body.payload, body.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "payload_base64",
                "give payload or payload_base64, not both",
            ));
        }
        (Some(text), None) => bytes::Bytes::from(text),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::invalid("payload_base64", format!("not base64: {e}")))?,
        (None, None) => bytes::Bytes::new(),
    };
    let topic = Topic::new(&body.topic).map_err(|e| ApiError::invalid("topic", format!("invalid topic: {e}")))?;
    let mut message = Message::new(topic.clone(), payload);
    if !body.headers.is_empty() {
        message = message.with_headers(body.headers.into_iter().collect::<Vec<_>>());
    }
    if body.retain {
        message = message.retained();
    }
    let session = state.http_session().await?;
    session.publish_message(message).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "topic": topic.as_str(), "accepted": 1 })))
}

/// Reads a request body of at most `limit` bytes; a longer one is refused before it is
/// read whole.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<bytes::BytesMut, ApiError> {
    use futures::StreamExt as _;
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid("body", format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError {
                code: streambus_types::ErrorCode::ResourceExhausted,
                message: format!("body larger than {limit} bytes"),
                field: Some("body".to_owned()),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JSON body, naming the field at fault.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // A missing or unknown field is named in serde's message, not in the path.
        let field = if path == "." {
            field_in(&message).unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        ApiError::invalid(field, format!("malformed body: {message}"))
    })
}

/// The field serde names in backquotes ("missing field `topic`").
fn field_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

impl AdminState {
    /// The admin plane's own session (called `http`), opened on first use and again
    /// whenever it was closed.
    async fn http_session(&self) -> Result<SessionHandle, ApiError> {
        let mut slot = self.http_session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.is_open()) {
            return Ok(s.clone());
        }
        let s = self.bus.connect(streambus_core::ConnectOptions::named("http")).await?;
        *slot = Some(s.clone());
        Ok(s)
    }
}

/// Sinks that are quarantined now.
pub(crate) fn quarantined(sinks: &[SinkSnapshot]) -> Vec<&str> {
    sinks
        .iter()
        .filter(|s| s.status == streambus_core::SinkStatus::Quarantined)
        .map(|s| s.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serde's messages name the missing or unknown field; the error carries it.
    #[test]
    fn malformed_bodies_name_the_field() {
        let e = parse_json::<PublishBody>(br#"{"payload":"x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("topic"));
        let e = parse_json::<PublishBody>(br#"{"topic":"a","retain":"yes"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("retain"));
        let e = parse_json::<PublishBody>(br#"{"topic":"a","colour":1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));
        let e = parse_json::<PublishBody>(b"not json").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
    }

    /// A query parameter of the wrong type or an unknown one is named.
    #[test]
    fn malformed_queries_name_the_parameter() {
        assert_eq!(parse_query("limit=lots").unwrap_err().field.as_deref(), Some("limit"));
        assert_eq!(parse_query("colour=red").unwrap_err().field.as_deref(), Some("colour"));
        assert_eq!(parse_query("order=up").unwrap_err().field.as_deref(), Some("order"));
        let q = parse_query("offset=2&limit=3&sort=name&order=desc&name=dev").unwrap();
        assert_eq!((q.offset, q.limit, q.order), (Some(2), Some(3), Some(SortOrder::Desc)));
    }

    /// Paging cuts after sorting; a bad sort key or limit is refused naming the field.
    #[test]
    fn paging_and_sorting() {
        let keys: [SortKey<u32>; 2] = [
            key("value", SortOrder::Asc, |a, b| a.cmp(b)),
            key("big", SortOrder::Desc, |a, b| a.cmp(b)),
        ];
        let q = ListQuery {
            offset: Some(1),
            limit: Some(2),
            sort: Some("big".into()),
            ..Default::default()
        };
        let page = q.page(vec![3, 1, 4, 1, 5], &keys).unwrap();
        assert_eq!((page.total, page.items), (5, vec![4, 3]));
        let q = ListQuery {
            sort: Some("colour".into()),
            ..Default::default()
        };
        assert_eq!(q.page(vec![1], &keys).unwrap_err().field.as_deref(), Some("sort"));
        let q = ListQuery {
            limit: Some(0),
            ..Default::default()
        };
        assert_eq!(q.page(vec![1], &keys).unwrap_err().field.as_deref(), Some("limit"));
    }
}
