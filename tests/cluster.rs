//! Several `streambus serve` nodes federated over a real 3-node NATS cluster (Debian's
//! `nats-server` on private ports, JetStream on): delivery across nodes exactly once
//! and in order, overlapping filters, queue groups spanning nodes, retained values, no
//! forwarding loop, and losing a NATS server or a bus node.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/nats_cluster.rs"]
mod nats_cluster;
#[path = "common/served.rs"]
mod served;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use harness::{wait_until, within};
use nats_cluster::NatsCluster;
use served::Served;
use streambus::client::{Client, ClientOptions, ClientSubscription as Subscription};
use streambus::{Event, Message, SubscriptionOptions, Topic};

/// A bus node named `name` whose NATS server is `cluster`'s server `first`.
fn node(cluster: &NatsCluster, name: &str, first: usize) -> Served {
    node_with(cluster, name, first, &[])
}

/// [`node`] with more arguments for `streambus serve`.
fn node_with(cluster: &NatsCluster, name: &str, first: usize, extra: &[&str]) -> Served {
    let urls = cluster.urls_from(first);
    let mut args = vec!["--grpc-addr", "127.0.0.1:0", "--cluster", &urls, "--node", name];
    args.extend_from_slice(extra);
    Served::start(&args, &[("STREAMBUS_CLUSTER__RETAINED_REPLICAS", "3")])
}

/// A config file giving a node a `file` sink on `sensors.>` writing under `dir`.
fn file_sink_config(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[storage]\ndata_dir = \"{data}\"\n\n[[sinks]]\nname = \"files\"\ntype = \"file\"\ntopics = [\"sensors.>\"]\npath = \"{out}\"\n",
            data = dir.join(format!("{name}-data")).display(),
            out = dir.join(format!("{name}-out")).display(),
        ),
    )
    .unwrap();
    config
}

/// Records in the files of a `file` sink's directory whose topic is not a warm-up one.
fn sink_records(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        n += text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v["topic"].as_str().is_some_and(|t| !t.contains("warm")))
            .count();
    }
    n
}

async fn client(node: &Served, name: &str) -> Client {
    Client::connect_with(ClientOptions::new(node.url.clone()).name(name))
        .await
        .unwrap()
}

/// `GET /api/v1/cluster` of a node.
async fn cluster_info(node: &Served) -> serde_json::Value {
    cluster_info_at(node.admin.as_ref().unwrap()).await
}

/// `/api/v1/cluster` of the node whose admin plane is at `admin`.
async fn cluster_info_at(admin: &str) -> serde_json::Value {
    reqwest::get(format!("{admin}/api/v1/cluster"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `published` of topic `name` on a node (0 if it is not alive there).
async fn topic_published(node: &Served, name: &str) -> u64 {
    let admin = node.admin.as_ref().unwrap();
    let page: serde_json::Value = reqwest::get(format!("{admin}/api/v1/topics?name={name}&limit=1000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["topic"] == name)
        .map(|t| t["published"].as_u64().unwrap())
        .sum()
}

/// Publishes each of `topics` (warm-up topics: their names contain `warm`) on
/// `publisher` every 100 ms until each of `subs` has a delivery of one: the NATS
/// interest of every node has spread through the NATS cluster.
async fn warm_up(publisher: &Client, topics: &[&str], subs: &mut [&mut Subscription]) {
    for (i, sub) in subs.iter_mut().enumerate() {
        within(
            &format!("the cluster carries a warm-up topic to subscription {i}"),
            async {
                loop {
                    for topic in topics {
                        publisher.publish_acked(topic, "warm").await.unwrap();
                    }
                    match tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
                        Ok(Some(Event::Delivery(d))) if warm(&d.topic) => return,
                        Ok(other @ (Some(_) | None)) => panic!("unexpected {other:?}"),
                        Err(_) => {}
                    }
                }
            },
        )
        .await;
    }
}

fn warm(topic: &Topic) -> bool {
    topic.as_str().contains("warm")
}

/// Reads `sub` until `n` deliveries outside the warm-up topics arrived; fails on a gap
/// or an end. Returns (topic, payload) in arrival order.
async fn collect(sub: &mut Subscription, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + harness::PATIENCE;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => panic!("timed out after {} of {n} deliveries", got.len()),
            Ok(Some(Event::Delivery(d))) if warm(&d.topic) => {}
            Ok(Some(Event::Delivery(d))) => {
                got.push((d.topic.to_string(), String::from_utf8(d.payload.to_vec()).unwrap()))
            }
            Ok(other) => panic!("unexpected {other:?} after {} deliveries", got.len()),
        }
    }
    got
}

/// Nothing more arrives on `sub` (outside the warm-up topics) for a while.
async fn quiet(sub: &mut Subscription) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => return,
            Ok(Some(Event::Delivery(d))) if warm(&d.topic) => {}
            Ok(other) => panic!("nothing more expected, got {other:?}"),
        }
    }
}

/// `got` split by topic: the bus keeps a publisher's order per topic.
fn by_topic(got: &[(String, String)]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut topics = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for (topic, payload) in got {
        topics.entry(topic.clone()).or_default().push(payload.parse().unwrap());
    }
    topics
}

/// Per topic, the numbers in `got` are strictly increasing (one publisher: its order is
/// kept, nothing repeats).
fn in_order(got: &[(String, String)]) {
    for (topic, numbers) in by_topic(got) {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{topic}: out of order or repeated"
        );
    }
}

/// A publisher on A, subscribers on A, B and C with different and overlapping filters:
/// each subscription gets exactly its matching messages, once, in the publisher's
/// order; after 10,000 messages every node's counts are exact (no loop, no echo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_exactly_once_in_order() {
    let Some(nats) = NatsCluster::start(3) else { return };
    // A and B each write `sensors.>` to a file sink of their own.
    let dir = tempfile::tempdir().unwrap();
    let (config_a, config_b) = (file_sink_config(dir.path(), "a"), file_sink_config(dir.path(), "b"));
    let (a, b, c) = (
        node_with(&nats, "a", 0, &["--config", config_a.to_str().unwrap()]),
        node_with(&nats, "b", 1, &["--config", config_b.to_str().unwrap()]),
        node(&nats, "c", 2),
    );
    let (pa, sa, sb, sc) = (
        client(&a, "pub-a").await,
        client(&a, "sub-a").await,
        client(&b, "sub-b").await,
        client(&c, "sub-c").await,
    );
    let opts = SubscriptionOptions::default;
    let mut on_a = sa.subscribe("sensors.>", opts()).await.unwrap();
    let mut on_b_all = sb.subscribe("sensors.>", opts()).await.unwrap();
    // Covered by `sensors.>` on the same node: no second NATS subscription.
    let mut on_b_temp = sb.subscribe("sensors.*.temp", opts()).await.unwrap();
    let mut on_c_temp = sc.subscribe("sensors.*.temp", opts()).await.unwrap();
    // Partial overlap on one node: both are NATS subscriptions; `sensors.d1.temp`
    // comes twice off NATS and is delivered once to each.
    let mut on_c_d1 = sc.subscribe("sensors.d1.*", opts()).await.unwrap();
    warm_up(
        &pa,
        &["sensors.warm.temp", "sensors.d1.warm"],
        &mut [&mut on_a, &mut on_b_all, &mut on_b_temp, &mut on_c_temp, &mut on_c_d1],
    )
    .await;
    let before_a = cluster_info(&a).await["forwarded"].as_u64().unwrap();
    let received = |info: serde_json::Value| info["received"].as_u64().unwrap();
    let (before_b, before_c) = (received(cluster_info(&b).await), received(cluster_info(&c).await));

    const N: usize = 10_000;
    let messages: Vec<Message> = (0..N)
        .map(|i| {
            let kind = if (i / 10) % 2 == 0 { "temp" } else { "hum" };
            Message::new(
                Topic::new(&format!("sensors.d{}.{kind}", i % 10)).unwrap(),
                i.to_string(),
            )
        })
        .collect();
    // Core NATS has no flow control from a receiving node back to the publishing one: a
    // node that falls more than its subscription's capacity behind loses messages,
    // reported as gaps (the loss test covers that). Here the publisher stays within
    // WINDOW messages of what B and C have taken off NATS, so that a loaded machine
    // cannot turn this test into that one. C takes the temperatures and, on a second
    // subscription, `sensors.d1.*` (so `sensors.d1.temp` twice).
    const WINDOW: usize = 2_000;
    let for_c = |sent: usize| {
        (0..sent)
            .map(|i| usize::from((i / 10) % 2 == 0) + usize::from(i % 10 == 1))
            .sum::<usize>() as u64
    };
    let (b_admin, c_admin) = (b.admin.clone().unwrap(), c.admin.clone().unwrap());
    let publisher = tokio::spawn(async move {
        for (i, chunk) in messages.chunks(500).enumerate() {
            let behind = (i * 500).saturating_sub(WINDOW);
            wait_until("B and C within the window", || {
                let (b_admin, c_admin) = (b_admin.clone(), c_admin.clone());
                async move {
                    let b_took = received(cluster_info_at(&b_admin).await) - before_b;
                    let c_took = received(cluster_info_at(&c_admin).await) - before_c;
                    b_took >= behind as u64 && c_took >= for_c(behind)
                }
            })
            .await;
            pa.publish_batch(chunk.to_vec(), true).await.unwrap();
        }
    });

    // Every subscription is read at once: one that nobody reads holds its node's topics
    // back (its policy is `block`), as it should.
    let (all, got_b, got_b_temp, got_c_temp, got_c_d1) = tokio::join!(
        collect(&mut on_a, N),
        collect(&mut on_b_all, N),
        collect(&mut on_b_temp, N / 2),
        collect(&mut on_c_temp, N / 2),
        collect(&mut on_c_d1, N / 10),
    );
    publisher.await.unwrap();
    assert_eq!(all.len(), N);
    in_order(&all);
    let expected = by_topic(&all);
    assert_eq!(expected.len(), 20);
    assert!(expected.values().all(|n| n.len() == N / 20));
    let only = |pick: fn(&str) -> bool| {
        expected
            .iter()
            .filter(|(t, _)| pick(t))
            .map(|(t, n)| (t.clone(), n.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    // Each subscription: exactly its topics, each message once, in the publisher's order.
    assert_eq!(by_topic(&got_b), expected, "B sees what A sees");
    let temps = only(|t| t.ends_with(".temp"));
    assert_eq!(by_topic(&got_b_temp), temps);
    assert_eq!(by_topic(&got_c_temp), temps);
    let d1 = only(|t| t.starts_with("sensors.d1."));
    assert_eq!(by_topic(&got_c_d1), d1);
    for sub in [&mut on_a, &mut on_b_all, &mut on_b_temp, &mut on_c_temp, &mut on_c_d1] {
        quiet(sub).await;
    }

    // Exact counts: A forwarded each message once and received nothing back; each
    // topic was published once on every node that has interest in it.
    let (ia, ib, ic) = (cluster_info(&a).await, cluster_info(&b).await, cluster_info(&c).await);
    assert_eq!(ia["forwarded"].as_u64().unwrap() - before_a, N as u64, "{ia}");
    assert_eq!(ia["received"], 0, "a node never hears itself: {ia}");
    assert_eq!(ib["forwarded"], 0, "relayed messages are never forwarded again: {ib}");
    assert_eq!(ic["forwarded"], 0, "{ic}");
    for info in [&ia, &ib, &ic] {
        assert_eq!(info["gaps"], 0, "{info}");
        assert_eq!(info["invalid"], 0, "{info}");
        assert_eq!(info["refused"], 0, "{info}");
    }
    assert_eq!(ib["subscriptions"], 1, "sensors.> covers sensors.*.temp: {ib}");
    assert_eq!(ic["subscriptions"], 2, "{ic}");
    assert!(
        ic["duplicates"].as_u64().unwrap() >= 500,
        "the overlap's copies were dropped: {ic}"
    );
    for topic in ["sensors.d0.temp", "sensors.d1.hum", "sensors.d1.temp"] {
        assert_eq!(topic_published(&a, topic).await, 500, "{topic} on a");
        assert_eq!(topic_published(&b, topic).await, 500, "{topic} on b");
    }
    assert_eq!(topic_published(&c, "sensors.d0.temp").await, 500);
    assert_eq!(topic_published(&c, "sensors.d1.temp").await, 500);
    assert_eq!(topic_published(&c, "sensors.d1.hum").await, 500);
    assert_eq!(
        topic_published(&c, "sensors.d0.hum").await,
        0,
        "no interest on c, nothing sent there"
    );

    // Each message is written by the node it was published on: all on A, none on B.
    wait_until("A's sink wrote every message", || async {
        sink_records(&dir.path().join("a-out")) == N
    })
    .await;
    assert_eq!(
        sink_records(&dir.path().join("b-out")),
        0,
        "B writes nothing A published"
    );

    // The admin plane shows the backplane: every node knows the three members.
    for n in [&a, &b, &c] {
        wait_until("each node lists the three members", || async {
            let info = cluster_info(n).await;
            let mut names: Vec<String> = info["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["node"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names == ["a", "b", "c"]
        })
        .await;
    }
    let metrics = reqwest::get(format!("{}/metrics", a.admin.as_ref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("streambus_cluster_connected 1"), "{metrics}");
    assert!(metrics.contains("streambus_cluster_forwarded_total"), "{metrics}");
    for n in [a, b, c] {
        n.terminate();
    }
}

/// A queue group with members on several nodes gets each message exactly once across
/// the cluster; a retained value set on A is replayed to a new subscriber on C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_span_nodes_and_retained_values_travel() {
    let Some(nats) = NatsCluster::start(3) else { return };
    let (a, b, c) = (node(&nats, "a", 0), node(&nats, "b", 1), node(&nats, "c", 2));
    let (pa, cb, cc) = (client(&a, "pub-a").await, client(&b, "b").await, client(&c, "c").await);
    let group = || SubscriptionOptions::default().queue_group("workers");
    let mut members = [
        cb.subscribe("jobs.>", group()).await.unwrap(),
        cc.subscribe("jobs.>", group()).await.unwrap(),
    ];
    // Both nodes' queue subscriptions reach NATS: wait until each member got one.
    let mut seen = [false, false];
    within("each member of the group got a warm-up job", async {
        let mut i = 0u64;
        while !seen.iter().all(|s| *s) {
            pa.publish_acked("jobs.warm", i.to_string()).await.unwrap();
            i += 1;
            for (k, m) in members.iter_mut().enumerate() {
                if let Ok(Some(Event::Delivery(_))) = tokio::time::timeout(Duration::from_millis(20), m.next()).await {
                    seen[k] = true;
                }
            }
        }
    })
    .await;
    for m in members.iter_mut() {
        quiet(m).await;
    }

    // A has no member: NATS picks one of B and C for each job.
    const N: usize = 600;
    let jobs: Vec<Message> = (0..N)
        .map(|i| Message::new(Topic::new(&format!("jobs.j{}", i % 3)).unwrap(), i.to_string()))
        .collect();
    pa.publish_batch(jobs.clone(), true).await.unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut per_member = [0usize; 2];
    within("every job once across the group", async {
        while counts.len() < N {
            for (k, m) in members.iter_mut().enumerate() {
                if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(20), m.next()).await {
                    let Event::Delivery(d) = event else { panic!("{event:?}") };
                    if warm(&d.topic) {
                        continue;
                    }
                    *counts
                        .entry(String::from_utf8(d.payload.to_vec()).unwrap())
                        .or_default() += 1;
                    per_member[k] += 1;
                }
            }
        }
    })
    .await;
    for m in members.iter_mut() {
        quiet(m).await;
    }
    assert!(counts.values().all(|&c| c == 1), "a job was delivered twice");
    assert_eq!(per_member.iter().sum::<usize>(), N);
    assert!(
        per_member.iter().all(|&n| n > 0),
        "NATS spread the jobs: {per_member:?}"
    );

    // A member on A: A serves the group itself, B and C drop their copies.
    let ca = client(&a, "a").await;
    let mut local = ca.subscribe("jobs.>", group()).await.unwrap();
    pa.publish_batch(jobs, true).await.unwrap();
    let got = collect(&mut local, N).await;
    assert_eq!(got.len(), N);
    for m in members.iter_mut() {
        quiet(m).await;
    }
    wait_until("B and C dropped the copies A served", || async {
        let served = cluster_info(&b).await["served_elsewhere"].as_u64().unwrap()
            + cluster_info(&c).await["served_elsewhere"].as_u64().unwrap();
        served == N as u64
    })
    .await;

    // Retained: set on A, replayed to a new subscriber on C (which had no interest when
    // it was published), through the replicated retained stream.
    let mut lamp = Message::new(Topic::new("state.lamp").unwrap(), "on");
    lamp.retain = true;
    pa.publish_batch(vec![lamp], true).await.unwrap();
    // The retained stream is replicated three times: the JetStream cluster may still be
    // electing its leaders, so this allows longer than other steps. C subscribes only
    // once it has the value from the stream (had it subscribed sooner, the forwarded
    // publish itself might have reached it live).
    tokio::time::timeout(Duration::from_secs(40), async {
        while cluster_info(&c).await["retained_received"].as_u64().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("C took the retained value from the stream");
    assert!(cluster_info(&a).await["retained_written"].as_u64().unwrap() >= 1);
    let mut sub = cc.subscribe("state.>", SubscriptionOptions::default()).await.unwrap();
    let value = match within("C replays the retained value", sub.next()).await {
        Some(Event::Delivery(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(value.payload, "on");
    assert!(value.retained, "a replay, not a live delivery");
    for n in [a, b, c] {
        n.terminate();
    }
}

/// Killing a NATS server: the nodes on it fail over to the others, traffic continues,
/// and every message is either delivered or reported lost in a gap. Killing a bus node:
/// its client reconnects to another node through the SDK's server list, resubscribes,
/// and gets what is published on the first node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_server_or_a_node_loses_only_what_is_reported() {
    let Some(mut nats) = NatsCluster::start(3) else { return };
    let (a, b, c) = (node(&nats, "a", 0), node(&nats, "b", 1), node(&nats, "c", 2));
    let pa = client(&a, "pub-a").await;
    let sc = client(&c, "sub-c").await;
    let mut on_c = sc.subscribe("feed.>", SubscriptionOptions::default()).await.unwrap();
    // A roaming device on B, with C as its fallback.
    let mut options = ClientOptions::new(b.url.clone()).fallback(c.url.clone()).name("roamer");
    options.reconnect_initial = Duration::from_millis(20);
    options.reconnect_max = Duration::from_millis(200);
    let roamer = Client::connect_with(options).await.unwrap();
    let mut roaming = roamer
        .subscribe("roam.>", SubscriptionOptions::default())
        .await
        .unwrap();
    warm_up(&pa, &["feed.warm"], &mut [&mut on_c]).await;
    warm_up(&pa, &["roam.warm"], &mut [&mut roaming]).await;

    // Kill A's NATS server while A publishes.
    const N: u64 = 4_000;
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            pa.publish_acked("feed.x", i.to_string()).await.unwrap();
            if i == N / 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        pa
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    nats.kill(0);
    let pa = publisher.await.unwrap();
    let (mut delivered, mut lost, mut last) = (0u64, 0u64, None::<u64>);
    within("every message delivered or reported lost", async {
        while delivered + lost < N {
            match on_c.next().await {
                Some(Event::Delivery(d)) if warm(&d.topic) => {}
                Some(Event::Delivery(d)) => {
                    let i: u64 = std::str::from_utf8(&d.payload).unwrap().parse().unwrap();
                    assert!(last.is_none_or(|l| i > l), "order kept");
                    last = Some(i);
                    delivered += 1;
                }
                Some(Event::Gap(g)) => lost += g.dropped,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(delivered + lost, N, "every message accounted for");
    assert_eq!(last, Some(N - 1), "traffic continued through the other servers");
    let ia = cluster_info(&a).await;
    assert_eq!(ia["connected"], true, "A failed over: {ia}");
    let ic = cluster_info(&c).await;
    assert_eq!(ic["lost"].as_u64().unwrap(), lost, "C's gaps are the lost ones: {ic}");

    // Kill bus node B: the roamer moves to C and resubscribes there.
    b.kill();
    wait_until("the roamer reconnected to C", || async { roamer.reconnects() >= 1 }).await;
    within("the roamer gets what A publishes, through C", async {
        loop {
            pa.publish_acked("roam.after", "x").await.unwrap();
            match tokio::time::timeout(Duration::from_millis(100), roaming.next()).await {
                Ok(Some(Event::Delivery(d))) if d.topic.as_str() == "roam.after" => return,
                _ => {}
            }
        }
    })
    .await;
    for n in [a, c] {
        n.terminate();
    }
}

/// With every NATS server gone, a node keeps serving its own clients: local delivery
/// never waits for the backplane, and what could not be forwarded is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_nats_keeps_delivering_locally() {
    let Some(mut nats) = NatsCluster::start(1) else { return };
    let a = node(&nats, "a", 0);
    let (pa, sa) = (client(&a, "pub-a").await, client(&a, "sub-a").await);
    let mut local = sa.subscribe("local.>", SubscriptionOptions::default()).await.unwrap();
    wait_until("A is connected to NATS", || async {
        cluster_info(&a).await["connected"] == true
    })
    .await;
    nats.kill(0);
    wait_until("A saw NATS go", || async {
        cluster_info(&a).await["connected"] == false
    })
    .await;

    const N: usize = 2_000;
    let messages: Vec<Message> = (0..N)
        .map(|i| Message::new(Topic::new("local.x").unwrap(), i.to_string()))
        .collect();
    for chunk in messages.chunks(200) {
        within("publishing without NATS", pa.publish_batch(chunk.to_vec(), true))
            .await
            .unwrap();
    }
    let got = collect(&mut local, N).await;
    in_order(&got);
    let info = cluster_info(&a).await;
    assert_eq!(info["forward_lost"].as_u64().unwrap(), N as u64, "{info}");
    assert_eq!(info["forwarded"], 0, "{info}");
    a.terminate();
}
