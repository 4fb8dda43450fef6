//! Memory stays bounded whatever the clients do: the bus-wide budget holds publishers
//! back when a subscriber stalls many topics at once, and a stream whose client stops
//! reading is closed at the write deadline and its memory released.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/proxy.rs"]
mod proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use harness::{TestServer, wait_until, within};
use streambus::client::{Client, ClientOptions};
use streambus::proto::streambus::v1 as pb;
use streambus::{BusConfig, Event, Message, OverflowPolicy, SubscriptionOptions, Topic};

const BUDGET: usize = 8 * 1024 * 1024;
const PAYLOAD: usize = 4 * 1024;
const TOPICS_PER_PUBLISHER: usize = 10;
const PUBLISHERS: usize = 5;

/// One `block` subscriber on `t.>` that takes nothing, 5 publishers on 50 topics: the
/// topics together never hold more than the bus budget (each topic alone could hold
/// 4 MiB, 200 MiB in all), the publishers are held, and once the subscriber reads it
/// gets every acked message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_bounds_all_topics_together() {
    let mut config = BusConfig::default();
    config.limits.max_message_bytes = 64 * 1024;
    config.limits.max_memory_bytes = BUDGET;
    config.topics.mailbox_bytes = 4 * 1024 * 1024;
    let server = TestServer::start_with(config).await;
    let subscriber = server.client_with_credit("stuck", 0).await;
    let mut stuck = subscriber
        .subscribe(
            "t.>",
            SubscriptionOptions::default()
                .overflow(OverflowPolicy::Block)
                .buffer(256, 1 << 20),
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let client = server.client(&format!("pub{p}")).await;
        let (stop, acked) = (stop.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let topic = Topic::new(&format!("t.p{p}.k{}", n % TOPICS_PER_PUBLISHER)).unwrap();
                let batch = (0..8)
                    .map(|_| Message::new(topic.clone(), vec![p as u8; PAYLOAD]))
                    .collect();
                if client.publish_batch(batch, true).await.is_err() {
                    break;
                }
                acked.fetch_add(8, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    // Every publisher has waited, and the topics hold still (a snapshot reads topic
    // after topic, so it is only a consistent sum once nothing moves).
    let previous = parking_lot::Mutex::new(usize::MAX);
    wait_until("every publisher is held by the budget", || async {
        let s = server.snapshot().await;
        let in_topics: usize = s.topics.iter().map(|t| t.mailbox_bytes).sum();
        let still = std::mem::replace(&mut *previous.lock(), in_topics) == in_topics;
        s.memory.budget_waits >= PUBLISHERS as u64 && still
    })
    .await;
    let snap = server.snapshot().await;
    let in_topics: usize = snap.topics.iter().map(|t| t.mailbox_bytes).sum();
    assert!(snap.topics.len() >= 40, "{} topics", snap.topics.len());
    assert!(snap.memory.admitted_bytes <= BUDGET, "{:?}", snap.memory);
    // A held publisher has its topic's permit for the batch it waits with: one batch
    // each beyond the budget.
    let waiting = PUBLISHERS * 8 * PAYLOAD;
    assert!(
        in_topics <= BUDGET + waiting,
        "{in_topics} bytes in the topics' mailboxes"
    );
    // Nothing left the server (no credit): all that was acked sits in the topics and the
    // subscriber's buffer, within the budget plus that buffer.
    let acked_bytes = acked.load(Ordering::Relaxed) as usize * PAYLOAD;
    assert!(
        acked_bytes <= BUDGET + (1 << 20) + 8 * PAYLOAD,
        "{acked_bytes} bytes acked"
    );

    // The subscriber reads: the publishers go on, and nothing acked is lost.
    stop.store(true, Ordering::Relaxed);
    subscriber.grant(u64::MAX / 2).await.unwrap();
    for p in publishers {
        within("a publisher to finish", p).await.unwrap();
    }
    let total = acked.load(Ordering::Relaxed);
    let mut got = 0;
    while got < total {
        match within("deliveries", stuck.next()).await {
            Some(Event::Delivery(_)) => got += 1,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert_eq!(server.snapshot().await.memory.admitted_bytes, 0);
}

/// A client that subscribes and stops reading: once its outbound queue has been full
/// for the write deadline, its stream is closed as a slow consumer, its session and
/// subscription are gone (their memory released), and the stream ends with
/// RESOURCE_EXHAUSTED; publishers never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_reaped_at_the_write_deadline() {
    let mut config = BusConfig::default();
    config.grpc.write_deadline_ms = 300;
    config.grpc.outbound_frames = 4;
    config.grpc.outbound_bytes = 256 * 1024;
    let server = TestServer::start_with(config).await;
    let mut silent = server.raw(None).await;
    silent.subscribe(1, "flood", pb::OverflowPolicy::DropOldest, 0).await;
    let publisher = Client::connect_with(ClientOptions::new(server.url()).name("publisher").reconnect(false))
        .await
        .unwrap();
    let reaped = {
        let server = &server;
        let publisher = &publisher;
        wait_until("the silent client is reaped as a slow consumer", || async move {
            let batch = (0..16)
                .map(|_| Message::new(Topic::new("flood").unwrap(), vec![7u8; PAYLOAD]))
                .collect();
            publisher.publish_batch(batch, true).await.unwrap();
            let s = server.snapshot().await;
            s.session_manager.sessions_slow_consumer == 1 && !s.sessions.iter().any(|s| s.name == "raw")
        })
        .await;
        server.snapshot().await
    };
    let flood = reaped.topic("flood").map_or(0, |t| t.subscribers);
    assert_eq!(flood, 0, "the reaped subscription is gone from its topic");
    // What the transport still held comes first, then the end.
    let status = within("the silent stream's end", silent.end_status())
        .await
        .expect("ended with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("slow consumer"), "{}", status.message());
    // The publisher's own stream is fine.
    publisher.ping().await.unwrap();
}

/// One stalled subscriber of each overflow policy on `load.>` over 200 topics, with 20
/// publishers: under `block` the publishers are held by the bus budget and nothing is
/// lost; under the lossy policies the publishers never stall, the stalled buffer stays
/// within its bound and every drop is counted (the `disconnect` subscription is ended
/// as a slow consumer). Memory admitted to topics never passes the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_of_any_policy_stays_bounded() {
    for policy in [
        OverflowPolicy::Block,
        OverflowPolicy::DropOldest,
        OverflowPolicy::DropNewest,
        OverflowPolicy::Disconnect,
    ] {
        let mut config = BusConfig::default();
        config.limits.max_memory_bytes = BUDGET;
        let server = TestServer::start_with(config).await;
        let stalled = server.client_with_credit("stalled", 0).await;
        let _subscription = stalled
            .subscribe(
                "load.>",
                SubscriptionOptions::default().overflow(policy).buffer(128, 512 * 1024),
            )
            .await
            .unwrap();
        let published = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut publishers = Vec::new();
        for p in 0..20 {
            let client = server.client(&format!("pub{p}")).await;
            let (published, stop) = (published.clone(), stop.clone());
            publishers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let topic = Topic::new(&format!("load.t{}", (p * 10 + n) % 200)).unwrap();
                    let batch = (0..4)
                        .map(|_| Message::new(topic.clone(), vec![1u8; PAYLOAD]))
                        .collect();
                    if client.publish_batch(batch, true).await.is_err() {
                        break;
                    }
                    published.fetch_add(4, Ordering::Relaxed);
                    n += 1;
                }
            }));
        }
        // Well past what the budget and the stalled buffer can hold together, unless
        // the publishers are held (block).
        let far = ((BUDGET + (1 << 20)) / PAYLOAD) as u64 * 2;
        wait_until("the publishers are held or far past the bounds", || async {
            let s = server.snapshot().await;
            assert!(s.memory.admitted_bytes <= BUDGET, "{policy:?}: {:?}", s.memory);
            match policy {
                OverflowPolicy::Block => s.memory.budget_waits >= 20,
                _ => published.load(Ordering::Relaxed) >= far,
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let snap = server.snapshot().await;
        let stalled_subs: Vec<_> = snap
            .sessions
            .iter()
            .filter(|s| s.name == "stalled")
            .flat_map(|s| s.subscriptions.iter())
            .collect();
        match policy {
            OverflowPolicy::Block => {
                let sub = stalled_subs[0];
                assert!(sub.buffer.queued_bytes <= 512 * 1024, "{:?}", sub.buffer);
                assert_eq!(sub.buffer.dropped, 0);
            }
            OverflowPolicy::Disconnect => {
                assert!(stalled_subs.is_empty(), "the slow consumer's subscription was ended");
            }
            _ => {
                let sub = stalled_subs[0];
                assert!(sub.buffer.queued_bytes <= 512 * 1024, "{:?}", sub.buffer);
                assert!(sub.buffer.dropped > 0, "{policy:?}: drops are counted");
            }
        }
        if policy == OverflowPolicy::Block {
            // Let the held publishers go: they are refused once the server stops.
            drop(stalled);
        }
        for p in publishers {
            within("a publisher to stop", p).await.unwrap();
        }
        server.shutdown().await;
    }
}

/// Clients behind a black hole (a proxy that stops forwarding either way and leaves
/// the connections open): a subscriber under a flood, a chat stream, an idle session.
/// The server reaps each (the subscriber when its outbound queue has been stuck for the
/// write deadline, the others when HTTP/2 keepalive pings go unanswered), within the
/// deadline and the keepalive plus slack; a publisher on its own connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_clients_are_reaped() {
    use streambus::proto::stream::chat_service_client::ChatServiceClient;

    let mut config = BusConfig::default();
    config.grpc.write_deadline_ms = 500;
    config.grpc.http2_keepalive = true;
    config.grpc.keepalive_interval_ms = 300;
    config.grpc.keepalive_timeout_ms = 300;
    let server = TestServer::start_with(config).await;
    let proxy = proxy::Proxy::start(server.url().trim_start_matches("http://").parse().unwrap()).await;
    let via = format!("http://{}", proxy.addr);
    let connect = |name: &str| Client::connect_with(ClientOptions::new(via.clone()).name(name).reconnect(false));
    let subscriber = connect("hole-sub").await.unwrap();
    let mut flood = subscriber
        .subscribe("flood", SubscriptionOptions::default())
        .await
        .unwrap();
    let _idle = connect("hole-idle").await.unwrap();
    let (chat_tx, chat_rx) = tokio::sync::mpsc::channel(16);
    let channel = tonic::transport::Endpoint::from_shared(via.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut echoes = ChatServiceClient::new(channel)
        .bidirectional_chat(tokio_stream::wrappers::ReceiverStream::new(chat_rx))
        .await
        .unwrap()
        .into_inner();
    let hello = streambus::proto::stream::Message {
        content: "hello".into(),
        timestamp: 0,
    };
    chat_tx.send(hello).await.unwrap();
    assert!(within("an echo", echoes.message()).await.unwrap().is_some());
    let publisher = Client::connect_with(ClientOptions::new(server.url()).name("publisher").reconnect(false))
        .await
        .unwrap();
    let batch = || {
        (0..16)
            .map(|_| Message::new(Topic::new("flood").unwrap(), vec![7u8; PAYLOAD]))
            .collect()
    };
    publisher.publish_batch(batch(), true).await.unwrap();
    assert!(within("a delivery", flood.next()).await.is_some());
    assert_eq!(server.snapshot().await.sessions.len(), 4);

    proxy.freeze();
    let frozen = std::time::Instant::now();
    wait_until("every black-holed session reaped", || async {
        publisher.publish_batch(batch(), true).await.unwrap();
        let s = server.snapshot().await;
        s.sessions.len() == 1 && s.sessions[0].name == "publisher"
    })
    .await;
    let took = frozen.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "reaped after {took:?}");
    assert_eq!(server.snapshot().await.topic("flood").map_or(0, |t| t.subscribers), 0);
    publisher.ping().await.unwrap();
}

/// A real client process stopped with SIGSTOP (`streambus sub`, frozen mid-stream) while
/// its topic is flooded: the server closes it as a slow consumer within the write
/// deadline and drops its session; the frozen process, resumed, finds its stream ended
/// and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_client_process_is_reaped() {
    let mut config = BusConfig::default();
    config.grpc.write_deadline_ms = 300;
    config.grpc.outbound_frames = 4;
    config.grpc.outbound_bytes = 256 * 1024;
    let server = TestServer::start_with(config).await;
    let mut sub = std::process::Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(["sub", "frozen", "--url", &server.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the subscriber process is subscribed", || async {
        server.snapshot().await.topic_supervisor.subscriptions == 1
    })
    .await;
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &sub.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let publisher = server.client("publisher").await;
    // Past what its HTTP/2 window and the kernel's socket buffers take (several MiB on
    // loopback) quickly: 1 MiB per round.
    wait_until("the stopped client is reaped as a slow consumer", || async {
        let batch = (0..64)
            .map(|_| Message::new(Topic::new("frozen").unwrap(), vec![3u8; 4 * PAYLOAD]))
            .collect();
        publisher.publish_batch(batch, true).await.unwrap();
        let s = server.snapshot().await;
        s.session_manager.sessions_slow_consumer == 1 && s.topic_supervisor.subscriptions == 0
    })
    .await;
    signal("-CONT");
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..500 {
            if let Some(status) = sub.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = sub.kill();
        None
    })
    .await
    .unwrap();
    exited.expect("the resumed client finds its stream ended and exits");
}

/// Churn: 30 clients each open 100 subscriptions and publish a little, then all go away;
/// sessions, subscriptions, topics (once idle) and the runtime's tasks come back to where
/// they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    let mut config = BusConfig::default();
    config.topics.idle_timeout_ms = 100;
    let server = TestServer::start_with(config).await;
    let runtime = tokio::runtime::Handle::current();
    let tasks_before = runtime.metrics().num_alive_tasks();
    for round in 0..2 {
        let mut clients = Vec::new();
        for c in 0..30 {
            let client = server.client(&format!("churn{round}-{c}")).await;
            let mut subs = Vec::new();
            for n in 0..100 {
                subs.push(
                    client
                        .subscribe(&format!("churn.c{c}.s{n}"), SubscriptionOptions::default())
                        .await
                        .unwrap(),
                );
            }
            client.publish_acked(&format!("churn.c{c}.s0"), "x").await.unwrap();
            clients.push((client, subs));
        }
        let snap = server.snapshot().await;
        assert_eq!(snap.topic_supervisor.subscriptions, 30 * 100);
        drop(clients);
        wait_until("every session, subscription and topic is gone", || async {
            let s = server.snapshot().await;
            s.sessions.is_empty() && s.topic_supervisor.subscriptions == 0 && s.topics.is_empty()
        })
        .await;
    }
    wait_until("the runtime's tasks are back to where they were", || async {
        runtime.metrics().num_alive_tasks() <= tasks_before
    })
    .await;
}
