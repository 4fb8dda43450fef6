//! The `Connect` stream: one client session over one bidi gRPC stream.
//!
//! [`open`] does the handshake in the request handler (the first frame must be `hello`;
//! too many sessions fails the call with `RESOURCE_EXHAUSTED`), opens a `Session` actor
//! through [`streambus_core::Bus::connect`], queues `welcome` and spawns the reader task;
//! the response body is the stream's bounded outbound queue.
//!
//! The reader task ([`Connection::run`]) reads client frames in order. Publishes go from
//! it straight to the topic actors and wait for admission, so a full topic stops the
//! reading, HTTP/2 flow control fills, and the client's sends wait: backpressure end to
//! end. Subscribe and unsubscribe go through the session actor; each subscription gets a
//! pump task ([`super::pump`]).
//!
//! # Ending
//!
//! - Client ends its request stream: graceful close (its publishes reach subscriber
//!   buffers, buffered deliveries are sent), then the stream ends OK.
//! - Client gone (reset, dead peer found by HTTP/2 keepalive): the session closes.
//! - Server shutdown: while the bus drains the stream goes on delivering (its publishes
//!   and subscribes are refused with `UNAVAILABLE`); once everything admitted is in
//!   subscriber buffers, graceful close, then `UNAVAILABLE`. What its subscriptions still
//!   hold at the drain deadline is counted and logged per subscription.
//! - Idle timeout (no frame for `grpc.idle_timeout_ms`): graceful close, then `UNAVAILABLE`.
//! - An operator closes the session (the admin plane, [`streambus_core::Bus::close_session`]):
//!   graceful close, then `UNAVAILABLE`.
//! - Protocol violation (second `hello`, undecodable bytes): `INVALID_ARGUMENT`; a frame
//!   over the size limit: `RESOURCE_EXHAUSTED`.
//!
//! Every other bad frame gets an in-band `error` or `publish_refused` naming its request
//! and the stream stays open.

use std::collections::HashMap;
use std::pin::pin;
use std::time::Duration;

use streambus_core::{BusError, SessionHandle, SubscriptionId, TopicRoute};
use streambus_types::{CloseReason, ErrorCode, Message, Topic};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use super::Context;
use super::outbound::{Outbound, OutboundStream};
use super::pump::{self, DeliveryCredits};
use crate::auth::Credentials;
use crate::convert;
use crate::proto::streambus::v1 as pb;
use crate::quiet::Signals;
use pb::client_frame::Frame as In;
use pb::server_frame::Frame as Out;

/// Name of a session whose client sent an empty name.
const ANONYMOUS: &str = "anonymous";

/// Handshakes and starts a session; returns the outbound queue's receiving end.
pub(crate) async fn open(
    context: Context,
    peer: Option<std::net::SocketAddr>,
    credentials: Credentials,
    mut inbound: Streaming<pb::ClientFrame>,
) -> Result<OutboundStream, Status> {
    let hello = match tokio::time::timeout(context.handshake_timeout(), inbound.message()).await {
        Err(_) => return Err(Status::invalid_argument("no hello frame in time")),
        Ok(Err(status)) => return Err(inbound_status(status)),
        Ok(Ok(None)) => return Err(Status::invalid_argument("stream ended before the hello frame")),
        Ok(Ok(Some(pb::ClientFrame {
            frame: Some(In::Hello(hello)),
        }))) => hello,
        Ok(Ok(Some(_))) => return Err(Status::invalid_argument("the first frame must be hello")),
    };
    let name = if hello.client_name.is_empty() {
        ANONYMOUS.to_owned()
    } else {
        hello.client_name
    };
    let credentials = credentials.with_hello(&hello.token, &hello.username, &hello.password);
    let mut options = context.connect_options(&name, &credentials).await?;
    options.peer = peer.map(|p| p.to_string());
    // Credentials that expire (a JWT's `exp`) end the stream when they do.
    let expires = options
        .access
        .as_ref()
        .and_then(|a| a.expires_at())
        .map(|at| Instant::now() + at.duration_since(std::time::SystemTime::now()).unwrap_or_default());
    let session = context.bus.connect(options).await.map_err(|e| convert::status(&e))?;
    let (out, rx) = context.outbound();
    let max_frame_bytes = super::max_frame_bytes(&context.limits);
    let limits = &context.limits;
    let welcome = pb::Welcome {
        session_id: session.id().0,
        limits: Some(pb::Limits {
            max_message_bytes: limits.max_message_bytes as u64,
            max_frame_bytes: max_frame_bytes as u64,
            max_batch_messages: limits.max_batch_messages as u64,
            max_subscriptions_per_session: limits.max_subscriptions_per_session as u64,
        }),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    // The queue is empty and has room for at least one frame.
    let _ = out.try_send(Ok(convert::frame(Out::Welcome(welcome))));
    let span = tracing::info_span!("connect", session = session.id().0, client = %name);
    let connection = Connection {
        credits: hello.initial_credit.map(DeliveryCredits::new),
        mixed_topics: hello.mixed_topics,
        routes: Routes::default(),
        session,
        out,
        pumps: HashMap::new(),
        give_up: watch::channel(false).0,
        max_frame_bytes,
        context,
        expires,
    };
    tokio::spawn(connection.run(inbound).instrument(span));
    Ok(rx)
}

/// Topics whose routes a stream keeps: a device publishing a few metrics in turn.
const ROUTES_PER_STREAM: usize = 4;

/// The routes (see [`TopicRoute`]) of the last few topics a stream published to: a
/// publisher that goes round a few topics skips the directory's lookup for each, and its
/// messages take the topic names already checked instead of checking and allocating
/// them again. Each route holds its topic's entry alive, so they are few.
///
/// Beside each route it keeps the name the route led to after its last publish, with a
/// fingerprint of it: finding a topic's slot compares fingerprints kept here, then the
/// one name that matches, and reads no other route's topic entry or name (at 10,000
/// streams every one of those is a cache miss).
#[derive(Debug, Default)]
struct Routes {
    slots: [TopicRoute; ROUTES_PER_STREAM],
    /// Each slot's topic as of its last publish, with its [`fingerprint`].
    names: [Option<(u64, Topic)>; ROUTES_PER_STREAM],
    /// The slot the next topic without a route takes (round robin).
    next: usize,
}

/// A pre-filter for topic names: their length and last eight bytes (the names one
/// device publishes to differ at their end). Equal names have equal fingerprints;
/// different names may share one, so a match is confirmed by comparing the names.
fn fingerprint(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut tail = [0u8; 8];
    let end = &bytes[bytes.len().saturating_sub(8)..];
    tail[..end.len()].copy_from_slice(end);
    u64::from_le_bytes(tail) ^ (bytes.len() as u64).rotate_right(8)
}

impl Routes {
    /// The checked topic named `name`, if a route leads there.
    fn known(&self, name: &str) -> Option<Topic> {
        let print = fingerprint(name);
        self.names
            .iter()
            .flatten()
            .find(|(p, topic)| *p == print && topic.as_str() == name)
            .map(|(_, topic)| topic.clone())
    }

    /// The slot for a batch: the one that leads to its first message's topic (found by
    /// identity when the batch took its names from [`Routes::known`]), else an empty
    /// one, else the next slot in turn (the publish looks the topic up and keeps it
    /// there). Call [`Routes::published`] with it after the publish.
    fn slot_for(&mut self, messages: &[Message]) -> usize {
        let found = messages.first().and_then(|m| {
            let same = |(_, topic): &(u64, Topic)| topic.is_same(&m.topic);
            self.names
                .iter()
                .position(|n| n.as_ref().is_some_and(same))
                .or_else(|| {
                    let print = fingerprint(m.topic.as_str());
                    let equal = |(p, topic): &(u64, Topic)| *p == print && *topic == m.topic;
                    self.names.iter().position(|n| n.as_ref().is_some_and(equal))
                })
        });
        match found.or_else(|| self.slots.iter().position(|r| r.topic().is_none())) {
            Some(i) => i,
            None => {
                let i = self.next;
                self.next = (i + 1) % ROUTES_PER_STREAM;
                i
            }
        }
    }

    /// Notes where slot `i` leads after a publish through it (the publish may have
    /// looked a topic up, or found the old one gone).
    fn published(&mut self, i: usize) {
        let now = self.slots[i].topic();
        let unchanged = match (&self.names[i], now) {
            (Some((_, kept)), Some(topic)) => kept.is_same(topic),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            self.names[i] = now.map(|topic| (fingerprint(topic.as_str()), topic.clone()));
        }
    }
}

/// The status that ends a stream whose inbound side failed.
fn inbound_status(status: Status) -> Status {
    match status.code() {
        // tonic reports a frame over the decode limit as OUT_OF_RANGE; gRPC clients
        // expect RESOURCE_EXHAUSTED for it.
        Code::OutOfRange => Status::resource_exhausted(status.message().to_owned()),
        Code::Internal | Code::Unknown => Status::invalid_argument(format!("malformed frame: {}", status.message())),
        _ => status,
    }
}

impl Context {
    /// How long a new stream may take to send its first frame.
    fn handshake_timeout(&self) -> Duration {
        match self.grpc.idle_timeout_ms {
            0 => Duration::from_secs(30),
            ms => Duration::from_millis(ms),
        }
    }
}

/// Why the reader stopped.
enum End {
    /// The client ended its request stream: close gracefully, end OK.
    ClientDone,
    /// The client is gone: nobody to tell.
    ClientGone,
    /// The client stopped reading for the write deadline: the outbound queue was killed
    /// (its frames dropped, the body ends with `RESOURCE_EXHAUSTED`); the session closes
    /// at once, counted as a slow consumer.
    SlowConsumer,
    /// End the stream with this status, after a graceful close.
    Status(Status),
}

impl End {
    /// Why nothing can be sent on `out` any more.
    fn gone(out: &Outbound) -> End {
        if out.is_killed() {
            End::SlowConsumer
        } else {
            End::ClientGone
        }
    }
}

/// One `Connect` stream's reader task and what it owns.
struct Connection {
    /// The bus, the settings and the server's stop signal.
    context: Context,
    /// The stream's session: the reader publishes through it and (un)subscribes with
    /// it; closed gracefully whenever the stream ends.
    session: SessionHandle,
    /// The outbound queue (see [`Outbound`]); the reader sends replies on it.
    out: Outbound,
    /// Flow control, if the client's hello asked for it.
    credits: Option<DeliveryCredits>,
    /// The client reads each delivery's topic: pumps may put several topics in a batch.
    mixed_topics: bool,
    /// The routes of the topics the stream published to last.
    routes: Routes,
    /// Each live subscription's pump and its filter (for the drain's report). Aborting a
    /// pump drops its `Subscription`, which unsubscribes it; a pump that gives up returns
    /// how many deliveries it leaves behind.
    pumps: HashMap<SubscriptionId, (JoinHandle<u64>, String)>,
    /// Tells every pump of the stream to give up (the drain deadline passed); the pumps
    /// hold the receivers. Sent once, by `finish`.
    give_up: watch::Sender<bool>,
    /// Largest delivery frame a pump cuts (also what the client is told it may send).
    max_frame_bytes: usize,
    /// When the client's credentials expire, if they do.
    expires: Option<Instant>,
}

impl Connection {
    async fn run(mut self, mut inbound: Streaming<pb::ClientFrame>) {
        tracing::debug!("session opened");
        let idle = match self.context.grpc.idle_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        // One timer for the stream's life, not one per frame: a frame only notes the
        // time; when the timer fires early (frames came meanwhile) it is set again.
        let far_future = Duration::from_secs(86_400 * 365);
        let mut last_frame = Instant::now();
        // Each signal below is polled again only once one of them woke (see `Signals`):
        // the loop's task wakes once per frame, and polling them all each time would
        // take a lock or touch a timer per signal and per frame.
        let signals = Signals::new();
        let mut idle_timer = signals.quiet(Box::pin(tokio::time::sleep(idle.unwrap_or(far_future))));
        let out = self.out.clone();
        let context = self.context.clone();
        // Made once for the stream, not once per frame (see `Stopping`). While the server
        // drains, the stream goes on (publishes and subscribes are refused by the bus,
        // deliveries flow); it closes when the bus says everything admitted is buffered.
        let mut closing = pin!(context.closing());
        let mut kicked = signals.quiet(Box::pin(self.session.close_requested()));
        // Also once for the stream: made per frame, each would register with the
        // queue's signal and leave it again, twice a frame.
        let mut gone = signals.quiet(Box::pin(out.closed()));
        // No timer at all for credentials that do not expire.
        let expires = self.expires;
        let mut expired = signals.quiet(Box::pin(async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }));
        let end = loop {
            let frame = tokio::select! {
                biased;
                () = &mut closing => break End::Status(Status::unavailable("server shutting down")),
                () = &mut gone => break End::gone(&out),
                () = &mut kicked => break End::Status(Status::unavailable("session closed by an operator")),
                () = &mut expired => break End::Status(Status::unauthenticated("credentials expired")),
                () = &mut idle_timer => {
                    let due = last_frame + idle.unwrap_or(far_future);
                    if due > Instant::now() {
                        idle_timer.get_mut().as_mut().reset(due);
                        continue;
                    }
                    break End::Status(Status::unavailable(format!(
                        "idle timeout: no frame for {} ms",
                        context.grpc.idle_timeout_ms
                    )));
                }
                frame = inbound.message() => frame,
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break End::ClientDone,
                Err(status) if status.code() == Code::Cancelled || status.code() == Code::Unknown => {
                    break End::ClientGone;
                }
                Err(status) => break End::Status(inbound_status(status)),
            };
            last_frame = Instant::now();
            let handled = tokio::select! {
                biased;
                () = &mut gone => break End::gone(&out),
                handled = self.handle(frame) => handled,
            };
            if let Err(status) = handled {
                break End::Status(status);
            }
        };
        let inbound = matches!(end, End::Status(ref s) if s.code() == Code::Unavailable).then_some(inbound);
        // Boxed: the ending's state (drain, control frames, timeouts) is twice the size
        // of the loop's, and inline it would be held by every open stream's task.
        Box::pin(self.finish(end, inbound)).await;
    }

    /// Closes the session gracefully, lets the pumps flush, and ends the stream.
    ///
    /// While draining after a server-side end (shutdown, idle), the stream still reads
    /// `credit` and `ping` frames, so a flow-controlled client can take what is buffered
    /// for it; other frames are refused with `UNAVAILABLE`.
    async fn finish(self, end: End, mut inbound: Option<Streaming<pb::ClientFrame>>) {
        let reason = match &end {
            End::ClientDone => "client done".to_owned(),
            End::ClientGone => "client gone".to_owned(),
            End::SlowConsumer => "slow consumer: write deadline passed".to_owned(),
            End::Status(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        let Connection {
            context,
            session,
            out,
            credits,
            mut pumps,
            give_up,
            ..
        } = self;
        // Closing ends every subscription once its buffer is read; the pumps then send
        // what was buffered and stop. A slow consumer's pumps fail at once (its queue is
        // dead), and its buffers go with its subscriptions.
        let close_reason = match end {
            End::SlowConsumer => CloseReason::SlowConsumer,
            _ => CloseReason::SessionClosed,
        };
        let drained = async {
            let _ = session.close_with(close_reason).await;
            for (pump, _) in pumps.values_mut() {
                let _ = pump.await;
            }
        };
        let serve_control = async {
            while let Some(stream) = inbound.as_mut() {
                let frame = match stream.message().await {
                    Ok(Some(frame)) => frame.frame,
                    _ => break,
                };
                let reply = match frame {
                    Some(In::Credit(grant)) => {
                        if let Some(credits) = &credits {
                            credits.grant(grant.credits);
                        }
                        continue;
                    }
                    Some(In::Ping(ping)) => Out::Pong(pb::Pong { nonce: ping.nonce }),
                    _ => convert::error_frame(0, ErrorCode::Unavailable, "the session is closing"),
                };
                let _ = out.send(Ok(convert::frame(reply))).await;
            }
            std::future::pending::<()>().await;
        };
        let drain = context.drain_timeout();
        let finished = tokio::time::timeout(drain, async {
            tokio::select! {
                () = drained => {}
                () = serve_control => {}
            }
        })
        .await;
        if finished.is_err() {
            // Each pump stops and says what it leaves behind, subscription by subscription.
            let _ = give_up.send(true);
            let mut left = 0;
            for (id, (pump, filter)) in pumps.drain() {
                let undelivered = pump.await.unwrap_or(0);
                if undelivered > 0 {
                    tracing::error!(
                        subscription = id.0,
                        %filter,
                        undelivered,
                        "drain timed out: messages buffered for this subscription were not delivered"
                    );
                }
                left += undelivered;
            }
            if context.shutdown.is_stopping() {
                context.shutdown.count_undelivered(left);
            }
        }
        if let End::Status(status) = end {
            let _ = tokio::time::timeout(drain, out.send(Err(status))).await;
            tracing::info!(%reason, "session ended");
        } else if matches!(end, End::SlowConsumer) {
            tracing::warn!(%reason, "session ended");
        } else {
            tracing::debug!(%reason, "session ended");
        }
    }

    /// Handles one frame. `Err` ends the stream (protocol violation).
    async fn handle(&mut self, frame: pb::ClientFrame) -> Result<(), Status> {
        match frame.frame {
            None => {
                self.reply(convert::error_frame(
                    0,
                    ErrorCode::InvalidArgument,
                    "empty or unknown frame",
                ))
                .await;
            }
            Some(In::Hello(_)) => return Err(Status::invalid_argument("hello sent twice")),
            Some(In::Publish(batch)) => self.publish(batch).await,
            Some(In::Subscribe(request)) => self.subscribe(request).await,
            Some(In::Unsubscribe(request)) => self.unsubscribe(request).await,
            Some(In::Credit(grant)) => match &self.credits {
                Some(credits) => credits.grant(grant.credits),
                None => {
                    let message = "flow control is off: the hello frame had no initial_credit";
                    self.reply(convert::error_frame(0, ErrorCode::InvalidArgument, message))
                        .await;
                }
            },
            Some(In::Ping(ping)) => self.reply(Out::Pong(pb::Pong { nonce: ping.nonce })).await,
        }
        Ok(())
    }

    async fn reply(&self, frame: Out) {
        // A failed send means the client is gone; the reader notices on its next turn.
        let _ = self.out.send(Ok(convert::frame(frame))).await;
    }

    async fn publish(&mut self, batch: pb::PublishBatch) {
        let id = batch.publish_id;
        let count = batch.messages.len() as u64;
        let routes = &self.routes;
        let messages = convert::messages_known(batch.messages, |name| routes.known(name));
        if let (true, Some(publish_id), Ok(messages)) = (batch.durable, id, &messages) {
            // Admitted in order here; the durable ack follows when the disk buffers have
            // the messages, while this reader goes on with the next frames.
            let refusal = match self.session.publish_durable(messages.clone()).await {
                Ok(ack) => {
                    let out = self.out.clone();
                    tokio::spawn(async move {
                        let frame = match ack.wait().await {
                            Ok(()) => Out::PublishAck(pb::PublishAck {
                                publish_id,
                                accepted: count,
                            }),
                            Err(e) => convert::refused_frame(publish_id, &e),
                        };
                        let _ = out.send(Ok(convert::frame(frame))).await;
                    });
                    return;
                }
                Err(e) => convert::refused_frame(publish_id, &e),
            };
            self.reply(refusal).await;
            return;
        }
        // Published then and there when nothing makes it wait, else awaited.
        let now = messages.and_then(|m| {
            let slot = self.routes.slot_for(&m);
            let now = self.session.publish_batch_now_on(m, &mut self.routes.slots[slot]);
            self.routes.published(slot);
            now
        });
        let result = match now {
            Ok(None) => {
                // As an awaited publish would: a reader that never waits still yields.
                tokio::task::coop::consume_budget().await;
                Ok(())
            }
            Ok(Some(messages)) => self.session.publish_batch(messages).await,
            Err(e) => Err(e),
        };
        match (result, id) {
            (Ok(()), Some(publish_id)) => {
                self.reply(Out::PublishAck(pb::PublishAck {
                    publish_id,
                    accepted: count,
                }))
                .await;
            }
            (Ok(()), None) => {}
            (Err(e), Some(publish_id)) => self.reply(convert::refused_frame(publish_id, &e)).await,
            (Err(e), None) => self.reply(convert::bus_error_frame(0, &e)).await,
        }
    }

    async fn subscribe(&mut self, request: pb::Subscribe) {
        let subscribed = match convert::subscription(&request) {
            Ok((filter, options)) => self.session.subscribe(filter.as_str(), options).await,
            Err(e) => Err(e),
        };
        let subscription = match subscribed {
            Ok(s) => s,
            Err(e) => return self.reply(convert::bus_error_frame(request.request_id, &e)).await,
        };
        let id = subscription.id();
        // `subscribed` goes out before any delivery: the pump starts after it is queued.
        self.reply(Out::Subscribed(pb::Subscribed {
            request_id: request.request_id,
            subscription_id: id.0,
        }))
        .await;
        self.pumps.retain(|_, (pump, _)| !pump.is_finished());
        let filter = subscription.filter().to_string();
        let pump = pump::run(
            subscription,
            self.out.clone(),
            self.credits.clone(),
            pump::Framing {
                max_frame_bytes: self.max_frame_bytes,
                mixed_topics: self.mixed_topics,
            },
            self.give_up.subscribe(),
        );
        self.pumps.insert(id, (tokio::spawn(pump.in_current_span()), filter));
    }

    async fn unsubscribe(&mut self, request: pb::Unsubscribe) {
        let id = SubscriptionId(request.subscription_id);
        let Some((pump, _)) = self.pumps.remove(&id) else {
            let e = BusError::UnknownSubscription(id.0);
            return self.reply(convert::bus_error_frame(request.request_id, &e)).await;
        };
        // Wait for the pump to be gone so nothing of this subscription follows the reply.
        pump.abort();
        let _ = pump.await;
        self.reply(Out::Unsubscribed(pb::Unsubscribed {
            request_id: request.request_id,
            subscription_id: id.0,
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use streambus_core::{Bus, BusConfig, ConnectOptions, Event, SubscriptionOptions};

    use super::*;

    /// Publishes `name` as a server stream does: at once through its route if it can,
    /// else awaited (a topic's first publish starts it).
    async fn publish(session: &SessionHandle, routes: &mut Routes, name: &str) {
        let batch = vec![Message::new(Topic::new(name).unwrap(), name.to_owned())];
        let slot = routes.slot_for(&batch);
        let back = session.publish_batch_now_on(batch, &mut routes.slots[slot]).unwrap();
        routes.published(slot);
        if let Some(back) = back {
            session.publish_batch(back).await.unwrap();
        }
    }

    /// A stream keeps routes to the last four topics it published to: their names are
    /// known, a topic with a route uses it again, a fifth takes the oldest slot; every
    /// message reaches its topic.
    #[tokio::test]
    async fn routes_keep_the_last_topics_published_to() {
        let bus = Bus::start(BusConfig::default()).await.unwrap();
        let session = bus.connect(ConnectOptions::default()).await.unwrap();
        let mut all = session.subscribe("m.>", SubscriptionOptions::default()).await.unwrap();
        let mut routes = Routes::default();
        let four = ["m.a", "m.b", "m.c", "m.d"];
        // The first round starts the topics, the second finds them and keeps them.
        for _ in 0..2 {
            for name in four {
                publish(&session, &mut routes, name).await;
            }
        }
        let known = |routes: &Routes| {
            ["m.a", "m.b", "m.c", "m.d", "m.e"].map(|name| routes.known(name).is_some_and(|t| t.as_str() == name))
        };
        assert_eq!(known(&routes), [true, true, true, true, false]);
        for name in four {
            publish(&session, &mut routes, name).await;
        }
        assert_eq!(routes.next, 0, "no slot taken by a topic that had one");
        // A fifth topic takes the oldest slot, and keeps it once started.
        publish(&session, &mut routes, "m.e").await;
        publish(&session, &mut routes, "m.e").await;
        assert_eq!(known(&routes), [false, true, true, true, true]);

        let mut got = Vec::new();
        while got.len() < 14 {
            match all.next().await {
                Some(Event::Delivery(d)) => {
                    assert_eq!(d.payload, d.topic.as_str().as_bytes(), "delivered to its topic");
                    got.push(d.topic.as_str().to_owned());
                }
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
        let expected: Vec<&str> = four.repeat(3).into_iter().chain(["m.e", "m.e"]).collect();
        assert_eq!(got, expected);
    }

    /// Names that share a fingerprint (same length, same last eight bytes) are still
    /// told apart, and a batch whose topic was made apart from the route's (an equal
    /// name, another allocation) still finds the route.
    #[tokio::test]
    async fn routes_tell_names_apart_beyond_their_fingerprint() {
        assert_eq!(fingerprint("aa.12345678"), fingerprint("bb.12345678"));
        assert_ne!(fingerprint("m.a"), fingerprint("m.b"));
        assert_ne!(fingerprint("x.m.a"), fingerprint("m.a"));
        let bus = Bus::start(BusConfig::default()).await.unwrap();
        let session = bus.connect(ConnectOptions::default()).await.unwrap();
        let mut routes = Routes::default();
        for _ in 0..2 {
            publish(&session, &mut routes, "aa.12345678").await;
        }
        assert!(routes.known("aa.12345678").is_some());
        assert!(routes.known("bb.12345678").is_none(), "same fingerprint, another name");
        let apart = vec![Message::new(Topic::new("aa.12345678").unwrap(), "x")];
        let slot = routes.slot_for(&apart);
        assert!(routes.slots[slot].topic().is_some_and(|t| t.as_str() == "aa.12345678"));
        let other = vec![Message::new(Topic::new("bb.12345678").unwrap(), "x")];
        assert_ne!(routes.slot_for(&other), slot, "another name takes another slot");
    }
}
