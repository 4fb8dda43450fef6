//! The admin handlers without a socket (`actix_web::test`), over an in-process bus.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{App, test, web};
use serde_json::{Value, json};
use streambus_admin::{AdminState, routes};
use streambus_core::sink::testsuite::{Collector, PANIC, PanickingSink};
use streambus_core::sink::{Sink, SinkRegistry};
use streambus_core::{Bus, BusConfig, ConnectOptions, Message, SinkConfig, Topic};
use streambus_types::config::AdminConfig;

/// Sinks of type `panic` that panic as `collector` says.
fn panicking(collector: &Arc<Collector>) -> SinkRegistry {
    let mut registry = SinkRegistry::with_builtins();
    let c = collector.clone();
    registry.register(
        "panic",
        move |_| Ok(Box::new(PanickingSink(c.clone())) as Box<dyn Sink>),
    );
    registry
}

/// Polls `check` every 10 ms for up to 10 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

macro_rules! app {
    ($bus:expr, $config:expr) => {
        test::init_service(App::new().configure(routes(web::Data::new(AdminState::new($bus.clone(), $config))))).await
    };
}

/// GET `path`: status and JSON body.
macro_rules! get {
    ($app:expr, $path:expr) => {{
        let response = test::call_service(&$app, test::TestRequest::get().uri($path).to_request()).await;
        let status = response.status().as_u16();
        let body = test::read_body(response).await;
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into())),
        )
    }};
}

/// POST `body` to `path`: status and JSON body.
macro_rules! post {
    ($app:expr, $path:expr, $body:expr) => {{
        let request = test::TestRequest::post().uri($path).set_payload($body).to_request();
        let response = test::call_service(&$app, request).await;
        let status = response.status().as_u16();
        let body = test::read_body(response).await;
        (status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
    }};
}

/// Publishes over `POST /api/v1/publish` arrive with their headers and retain flag, and
/// the topic list and the metrics count exactly what was published.
#[actix_web::test]
async fn http_publishes_are_counted_and_delivered() {
    let bus = Bus::start(BusConfig::default()).await.unwrap();
    let app = app!(bus, AdminConfig::default());
    let mut sub = bus.subscribe("hooks.>", Default::default()).await.unwrap();
    for i in 0..7 {
        let body = json!({ "topic": "hooks.github", "payload": format!("push {i}"), "headers": { "source": "gh" } });
        let (status, reply) = post!(app, "/api/v1/publish", body.to_string());
        assert_eq!(status, 200, "{reply}");
    }
    let body = json!({ "topic": "hooks.binary", "payload_base64": "AAEC", "retain": true });
    assert_eq!(post!(app, "/api/v1/publish", body.to_string()).0, 200);
    for i in 0..7 {
        let Some(streambus_core::Event::Delivery(d)) = futures::StreamExt::next(&mut sub).await else {
            panic!("no delivery")
        };
        assert_eq!(d.payload, format!("push {i}").as_bytes());
        assert_eq!(d.headers.get("source"), Some("gh"));
    }
    let Some(streambus_core::Event::Delivery(d)) = futures::StreamExt::next(&mut sub).await else {
        panic!("no delivery")
    };
    assert_eq!(&d.payload[..], &[0, 1, 2]);

    let (_, topics) = get!(app, "/api/v1/topics?name=hooks.github");
    assert_eq!(topics["items"][0]["published"], 7);
    let (_, binary) = get!(app, "/api/v1/topics?name=hooks.binary");
    assert_eq!(binary["items"][0]["retained"], true);
    let (_, overview) = get!(app, "/api/v1/overview");
    assert_eq!(overview["totals"]["metrics"]["published_messages"], 8);
    let (status, metrics) = get!(app, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("\nstreambus_messages_published_total 8\n"),
        "{metrics}"
    );
    let (_, sessions) = get!(app, "/api/v1/sessions?name=http");
    assert_eq!(sessions["items"][0]["messages_in"], 8);
    bus.shutdown().await;
}

/// Bad input gets the error body with the right status and field, and changes nothing.
#[actix_web::test]
async fn bad_input_gets_the_error_body() {
    let bus = Bus::start(BusConfig::default()).await.unwrap();
    let app = app!(bus, AdminConfig::default());
    let cases: [(&str, &str, u16, &str); 6] = [
        ("{\"payload\":\"x\"}", "topic", 400, "invalid_argument"),
        ("{\"topic\":\"a.*\"}", "topic", 400, "invalid_argument"),
        ("{\"topic\":\"a\",\"retain\":1}", "retain", 400, "invalid_argument"),
        (
            "{\"topic\":\"a\",\"payload_base64\":\"!!\"}",
            "payload_base64",
            400,
            "invalid_argument",
        ),
        (
            "{\"topic\":\"a\",\"payload\":\"x\",\"payload_base64\":\"AA==\"}",
            "payload_base64",
            400,
            "invalid_argument",
        ),
        ("[", "body", 400, "invalid_argument"),
    ];
    for (body, field, status, code) in cases {
        let (got, reply) = post!(app, "/api/v1/publish", body);
        assert_eq!(got, status, "{body}: {reply}");
        assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
    }
    let max = bus.config().limits.max_message_bytes;
    let big = json!({ "topic": "a", "payload": "x".repeat(max + 1) }).to_string();
    let (status, reply) = post!(app, "/api/v1/publish", big);
    assert_eq!(
        (status, &reply["error"]["field"]),
        (429, &json!("payload")),
        "over limits.max_message_bytes"
    );
    let huge = json!({ "topic": "a", "payload": "x".repeat(4 * max) }).to_string();
    let (status, reply) = post!(app, "/api/v1/publish", huge);
    assert_eq!(
        (status, &reply["error"]["field"]),
        (429, &json!("body")),
        "refused before it is read whole"
    );
    let (status, reply) = get!(app, "/api/v1/sessions/77");
    assert_eq!((status, &reply["error"]["code"]), (404, &json!("not_found")));
    let (status, reply) = get!(app, "/api/v1/topics?sort=colour");
    assert_eq!((status, &reply["error"]["field"]), (400, &json!("sort")));
    let (status, reply) = get!(app, "/api/v1/subscriptions?limit=0");
    assert_eq!((status, &reply["error"]["field"]), (400, &json!("limit")));
    let (status, _) = get!(app, "/api/v2/everything");
    assert_eq!(status, 404);
    // A node that does not federate has no cluster to show.
    let (status, reply) = get!(app, "/api/v1/cluster");
    assert_eq!((status, &reply["error"]["code"]), (404, &json!("not_found")));
    assert_eq!(bus.metrics().published_messages, 0, "nothing was published");
    bus.shutdown().await;
}

/// The close action ends an in-process session; `/readyz` says not ready once the bus
/// drains, while `/healthz` stays alive.
#[actix_web::test]
async fn close_action_and_probes() {
    let bus = Bus::start(BusConfig::default()).await.unwrap();
    let app = app!(bus, AdminConfig::default());
    let device = bus.connect(ConnectOptions::named("dev-9")).await.unwrap();
    let (_, list) = get!(app, "/api/v1/sessions?name=dev-9");
    let id = list["items"][0]["id"].as_u64().unwrap();
    let (status, _) = post!(app, &format!("/api/v1/sessions/{id}/close"), "");
    assert_eq!(status, 202);
    assert!(!device.is_open());
    eventually("the session is gone", async || {
        get!(app, "/api/v1/sessions?name=dev-9").1["total"] == 0
    })
    .await;

    assert_eq!(get!(app, "/readyz").0, 200);
    bus.quiesce(Duration::from_secs(1)).await;
    let (status, body) = get!(app, "/readyz");
    assert_eq!((status, &body["reason"]), (503, &json!("draining")));
    assert_eq!(get!(app, "/healthz").0, 200);
    bus.shutdown().await;
}

/// A sink that panics past its budget is quarantined in `/api/v1/sinks`, `/readyz`
/// follows `ready_requires_sinks`, and the restart action starts it again.
#[actix_web::test]
async fn quarantined_sinks_and_the_restart_action() {
    let collector = Collector::new();
    let registry = panicking(&collector);
    let mut sink = SinkConfig::new("flaky", "panic", &["jobs.>"]);
    sink.batch.max_delay_ms = 5;
    sink.restart.max_restarts = 1;
    sink.restart.initial_backoff_ms = 5;
    sink.restart.max_backoff_ms = 10;
    let config = BusConfig {
        sinks: vec![sink],
        ..BusConfig::default()
    };
    let bus = Bus::start_with_sinks(config, registry).await.unwrap();
    let strict = AdminConfig {
        ready_requires_sinks: true,
        ..AdminConfig::default()
    };
    let app = app!(bus, strict);
    let lenient = app!(bus, AdminConfig::default());
    collector.panic_writes.store(100, Ordering::Relaxed);
    bus.publish_message(Message::new(Topic::new("jobs.a").unwrap(), PANIC))
        .await
        .unwrap();
    eventually("quarantined", async || {
        get!(app, "/api/v1/sinks").1[0]["status"] == "quarantined"
    })
    .await;
    let (status, body) = get!(app, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(get!(lenient, "/readyz").0, 200, "not asked to follow the sinks");
    let (_, metrics) = get!(app, "/metrics");
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("streambus_sink_status{sink=\"flaky\",status=\"quarantined\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("streambus_actor_restarts_total{kind=\"sink\"} 1"),
        "{text}"
    );

    collector.panic_writes.store(0, Ordering::Relaxed);
    let opens = collector.opens.load(Ordering::Relaxed);
    let (status, snapshot) = post!(app, "/api/v1/sinks/flaky/restart", "");
    assert_eq!(status, 200, "{snapshot}");
    eventually("a new incarnation", async || {
        collector.opens.load(Ordering::Relaxed) > opens
    })
    .await;
    eventually("ready again", async || get!(app, "/readyz").0 == 200).await;
    let (status, body) = post!(app, "/api/v1/sinks/ghost/restart", "");
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    bus.shutdown().await;
}

/// The dashboard page is served, and its data and stream answer.
#[actix_web::test]
async fn dashboard_page_and_data() {
    let bus = Bus::start(BusConfig::default()).await.unwrap();
    let app = app!(bus, AdminConfig::default());
    let (status, page) = get!(app, "/");
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("EventSource"));
    let (status, data) = get!(app, "/api/v1/dashboard");
    assert_eq!(status, 200);
    assert_eq!(data["tree"]["children"].as_array().unwrap().len(), 3);
    let response = test::call_service(
        &app,
        test::TestRequest::get().uri("/api/v1/dashboard/stream").to_request(),
    )
    .await;
    assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
    bus.shutdown().await;
}

/// Every `streambus_*` series the shipped Grafana dashboard queries is one `/metrics`
/// exposes (histogram series by their `_bucket` suffix).
#[actix_web::test]
async fn the_grafana_dashboard_queries_real_metrics() {
    let collector = Collector::new();
    let registry = panicking(&collector);
    let config = BusConfig {
        sinks: vec![SinkConfig::new("s", "panic", &["x.>"])],
        ..BusConfig::default()
    };
    let bus = Bus::start_with_sinks(config, registry).await.unwrap();
    let app = app!(bus, AdminConfig::default());
    let (_, metrics) = get!(app, "/metrics");
    let exposed: std::collections::HashSet<String> = metrics
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let dashboard = include_str!("../../../deploy/grafana-dashboard.json");
    let mut queried: Vec<&str> = dashboard
        .match_indices("streambus_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    queried.sort_unstable();
    queried.dedup();
    assert!(queried.len() > 15, "{queried:?}");
    // Only a durable sink has a disk buffer to report.
    let durable_only = ["streambus_sink_buffer_bytes"];
    for name in queried {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            exposed.contains(family) || durable_only.contains(&family),
            "the dashboard queries {name}, which /metrics does not expose"
        );
    }
    bus.shutdown().await;
}

/// Per-topic series exist only for the topics named in `admin.metrics_topics`.
#[actix_web::test]
async fn per_topic_series_only_for_configured_topics() {
    let bus = Bus::start(BusConfig::default()).await.unwrap();
    let config = AdminConfig {
        metrics_topics: vec!["plant.line1.speed".into(), "plant.idle".into()],
        ..AdminConfig::default()
    };
    let app = app!(bus, config);
    let _sub = bus.subscribe("plant.>", Default::default()).await.unwrap();
    for topic in ["plant.line1.speed", "plant.line1.speed", "plant.line2.speed"] {
        bus.publish(topic, "1").await.unwrap();
    }
    let (_, metrics) = get!(app, "/metrics");
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("streambus_topic_published_total{topic=\"plant.line1.speed\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("streambus_topic_subscribers{topic=\"plant.line1.speed\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("plant.line2.speed"),
        "an unconfigured topic has no series: {text}"
    );
    assert!(
        !text.contains("plant.idle"),
        "a configured topic with no actor has no series: {text}"
    );
    bus.shutdown().await;
}
