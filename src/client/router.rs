//! The frame router: each server frame of a connection to the request, ack or
//! subscription it answers, one function per frame kind.
//!
//! [`route`] is called by the connection's reader task for every frame, in order. Only
//! the event kinds (deliveries, gaps, a subscription's end) may wait: for room in the
//! subscription's queue, which is the client's backpressure (the reader stops, HTTP/2
//! flow control fills, the server's pump waits). Replies never wait.
//!
//! A frame that answers nothing known (a late reply after the request was given up, an
//! event for a subscription already dropped) is ignored; only a broken protocol (a
//! second `welcome`, an undecodable delivery) ends the connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use streambus_types::{ErrorCode, Event};

use super::ClientError;
use super::shared::{Pending, Shared};
use crate::convert;
use crate::proto::streambus::v1 as pb;
use pb::client_frame::Frame as Out;
use pb::server_frame::Frame as In;

/// Routes one server frame; an error ends the connection.
pub(super) async fn route(shared: &Arc<Shared>, frame: In) -> Result<(), ClientError> {
    match frame {
        In::Welcome(_) => return Err(ClientError::Protocol("welcome sent twice".into())),
        In::Deliveries(batch) => return deliveries(shared, batch).await,
        In::Gap(g) => return gap(shared, g).await,
        In::SubscriptionClosed(c) => subscription_closed(shared, c).await,
        In::Subscribed(s) => subscribed(shared, s),
        In::Unsubscribed(u) => unsubscribed(shared, u),
        In::PublishAck(ack) => publish_ack(shared, ack),
        In::PublishRefused(r) => publish_refused(shared, r),
        In::Error(e) => error(shared, e),
        In::Pong(p) => pong(shared, p),
    }
    Ok(())
}

/// The client error for a refusal with wire code `code`.
pub(super) fn refused(code: i32, message: String) -> ClientError {
    let code = pb::ErrorCode::try_from(code)
        .ok()
        .and_then(convert::domain_code)
        .unwrap_or(ErrorCode::Internal);
    ClientError::Refused { code, message }
}

/// A subscribe succeeded: map the server's id to the client's subscription. If the
/// subscription was dropped meanwhile, undo it on the server.
fn subscribed(shared: &Arc<Shared>, s: pb::Subscribed) {
    let orphan = {
        let mut state = shared.state();
        match state.pending.remove(&s.request_id) {
            Some(Pending::Subscribe { local, reply }) => match state.subscriptions.get_mut(&local) {
                Some(live) => {
                    live.server_id = Some(s.subscription_id);
                    state.by_server_id.insert(s.subscription_id, local);
                    let _ = reply.send(Ok(()));
                    false
                }
                None => true,
            },
            // Ids are unique, so no other kind of request has this one; a reply nobody
            // waits for any more is dropped.
            _ => false,
        }
    };
    if orphan {
        let frame = Out::Unsubscribe(pb::Unsubscribe {
            request_id: 0,
            subscription_id: s.subscription_id,
        });
        let shared = shared.clone();
        tokio::spawn(async move { shared.send(frame).await });
    }
}

/// An unsubscribe was confirmed.
fn unsubscribed(shared: &Shared, u: pb::Unsubscribed) {
    if let Some(Pending::Unsubscribe(reply)) = shared.state().pending.remove(&u.request_id) {
        let _ = reply.send(Ok(()));
    }
}

/// An acked publish was admitted.
fn publish_ack(shared: &Shared, ack: pb::PublishAck) {
    if let Some(Pending::Publish(reply)) = shared.state().pending.remove(&ack.publish_id) {
        let _ = reply.send(Ok(ack.accepted));
    }
}

/// An acked publish was refused.
fn publish_refused(shared: &Shared, r: pb::PublishRefused) {
    if let Some(Pending::Publish(reply)) = shared.state().pending.remove(&r.publish_id) {
        let _ = reply.send(Err(refused(r.code, r.message)));
    }
}

/// A request was refused; one without a known id (a fire-and-forget publish, a credit
/// grant) is counted and logged.
fn error(shared: &Shared, e: pb::Error) {
    let pending = shared.state().pending.remove(&e.request_id);
    match pending {
        Some(Pending::Subscribe { local, reply }) => {
            // A refused (re)subscribe is forgotten: dropping its event sender ends the
            // subscription's stream.
            shared.state().subscriptions.remove(&local);
            let _ = reply.send(Err(refused(e.code, e.message)));
        }
        Some(Pending::Unsubscribe(reply)) => {
            let _ = reply.send(Err(refused(e.code, e.message)));
        }
        Some(Pending::Publish(reply)) => {
            let _ = reply.send(Err(refused(e.code, e.message)));
        }
        Some(Pending::Ping(_)) | None => {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(request = e.request_id, error = %e.message, "server refused a frame");
        }
    }
}

/// A ping's answer.
fn pong(shared: &Shared, p: pb::Pong) {
    if let Some(Pending::Ping(reply)) = shared.state().pending.remove(&p.nonce) {
        let _ = reply.send(());
    }
}

/// Deliveries for one subscription.
async fn deliveries(shared: &Shared, batch: pb::DeliveryBatch) -> Result<(), ClientError> {
    let id = batch.subscription_id;
    let deliveries = convert::deliveries_from_wire(batch).map_err(|e| ClientError::Protocol(e.to_string()))?;
    forward(shared, id, deliveries.into_iter().map(Event::Delivery).collect()).await;
    Ok(())
}

/// Messages a subscription's overflow policy dropped.
async fn gap(shared: &Shared, g: pb::Gap) -> Result<(), ClientError> {
    let id = g.subscription_id;
    let gap = convert::gap_from_wire(g).map_err(|e| ClientError::Protocol(e.to_string()))?;
    forward(shared, id, vec![Event::Gap(gap)]).await;
    Ok(())
}

/// The server ended one subscription: its stream ends with the reason, and it is not
/// resubscribed after a reconnect.
async fn subscription_closed(shared: &Shared, c: pb::SubscriptionClosed) {
    let reason = convert::close_reason_from_wire(c.reason);
    let live = {
        let mut state = shared.state();
        let local = state.by_server_id.remove(&c.subscription_id);
        local.and_then(|l| state.subscriptions.remove(&l))
    };
    if let Some(live) = live {
        let _ = live.events.send(vec![Event::Closed(reason)]).await;
    }
}

/// Hands events to the subscription the server calls `server_id`, waiting for room.
async fn forward(shared: &Shared, server_id: u64, events: Vec<Event>) {
    let sender = shared.state().events_of(server_id);
    if let Some(sender) = sender {
        // Waiting here is the client's backpressure: the server sees it through HTTP/2.
        let _ = sender.send(events).await;
    }
}

#[cfg(test)]
mod tests {
    use streambus_types::{CloseReason, SubscriptionOptions};
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::client::ClientOptions;
    use crate::client::shared::LiveSubscription;

    /// A client's shared state with a connection whose request queue the test reads.
    fn connected() -> (Arc<Shared>, mpsc::Receiver<bytes::Bytes>) {
        let shared = Shared::new(ClientOptions::new("http://127.0.0.1:1"));
        let (frames, rx) = mpsc::channel(16);
        let room = crate::client::shared::Room::new(1 << 20);
        shared
            .frames
            .send_replace(Some(crate::client::shared::Queue { frames, room }));
        (shared, rx)
    }

    /// Registers client subscription `local` on `filter`, subscribing under `request`;
    /// returns its event receiver and the pending reply.
    fn subscribing(
        shared: &Shared,
        local: u64,
        filter: &str,
        request: u64,
    ) -> (mpsc::Receiver<Vec<Event>>, oneshot::Receiver<Result<(), ClientError>>) {
        let (events, rx) = mpsc::channel(8);
        let (reply, answer) = oneshot::channel();
        let mut state = shared.state();
        let subscribe = pb::Subscribe {
            filter: filter.into(),
            overflow: convert::overflow_to_wire(SubscriptionOptions::default().overflow) as i32,
            ..Default::default()
        };
        state.subscriptions.insert(
            local,
            LiveSubscription {
                request: subscribe,
                events,
                server_id: None,
            },
        );
        state.pending.insert(request, Pending::Subscribe { local, reply });
        (rx, answer)
    }

    /// Routes the server's `subscribed` for `request_id`, naming it `subscription_id`.
    async fn confirm(shared: &Arc<Shared>, request_id: u64, subscription_id: u64) {
        let subscribed = pb::Subscribed {
            request_id,
            subscription_id,
        };
        route(shared, In::Subscribed(subscribed)).await.unwrap();
    }

    fn deliveries_for(server_id: u64, topic: &str, sequences: &[u64]) -> In {
        In::Deliveries(pb::DeliveryBatch {
            subscription_id: server_id,
            topic: topic.into(),
            deliveries: sequences
                .iter()
                .map(|&sequence| pb::Delivery {
                    sequence,
                    payload: format!("p{sequence}").into_bytes().into(),
                    ..Default::default()
                })
                .collect(),
        })
    }

    fn sequences(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Delivery(d) => Some(d.sequence),
                _ => None,
            })
            .collect()
    }

    /// `subscribed` answers the subscribe and maps the server's id, so the deliveries
    /// that follow reach that subscription and no other.
    #[tokio::test]
    async fn subscribed_maps_the_server_id_and_deliveries_follow_it() {
        let (shared, _queue) = connected();
        let (mut temps, answer_a) = subscribing(&shared, 1, "t.>", 100);
        let (mut other, answer_b) = subscribing(&shared, 2, "o.>", 101);
        confirm(&shared, 100, 7).await;
        confirm(&shared, 101, 8).await;
        answer_a.await.unwrap().unwrap();
        answer_b.await.unwrap().unwrap();
        assert_eq!(shared.state().subscriptions[&1].server_id, Some(7));
        route(&shared, deliveries_for(7, "t.x", &[1, 2])).await.unwrap();
        route(&shared, deliveries_for(8, "o.y", &[5])).await.unwrap();
        // Events for a server id nobody has (a subscription already dropped) are ignored.
        route(&shared, deliveries_for(99, "t.x", &[3])).await.unwrap();
        assert_eq!(sequences(&temps.recv().await.unwrap()), [1, 2]);
        assert_eq!(sequences(&other.recv().await.unwrap()), [5]);
        assert!(temps.try_recv().is_err(), "nothing else for the first subscription");
    }

    /// A subscription dropped while its subscribe was in flight is undone on the server
    /// when the `subscribed` arrives.
    #[tokio::test]
    async fn a_subscription_dropped_while_subscribing_is_unsubscribed() {
        let (shared, mut queue) = connected();
        let (_events, _answer) = subscribing(&shared, 1, "t.>", 100);
        shared.state().subscriptions.remove(&1);
        confirm(&shared, 100, 7).await;
        match queue.recv().await.map(crate::client::call::unframed) {
            Some(Out::Unsubscribe(u)) => assert_eq!(u.subscription_id, 7),
            other => panic!("expected an unsubscribe, got {other:?}"),
        }
        assert!(shared.state().by_server_id.is_empty());
    }

    /// Acks and refusals answer their own publish; the refusal keeps its code, and a
    /// code the client does not know reads as internal.
    #[tokio::test]
    async fn acks_and_refusals_answer_their_publish() {
        let (shared, _queue) = connected();
        let (ok_tx, ok) = oneshot::channel();
        let (refused_tx, refused) = oneshot::channel();
        let (odd_tx, odd) = oneshot::channel();
        {
            let mut state = shared.state();
            state.pending.insert(1, Pending::Publish(ok_tx));
            state.pending.insert(2, Pending::Publish(refused_tx));
            state.pending.insert(3, Pending::Publish(odd_tx));
        }
        route(
            &shared,
            In::PublishAck(pb::PublishAck {
                publish_id: 1,
                accepted: 3,
            }),
        )
        .await
        .unwrap();
        route(
            &shared,
            In::PublishRefused(pb::PublishRefused {
                publish_id: 2,
                code: pb::ErrorCode::ResourceExhausted as i32,
                message: "full".into(),
            }),
        )
        .await
        .unwrap();
        route(
            &shared,
            In::PublishRefused(pb::PublishRefused {
                publish_id: 3,
                code: 1234,
                message: "?".into(),
            }),
        )
        .await
        .unwrap();
        assert_eq!(ok.await.unwrap().unwrap(), 3);
        match refused.await.unwrap() {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!((code, message.as_str()), (ErrorCode::ResourceExhausted, "full"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            odd.await.unwrap(),
            Err(ClientError::Refused {
                code: ErrorCode::Internal,
                ..
            })
        ));
        assert!(shared.state().pending.is_empty());
    }

    /// An `error` for a subscribe fails it and forgets the subscription; one for no
    /// known request (a fire-and-forget publish) is counted.
    #[tokio::test]
    async fn error_frames_fail_their_request_or_are_counted() {
        let (shared, _queue) = connected();
        let (mut events, answer) = subscribing(&shared, 1, "t.>", 100);
        let refusal = |request_id| {
            In::Error(pb::Error {
                request_id,
                code: pb::ErrorCode::InvalidArgument as i32,
                message: "bad".into(),
            })
        };
        route(&shared, refusal(100)).await.unwrap();
        assert!(matches!(
            answer.await.unwrap(),
            Err(ClientError::Refused {
                code: ErrorCode::InvalidArgument,
                ..
            })
        ));
        assert!(shared.state().subscriptions.is_empty());
        assert!(events.recv().await.is_none(), "the subscription's stream ended");
        route(&shared, refusal(0)).await.unwrap();
        route(&shared, refusal(0)).await.unwrap();
        assert_eq!(shared.refused.load(Ordering::Relaxed), 2);
    }

    /// `subscription_closed` ends that stream with its reason and forgets it, so a
    /// reconnect does not bring it back; gaps and pongs reach their owners.
    #[tokio::test]
    async fn gaps_closes_and_pongs() {
        let (shared, _queue) = connected();
        let (mut events, _answer) = subscribing(&shared, 1, "t.>", 100);
        confirm(&shared, 100, 7).await;
        let gap = pb::Gap {
            subscription_id: 7,
            topic: "t.x".into(),
            dropped: 3,
            first_sequence: 4,
            last_sequence: 6,
        };
        route(&shared, In::Gap(gap)).await.unwrap();
        match events.recv().await.unwrap().as_slice() {
            [Event::Gap(g)] => assert_eq!((g.dropped, g.first_sequence, g.last_sequence), (3, 4, 6)),
            other => panic!("expected a gap, got {other:?}"),
        }
        let closed = pb::SubscriptionClosed {
            subscription_id: 7,
            reason: pb::CloseReason::SlowConsumer as i32,
        };
        route(&shared, In::SubscriptionClosed(closed)).await.unwrap();
        assert!(matches!(
            events.recv().await.unwrap().as_slice(),
            [Event::Closed(CloseReason::SlowConsumer)]
        ));
        assert!(events.recv().await.is_none());
        assert!(shared.state().subscriptions.is_empty() && shared.state().by_server_id.is_empty());

        let (tx, pong) = oneshot::channel();
        shared.state().pending.insert(55, Pending::Ping(tx));
        route(&shared, In::Pong(pb::Pong { nonce: 55 })).await.unwrap();
        pong.await.unwrap();
    }

    /// A second `welcome`, or a delivery whose topic does not parse, breaks the protocol
    /// and ends the connection.
    #[tokio::test]
    async fn protocol_violations_end_the_connection() {
        let (shared, _queue) = connected();
        let welcome = In::Welcome(pb::Welcome::default());
        assert!(matches!(route(&shared, welcome).await, Err(ClientError::Protocol(_))));
        let (_events, _answer) = subscribing(&shared, 1, "t.>", 100);
        confirm(&shared, 100, 7).await;
        let bad = deliveries_for(7, "a..b", &[1]);
        assert!(matches!(route(&shared, bad).await, Err(ClientError::Protocol(_))));
    }

    /// After a reconnect every live subscription is resubscribed with its own request
    /// under a fresh id; the old connection's server ids route nothing, and the new
    /// connection's `subscribed` frames restore delivery.
    #[tokio::test]
    async fn reconnect_resubscribes_every_live_subscription() {
        let (shared, _queue) = connected();
        let (mut a, _) = subscribing(&shared, 1, "a.>", 100);
        let (mut b, _) = subscribing(&shared, 2, "b.*", 101);
        for (request_id, subscription_id) in [(100, 7), (101, 8)] {
            confirm(&shared, request_id, subscription_id).await;
        }
        // The connection is lost: pending requests fail, then a new one begins.
        let (tx, lost) = oneshot::channel();
        shared.state().pending.insert(200, Pending::Publish(tx));
        shared.fail_pending();
        assert!(matches!(lost.await.unwrap(), Err(ClientError::Disconnected)));
        let welcome = crate::client::Welcome {
            session_id: 2,
            max_message_bytes: 1024,
            max_frame_bytes: 4096,
            max_batch_messages: 8,
            max_subscriptions_per_session: 8,
        };
        let mut frames = shared.state().begin_connection(welcome.clone(), || shared.next_id());
        frames.sort_by(|x, y| x.filter.cmp(&y.filter));
        let filters: Vec<&str> = frames.iter().map(|f| f.filter.as_str()).collect();
        assert_eq!(filters, ["a.>", "b.*"]);
        assert_ne!(frames[0].request_id, frames[1].request_id);
        assert!(frames.iter().all(|f| ![100, 101].contains(&f.request_id)));
        {
            let state = shared.state();
            assert_eq!(state.welcome, Some(welcome));
            assert!(state.by_server_id.is_empty());
            assert!(state.subscriptions.values().all(|s| s.server_id.is_none()));
            assert_eq!(state.pending.len(), 2);
        }
        // The old ids route nothing any more.
        route(&shared, deliveries_for(7, "a.x", &[1])).await.unwrap();
        assert!(a.try_recv().is_err());
        // The new server assigns new ids; delivery follows them.
        for (frame, subscription_id) in frames.iter().zip([70, 80]) {
            confirm(&shared, frame.request_id, subscription_id).await;
        }
        route(&shared, deliveries_for(70, "a.x", &[2])).await.unwrap();
        route(&shared, deliveries_for(80, "b.y", &[3])).await.unwrap();
        assert_eq!(sequences(&a.recv().await.unwrap()), [2]);
        assert_eq!(sequences(&b.recv().await.unwrap()), [3]);
        assert!(shared.state().pending.is_empty());
    }
}
