//! Many devices on one node: ten thousand sessions through the real gRPC server open,
//! subscribe, publish, and close, and nothing of theirs is left behind.

#[path = "common/harness.rs"]
mod harness;

use harness::{In, Out, RawSession, TestServer, publish, wait_until_for};
use streambus::proto::streambus::v1 as pb;
use tonic::transport::Endpoint;

const CONNECTIONS: usize = 100;
const STREAMS_PER_CONNECTION: usize = 100;

/// 10,000 `Connect` streams (100 HTTP/2 connections × 100 streams, so that the test
/// process stays within its file limit) each say hello, subscribe to their own topic and
/// publish to it; a wildcard subscriber sees every message. With all of them open the
/// snapshot counts 10,000 sessions and topics; once they are gone, sessions,
/// subscriptions, topics and the server's tasks are back to where they were.
#[test]
fn ten_thousand_sessions_open_and_close_leaving_nothing() {
    let mut config = streambus::BusConfig::default();
    config.topics.idle_timeout_ms = 200;
    // The server on a runtime of its own, so that its task count is its alone.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.block_on(TestServer::start_with(config));
    let tasks = || server_runtime.metrics().num_alive_tasks();
    let before = tasks();
    let patience = client_runtime.block_on(async {
        let total = CONNECTIONS * STREAMS_PER_CONNECTION;
        let mut watcher = server.raw(None).await;
        watcher.subscribe(1, "dev.>", pb::OverflowPolicy::Block, 0).await;
        // The watcher gets every device's reading.
        let watching = tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                if let In::Deliveries(d) = watcher.next().await {
                    seen += d.deliveries.len();
                }
            }
            watcher
        });
        let started = std::time::Instant::now();
        let mut opened = Vec::new();
        for c in 0..CONNECTIONS {
            let channel = Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
            opened.push(tokio::spawn(async move {
                let mut sessions = Vec::with_capacity(STREAMS_PER_CONNECTION);
                for s in 0..STREAMS_PER_CONNECTION {
                    let mut raw = RawSession::open(channel.clone()).await;
                    raw.send(Out::Hello(pb::Hello {
                        client_name: format!("dev{c}-{s}"),
                        initial_credit: None,
                        ..Default::default()
                    }))
                    .await;
                    raw.start().await.unwrap();
                    assert!(matches!(raw.next().await, In::Welcome(_)));
                    let topic = format!("dev.c{c}.s{s}");
                    raw.subscribe(1, &topic, pb::OverflowPolicy::DropOldest, 0).await;
                    raw.send(publish(None, &topic, &["reading"])).await;
                    sessions.push(raw);
                }
                sessions
            }));
        }
        let mut sessions = Vec::new();
        for o in opened {
            sessions.extend(o.await.unwrap());
        }
        assert_eq!(sessions.len(), total);
        let opening = started.elapsed();
        eprintln!("{total} sessions opened in {opening:?}");
        let watcher = harness::within("every reading delivered", watching).await.unwrap();
        let snap = server.snapshot().await;
        assert_eq!(snap.session_manager.sessions, total + 1);
        assert_eq!(snap.topics.len(), total);
        assert!(tasks() > before + total, "every stream runs on the server");

        drop(sessions);
        drop(watcher);
        // While 10,000 sessions close, the supervisors' mailboxes hold their exits and
        // a snapshot may time out (it asks within 2 s): that is "not yet". Closing them
        // is given as long as opening them took (a loaded machine slows both alike).
        let patience = opening.max(harness::PATIENCE);
        wait_until_for("every session, subscription and topic gone", patience, || async {
            server.bus().snapshot().await.is_ok_and(|snap| {
                snap.session_manager.sessions == 0 && snap.sessions.is_empty() && snap.topics.is_empty()
            })
        })
        .await;
        patience
    });
    let deadline = std::time::Instant::now() + patience;
    while tasks() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "{} server tasks left, {before} before",
            tasks()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(server);
    server_runtime.shutdown_background();
}
