//! The connection and reconnect loop: one `Connect` stream at a time, re-established
//! with exponential backoff when it is lost.
//!
//! [`connect_once`] opens a call (see [`super::call`]), says `hello`, waits for
//! `welcome`, resubscribes every live subscription, and only then publishes the new
//! request queue, so nothing the application sends can overtake the resubscribes.
//! [`drive`] (one task per client) runs each connection until it ends (its HTTP/2
//! connection, the writer and the ping in that task, the reader in one of its own),
//! fails what was pending on it, and reconnects unless the client was closed or asked
//! not to.
//!
//! # Invariants
//!
//! - At most one connection is current; its request queue is the one in
//!   [`Shared::frames`], and it is replaced only by [`drive`].
//! - The ping and the reader live exactly as long as the connection: either ending
//!   ends it, and the driver then aborts the reader's task. The writer and the HTTP/2
//!   connection never end it themselves, so what the server sent before a broken socket
//!   is still routed, and the reader then reports why the call ended.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use streambus_types::CloseReason;
use tokio::sync::mpsc;

use super::call::{self, Call, Endpoint, Reader};
use super::shared::{Queue, Room, Shared};
use super::{ClientError, Credit, REQUEST_QUEUE_BYTES, REQUEST_QUEUE_FRAMES, Welcome, router};
use crate::proto::streambus::v1 as pb;
use crate::quiet::{Covered, Signals};
use pb::client_frame::Frame as Out;

/// An established connection: its call, with `welcome` read and the resubscribes
/// queued, and the request queue the client's senders now fill.
pub(super) struct Connected {
    /// The `Connect` call and its HTTP/2 connection.
    call: Call,
    /// The request queue's receiving end (capacity [`REQUEST_QUEUE_FRAMES`]); its
    /// sender is the one in [`Shared::frames`]. Dropping every sender ends the request
    /// stream.
    queue: mpsc::Receiver<bytes::Bytes>,
    /// The bytes the queue holds, given back by the writer; closed with the connection.
    room: Arc<Room>,
}

/// Opens the call, says hello, waits for welcome, resubscribes, and publishes the
/// request queue for senders.
pub(super) async fn connect_once(shared: &Arc<Shared>, endpoint: &Endpoint) -> Result<Connected, ClientError> {
    let initial_credit = match shared.options.credit {
        Credit::Unlimited => None,
        Credit::Window(n) | Credit::Manual(n) => Some(n),
    };
    let hello = pb::ClientFrame {
        frame: Some(Out::Hello(pb::Hello {
            client_name: shared.options.name.clone(),
            initial_credit,
            // The reader takes each delivery's own topic (`convert::deliveries_from_wire`).
            mixed_topics: true,
            ..Default::default()
        })),
    };
    // A server that takes the connection and says nothing must not hold the connect
    // (or a reconnect) forever.
    let timeout = shared.options.ping_timeout;
    let (mut call, welcome) = tokio::time::timeout(timeout, endpoint.open(&hello))
        .await
        .map_err(|_| ClientError::Unresponsive(timeout))??;
    // A new session starts with the whole credit window again.
    shared.consumed.store(0, Ordering::Release);
    let resubscribe: Vec<_> = shared
        .state()
        .begin_connection(Welcome::from_wire(&welcome), || shared.next_id())
        .into_iter()
        .map(|request| pb::ClientFrame {
            frame: Some(Out::Subscribe(request)),
        })
        .collect();
    // Written before the queue opens, so nothing the application sends overtakes them.
    call::send_now(&mut call.send, &resubscribe)?;
    if shared.is_closed() {
        return Err(ClientError::Closed);
    }
    let (frames, queue) = mpsc::channel(REQUEST_QUEUE_FRAMES);
    let room = Room::new(REQUEST_QUEUE_BYTES);
    shared.frames.send_replace(Some(Queue {
        frames,
        room: room.clone(),
    }));
    Ok(Connected { call, queue, room })
}

/// What one connection's reader (its own task) tells its ping (in the driver's task).
#[derive(Default)]
struct Activity {
    /// Counted by the reader before and after it hands each frame on, so that the ping
    /// can tell a silent server.
    frames: AtomicU64,
    /// Set while the reader waits to hand a frame on (a full subscription): the server
    /// may have answered behind it.
    held: AtomicBool,
}

/// The delay before the reconnect attempt after one that waited `delay`: doubled, at
/// most `max`.
pub(super) fn next_delay(delay: Duration, max: Duration) -> Duration {
    delay.saturating_mul(2).min(max)
}

/// The driver: reads each connection until it ends, then reconnects with backoff,
/// trying `servers` in turn from the one after `current` (the one just lost last).
pub(super) async fn drive(shared: Arc<Shared>, servers: Vec<Endpoint>, mut current: usize, first: Connected) {
    let mut connection = Some(first);
    let mut delay = shared.options.reconnect_initial;
    loop {
        if let Some(Connected { call, mut queue, room }) = connection.take() {
            delay = shared.options.reconnect_initial;
            let Call {
                mut link,
                requests: _requests,
                mut send,
                reader,
            } = call;
            // The reader routes in a task of its own: a subscriber that takes a heavy
            // stream gets the socket read and its frames routed on two cores at once.
            let activity = Arc::new(Activity::default());
            let reading = tokio::spawn(read(shared.clone(), reader, activity.clone()));
            let stop_reading = reading.abort_handle();
            // The ping runs in this task, and both it and the reader's end are polled
            // only when they woke (see `Signals`), not once per frame.
            let signals = Signals::new();
            let mut reading = signals.quiet(reading);
            let mut pinger = signals.quiet(Box::pin(ping(&shared, &activity)));
            // The writer first, then the connection: a frame a publisher queued is
            // encoded and written to the socket in the same poll. `h2` wakes the
            // connection's task for every frame the writer queues; the connection is
            // polled next anyway, so those wakes are covered (`Covered`) rather than
            // polling this task a second time per publish. Only the reader (or the
            // ping) ends the connection: what the server sent before the socket closed
            // is still read and routed, and the reader then sees why it ended.
            let mut write = std::pin::pin!(async {
                let failed = call::write(&mut send, &mut queue, &room).await;
                tracing::debug!(error = %failed, "request stream failed");
                std::future::pending::<Infallible>().await
            });
            let mut link = Covered::new(Box::pin(async {
                let closed = (&mut link).await;
                tracing::debug!(error = %call::link_ended(closed), "connection ended");
                std::future::pending::<Infallible>().await
            }));
            let io = std::future::poll_fn(|cx| {
                link.arm();
                if let Poll::Ready(never) = write.as_mut().poll(cx) {
                    match never {}
                }
                Pin::new(&mut link).poll(cx)
            });
            let ended = tokio::select! {
                biased;
                never = io => match never {},
                ended = &mut reading => ended.unwrap_or_else(|e| ClientError::Protocol(format!("the reader failed: {e}"))),
                dead = &mut pinger => dead,
            };
            stop_reading.abort();
            // What is left in the queue is never written: whoever waits for its room
            // goes on to the next connection.
            room.close();
            shared.frames.send_replace(None);
            shared.fail_pending();
            if shared.is_closed() || !shared.options.reconnect {
                if !shared.is_closed() {
                    // The application did not end it: say why, its subscriptions only
                    // see the session close.
                    tracing::warn!(error = %ended, url = %servers[current].url, "connection lost; not reconnecting");
                }
                // No connection will come: whatever waits to send fails now.
                shared.close();
                shared.close_subscriptions(CloseReason::SessionClosed);
                return;
            }
            tracing::warn!(error = %ended, url = %servers[current].url, "connection lost; reconnecting");
        }
        tokio::time::sleep(delay).await;
        // A full round of the list before the delay grows.
        current = (current + 1) % servers.len();
        if current == 0 || servers.len() == 1 {
            delay = next_delay(delay, shared.options.reconnect_max);
        }
        let endpoint = &servers[current];
        let url = &endpoint.url;
        match connect_once(&shared, endpoint).await {
            Ok(c) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%url, "reconnected");
                connection = Some(c);
            }
            Err(ClientError::Closed) => {
                shared.close_subscriptions(CloseReason::SessionClosed);
                return;
            }
            Err(e) => tracing::debug!(error = %e, "reconnect failed"),
        }
    }
}

/// Pings every `ping_interval` so the server's idle timeout never fires on a quiet
/// client, and returns once the server sent nothing for `ping_timeout` after a ping
/// (unless the reader was held back meanwhile). Once the client is closed it sends no
/// more pings but keeps judging: a server that ends the call after the close is
/// waited for as long as it sends anything, a silent one is let go.
async fn ping(shared: &Arc<Shared>, activity: &Activity) -> ClientError {
    let timeout = shared.options.ping_timeout;
    let mut interval = tokio::time::interval(shared.options.ping_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let seen = activity.frames.load(Ordering::Relaxed);
        if !shared.is_closed() {
            let nonce = shared.next_id();
            // Fails only once the client is closed; judged below as any other round.
            let _ = shared.send(Out::Ping(pb::Ping { nonce })).await;
        }
        tokio::time::sleep(timeout).await;
        if activity.frames.load(Ordering::Relaxed) == seen && !activity.held.load(Ordering::Relaxed) {
            return ClientError::Unresponsive(timeout);
        }
    }
}

/// Reads one connection's server frames until it ends; returns why it ended.
async fn read(shared: Arc<Shared>, mut reader: Reader, activity: Arc<Activity>) -> ClientError {
    loop {
        let frame = match reader.message().await {
            Ok(Some(pb::ServerFrame { frame: Some(frame) })) => frame,
            Ok(Some(_)) => continue,
            Ok(None) => return ClientError::Closed,
            Err(e) => return e,
        };
        activity.frames.fetch_add(1, Ordering::Relaxed);
        activity.held.store(true, Ordering::Relaxed);
        let routed = router::route(&shared, frame).await;
        activity.held.store(false, Ordering::Relaxed);
        activity.frames.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = routed {
            return e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reconnect delays double from the first and stay at the maximum.
    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_millis(1000);
        let mut delay = Duration::from_millis(100);
        let mut seen = Vec::new();
        for _ in 0..6 {
            delay = next_delay(delay, max);
            seen.push(delay.as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(next_delay(Duration::MAX, max), max);
    }
}
