//! What a cluster backplane sees of a bus (`Bus::federation`), without NATS: interest
//! changes, the forwarder's subscription, and relayed batches reaching exactly the
//! subscribers they are for.

#[path = "common/harness.rs"]
mod harness;

use std::collections::HashSet;

use harness::*;
use streambus_core::{BusError, Event, InterestChange, Relay, SubscriptionOptions};

fn federated(c: &mut streambus_core::BusConfig) {
    c.cluster.servers = vec!["nats://127.0.0.1:1".into()];
}

fn opts() -> SubscriptionOptions {
    SubscriptionOptions::default()
}

/// (filter, group, held) of each change, sorted.
fn seen(changes: Vec<InterestChange>) -> Vec<(String, Option<String>, bool)> {
    let mut v: Vec<_> = changes
        .into_iter()
        .map(|c| (c.key.filter.to_string(), c.key.group.map(|g| g.to_string()), c.held))
        .collect();
    v.sort();
    v
}

/// A lone bus keeps no interest; a federated one reports a (filter, group) when its
/// first holder comes and when its last holder goes, never for `local_only` ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_follows_first_and_last_holders() {
    let lone = bus().await;
    assert!(matches!(lone.federation().await, Err(BusError::InvalidOption(_))));

    let bus = bus_with(federated).await;
    let fed = bus.federation().await.unwrap();
    let a1 = bus.subscribe("s.>", opts()).await.unwrap();
    let a2 = bus.subscribe("s.>", opts()).await.unwrap();
    let g = bus.subscribe("jobs.*", opts().queue_group("w")).await.unwrap();
    let _sink_like = bus.subscribe("x.>", opts().local_only()).await.unwrap();
    let forwarder = fed.forwarder(opts()).await.unwrap();
    assert_eq!(
        seen(fed.interest_changes().await),
        [("jobs.*".into(), Some("w".into()), true), ("s.>".into(), None, true)]
    );
    drop(a1);
    drop(forwarder);
    // The second holder keeps `s.>`: only the group's departure is a change.
    drop(g);
    assert_eq!(
        seen(fed.interest_changes().await),
        [("jobs.*".into(), Some("w".into()), false)]
    );
    drop(a2);
    assert_eq!(seen(fed.interest_changes().await), [("s.>".into(), None, false)]);
}

/// The forwarder gets what is published here, not what is relayed; relayed batches
/// reach plain subscribers or one group, never `local_only` ones; a relayed loss is a
/// gap; a relayed retained value is stored without being delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_batches_reach_exactly_their_subscribers() {
    let bus = bus_with(federated).await;
    let fed = bus.federation().await.unwrap();
    let mut forwarder = fed.forwarder(opts()).await.unwrap();
    let mut plain = bus.subscribe("t.>", opts()).await.unwrap();
    let mut sink = bus.subscribe("t.>", opts().local_only()).await.unwrap();
    let mut w = bus.subscribe("t.>", opts().queue_group("w")).await.unwrap();
    let mut v = bus.subscribe("t.>", opts().queue_group("v")).await.unwrap();

    // Published here: everyone, and the forwarder learns the groups served.
    bus.publish("t.a", "local").await.unwrap();
    for sub in [&mut plain, &mut sink, &mut w, &mut v] {
        assert_eq!(payloads(sub, 1).await, ["local"]);
    }
    match next(&mut forwarder).await {
        Some(Event::Delivery(d)) => {
            let served: HashSet<String> = d.groups_served.unwrap().iter().map(|g| g.to_string()).collect();
            assert_eq!(served, HashSet::from(["v".to_owned(), "w".to_owned()]));
        }
        other => panic!("{other:?}"),
    }

    fed.relay(vec![msg("t.a", "plain")], Relay::Plain).await.unwrap();
    fed.relay(vec![msg("t.a", "for-w")], Relay::Group("w".into()))
        .await
        .unwrap();
    fed.relay(vec![msg("t.a", "for-nobody")], Relay::Group("zz".into()))
        .await
        .unwrap();
    assert_eq!(payloads(&mut plain, 1).await, ["plain"]);
    assert_eq!(payloads(&mut w, 1).await, ["for-w"]);

    fed.relay(vec![msg("t.a", "")], Relay::Lost { count: 3, group: None })
        .await
        .unwrap();
    match next(&mut plain).await {
        Some(Event::Gap(gap)) => {
            assert_eq!(gap.dropped, 3);
            assert_eq!(gap.last_sequence - gap.first_sequence, 2);
        }
        other => panic!("{other:?}"),
    }
    let mut kept = msg("t.kept", "value");
    kept.retain = true;
    fed.relay(vec![kept], Relay::Retain).await.unwrap();
    let mut late = bus.subscribe("t.kept", opts()).await.unwrap();
    match next(&mut late).await {
        Some(Event::Delivery(d)) => {
            assert!(d.retained);
            assert_eq!(d.payload, "value");
        }
        other => panic!("{other:?}"),
    }

    // Nothing else reached anyone: not the sink, not the forwarder, not group v.
    bus.publish("t.end", "end").await.unwrap();
    for sub in [&mut plain, &mut sink, &mut w, &mut v, &mut forwarder] {
        assert_eq!(payloads(sub, 1).await, ["end"], "only the end marker is left");
    }
}
