//! The admin plane of a real `streambus serve`, over HTTP, while clients use gRPC:
//! counters that match what was published, Prometheus's own parser on `/metrics`, an
//! operator closing a session, and a failing sink seen as `retrying`, then
//! `quarantined`, with `/readyz` following the configuration.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/served.rs"]
mod served;

use harness::*;
use proxy::Proxy;
use serde_json::Value;
use served::Served;
use streambus::client::{Client, ClientOptions};
use streambus::proto::streambus::v1 as pb;
use streambus::{Message, Topic};
use tonic::transport::Endpoint;

/// `GET` `path` of the admin plane: the status and the body as JSON (or as a string
/// when it is not JSON).
async fn get(admin: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{admin}{path}")).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// `POST` `body` (JSON) to `path`.
async fn post(admin: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{admin}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The value of the sample `name` (with its labels, as written) in a Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs `promtool check metrics` on `text`; true if promtool is not installed and this
/// is not CI (where `.ci/packages` installs it).
fn promtool_accepts(text: &str) -> bool {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool not installed; the Prometheus parser check is skipped");
            return true;
        }
        Err(e) => panic!("promtool is needed under CI=true (.ci/packages installs it): {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!(
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// After N publishes over gRPC (and one over HTTP), `/metrics` and `/api/v1/topics` say
/// exactly how many, the subscriber got them all, and Prometheus's parser accepts the
/// exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_what_was_published() {
    let served = Served::start(&["--grpc-addr", "127.0.0.1:0"], &[]);
    let admin = served.admin.clone().unwrap();
    assert_eq!(get(&admin, "/healthz").await.0, 200);
    assert_eq!(get(&admin, "/readyz").await.0, 200);

    let client = Client::connect_with(ClientOptions::new(served.url.clone()).name("counted"))
        .await
        .unwrap();
    let mut sub = client.subscribe("metered.>", Default::default()).await.unwrap();
    const N: u64 = 250;
    for chunk in 0..5 {
        let batch: Vec<Message> = (0..N / 5)
            .map(|i| Message::new(Topic::new("metered.a").unwrap(), format!("{chunk}-{i}")))
            .collect();
        assert_eq!(client.publish_batch(batch, true).await.unwrap(), N / 5);
    }
    let (status, reply) = post(
        &admin,
        "/api/v1/publish",
        serde_json::json!({ "topic": "metered.b", "payload": "over http", "headers": { "k": "v" } }),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let mut got = 0;
    while got < N + 1 {
        let event = within("deliveries", futures::StreamExt::next(&mut sub)).await;
        if let Some(streambus::Event::Delivery(_)) = event {
            got += 1;
        }
    }

    let (status, topics) = get(&admin, "/api/v1/topics?name=metered&sort=published").await;
    assert_eq!(status, 200);
    assert_eq!(topics["total"], 2, "{topics}");
    assert_eq!(topics["items"][0]["topic"], "metered.a");
    assert_eq!(topics["items"][0]["published"], N);
    assert_eq!(topics["items"][1]["published"], 1);

    let (status, metrics) = get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap().to_owned();
    assert_eq!(
        sample(&text, "streambus_messages_published_total"),
        Some((N + 1) as f64),
        "{text}"
    );
    assert!(sample(&text, "streambus_messages_delivered_total").unwrap() >= (N + 1) as f64);
    assert_eq!(
        sample(&text, "streambus_publish_to_delivery_seconds_count"),
        sample(&text, "streambus_messages_delivered_total"),
        "every live delivery has a latency"
    );
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(
        text.contains("streambus_refusals_total{code=\"invalid_argument\"} 0"),
        "{text}"
    );
    assert!(promtool_accepts(&text), "promtool rejected /metrics:\n{text}");

    // A refused publish is counted under its code.
    let (status, body) = post(&admin, "/api/v1/publish", serde_json::json!({ "topic": "bad..topic" })).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "topic");
    client.close();
    served.terminate();
}

/// A session opened over gRPC is listed with its peer; the operator's close ends its
/// stream (the client sees `UNAVAILABLE`) after what was buffered for it is sent.
/// Unknown and malformed ids get the error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_closes_a_session() {
    let served = Served::start(&["--grpc-addr", "127.0.0.1:0"], &[]);
    let admin = served.admin.clone().unwrap();
    let channel = Endpoint::from_shared(served.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = RawSession::open(channel).await;
    raw.send(Out::Hello(pb::Hello {
        client_name: "kick-me".into(),
        ..Default::default()
    }))
    .await;
    raw.start().await.unwrap();
    let In::Welcome(welcome) = raw.next().await else {
        panic!("no welcome")
    };
    raw.subscribe(1, "kick.>", pb::OverflowPolicy::Block, 100).await;
    raw.publish_acked(2, "kick.me", &["one", "two"]).await;

    let (status, list) = get(&admin, "/api/v1/sessions?name=kick-me").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1, "{list}");
    let row = &list["items"][0];
    assert_eq!(row["id"], welcome.session_id);
    assert!(row["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{row}");
    assert_eq!(row["subscriptions"], 1);
    assert_eq!(row["messages_in"], 2);
    let (status, one) = get(&admin, &format!("/api/v1/sessions/{}", welcome.session_id)).await;
    assert_eq!(status, 200);
    assert_eq!(one["subscription_list"][0]["filter"], "kick.>");

    let (status, _) = post(
        &admin,
        &format!("/api/v1/sessions/{}/close", welcome.session_id),
        Value::Null,
    )
    .await;
    assert_eq!(status, 202);
    let end = within("the stream's end", raw.end_status()).await;
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(end.message().contains("operator"), "{end:?}");
    wait_until("the session is gone", || async {
        get(&admin, "/api/v1/sessions?name=kick-me").await.1["total"] == 0
    })
    .await;

    let (status, body) = get(&admin, "/api/v1/sessions/999999").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = post(&admin, "/api/v1/sessions/999999/close", Value::Null).await;
    assert_eq!((status, &body["error"]["code"]), (404, &Value::from("not_found")));
    let (status, body) = get(&admin, "/api/v1/sessions/abc").await;
    assert_eq!((status, &body["error"]["field"]), (400, &Value::from("id")));
    let (status, body) = get(&admin, "/api/v1/sessions?limit=lots").await;
    assert_eq!((status, &body["error"]["field"]), (400, &Value::from("limit")));
    let (status, body) = get(&admin, "/no/such/thing").await;
    assert_eq!((status, &body["error"]["code"]), (404, &Value::from("not_found")));
    served.terminate();
}

/// A PostgreSQL sink that cannot reach its server is `retrying`; when the server comes
/// back with a table it cannot use (a fatal error at every start) it is `quarantined`
/// past its restart budget, and `/readyz` answers 503 because the configuration asks
/// for it. Fixed, the restart action brings it back to `running` and `/readyz` to 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_retrying_then_quarantined() {
    let Some(url) = postgres::url().await else { return };
    let table = "sb_test_admin_sink";
    postgres::unusable_table(&url, table).await;
    let db = postgres::client(&url).await;
    let proxy = Proxy::stopped(postgres::addr(&url)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streambus.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
ready_requires_sinks = true

[storage]
data_dir = "{data}"

[[sinks]]
name = "pg"
type = "postgres"
topics = ["metrics.>"]
url = "{url}"
table = "{table}"
connect_timeout_ms = 300
retry = {{ initial_backoff_ms = 20, max_backoff_ms = 100 }}
restart = {{ max_restarts = 1, initial_backoff_ms = 20, max_backoff_ms = 50 }}
"#,
            data = dir.path().join("data").display(),
            url = postgres::via(&url, proxy.addr),
        ),
    )
    .unwrap();
    let served = Served::start(
        &["--grpc-addr", "127.0.0.1:0", "--config", config.to_str().unwrap()],
        &[],
    );
    let admin = served.admin.clone().unwrap();
    let status_of = |admin: String| async move {
        let (_, sinks) = get(&admin, "/api/v1/sinks").await;
        sinks[0]["status"].as_str().unwrap_or_default().to_owned()
    };
    wait_until("the sink is retrying", || async {
        status_of(admin.clone()).await == "retrying"
    })
    .await;
    assert_eq!(get(&admin, "/readyz").await.0, 200, "retrying is not quarantined");

    proxy.resume().await;
    wait_until("the sink is quarantined", || async {
        status_of(admin.clone()).await == "quarantined"
    })
    .await;
    let (status, ready) = get(&admin, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready["reason"].as_str().unwrap().contains("pg"), "{ready}");
    let (_, metrics) = get(&admin, "/metrics").await;
    let text = metrics.as_str().unwrap();
    assert_eq!(
        sample(text, "streambus_sink_status{sink=\"pg\",status=\"quarantined\"}"),
        Some(1.0),
        "{text}"
    );
    let (_, tree) = get(&admin, "/api/v1/tree").await;
    let sinks = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sink_supervisor")
        .unwrap();
    assert_eq!(sinks["children"][0]["status"], "quarantined");

    // Fixed: the sink's own table is made at its next start.
    db.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
    let (status, snapshot) = post(&admin, "/api/v1/sinks/pg/restart", Value::Null).await;
    assert_eq!(status, 200, "{snapshot}");
    wait_until("the sink runs again", || async {
        status_of(admin.clone()).await == "running"
    })
    .await;
    assert_eq!(get(&admin, "/readyz").await.0, 200);
    let (status, body) = post(&admin, "/api/v1/sinks/nope/restart", Value::Null).await;
    assert_eq!((status, &body["error"]["code"]), (404, &Value::from("not_found")));
    served.terminate();
}
