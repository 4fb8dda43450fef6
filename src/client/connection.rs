//! The connection and reconnect loop: one `Connect` stream at a time, re-established
//! with exponential backoff when it is lost.
//!
//! [`connect_once`] opens a stream, says `hello`, waits for `welcome`, resubscribes
//! every live subscription, and only then publishes the new request queue, so nothing
//! the application sends can overtake the resubscribes. [`drive`] (one task per client)
//! reads each connection until it ends, fails what was pending on it, and reconnects
//! unless the client was closed or asked not to.
//!
//! # Invariants
//!
//! - At most one connection is current; its request queue is the one in
//!   [`Shared::frames`], and it is replaced only by [`drive`].
//! - The ping lives exactly as long as the connection it pings on: it runs beside the
//!   connection's reader in the driver's task, and either ending ends the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use streambus_types::CloseReason;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::shared::Shared;
use super::{ClientError, Credit, REQUEST_QUEUE_FRAMES, Welcome, router};
use crate::proto::streambus::v1 as pb;
use crate::quiet::Signals;
use pb::bus_client::BusClient;
use pb::client_frame::Frame as Out;
use pb::server_frame::Frame as In;

/// An established connection: its response stream, ready to be read.
pub(super) struct Connected {
    /// The server's frames, after `welcome`.
    responses: tonic::Streaming<pb::ServerFrame>,
}

/// Opens the stream, says hello, waits for welcome, resubscribes, and publishes the
/// request queue for senders.
pub(super) async fn connect_once(shared: &Arc<Shared>, channel: Channel) -> Result<Connected, ClientError> {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE_FRAMES);
    let initial_credit = match shared.options.credit {
        Credit::Unlimited => None,
        Credit::Window(n) | Credit::Manual(n) => Some(n),
    };
    let hello = pb::ClientFrame {
        frame: Some(Out::Hello(pb::Hello {
            client_name: shared.options.name.clone(),
            initial_credit,
            ..Default::default()
        })),
    };
    tx.send(hello).await.map_err(|_| ClientError::Closed)?;
    let mut client = BusClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    shared.options.auth.apply(&mut request);
    // A server that takes the connection and says nothing must not hold the connect
    // (or a reconnect) forever.
    let handshake = async {
        let mut responses = client.connect(request).await?.into_inner();
        match responses.message().await? {
            Some(pb::ServerFrame {
                frame: Some(In::Welcome(w)),
            }) => Ok((responses, w)),
            other => Err(ClientError::Protocol(format!("expected welcome, got {other:?}"))),
        }
    };
    let timeout = shared.options.ping_timeout;
    let (responses, welcome) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ClientError::Unresponsive(timeout))??;
    // A new session starts with the whole credit window again.
    shared.consumed.store(0, Ordering::Release);
    let resubscribe = shared
        .state()
        .begin_connection(Welcome::from_wire(&welcome), || shared.next_id());
    for request in resubscribe {
        let frame = pb::ClientFrame {
            frame: Some(Out::Subscribe(request)),
        };
        tx.send(frame).await.map_err(|_| ClientError::Disconnected)?;
    }
    if shared.is_closed() {
        return Err(ClientError::Closed);
    }
    shared.frames.send_replace(Some(tx));
    Ok(Connected { responses })
}

/// What one connection's reader tells its ping, both in the driver's task.
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
pub(super) async fn drive(shared: Arc<Shared>, servers: Vec<(String, Channel)>, mut current: usize, first: Connected) {
    let mut connection = Some(first);
    let mut delay = shared.options.reconnect_initial;
    loop {
        if let Some(c) = connection.take() {
            delay = shared.options.reconnect_initial;
            // The ping runs beside the reader in this task, polled only when its timers
            // wake (see `Signals`), not once per frame read.
            let activity = Activity::default();
            let signals = Signals::new();
            let mut pinger = signals.quiet(Box::pin(ping(&shared, &activity)));
            let ended = tokio::select! {
                ended = read(&shared, c.responses, &activity) => ended,
                dead = &mut pinger => dead,
            };
            shared.frames.send_replace(None);
            shared.fail_pending();
            if shared.is_closed() || !shared.options.reconnect {
                // No connection will come: whatever waits to send fails now.
                shared.close();
                shared.close_subscriptions(CloseReason::SessionClosed);
                return;
            }
            tracing::warn!(error = %ended, url = %servers[current].0, "connection lost; reconnecting");
        }
        tokio::time::sleep(delay).await;
        // A full round of the list before the delay grows.
        current = (current + 1) % servers.len();
        if current == 0 || servers.len() == 1 {
            delay = next_delay(delay, shared.options.reconnect_max);
        }
        let (url, channel) = &servers[current];
        match connect_once(&shared, channel.clone()).await {
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
/// (unless the reader was held back meanwhile). Once the client is closed it only
/// waits: the reader then sees the stream end.
async fn ping(shared: &Arc<Shared>, activity: &Activity) -> ClientError {
    let timeout = shared.options.ping_timeout;
    let mut interval = tokio::time::interval(shared.options.ping_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let seen = activity.frames.load(Ordering::Relaxed);
        let nonce = shared.next_id();
        if shared.send(Out::Ping(pb::Ping { nonce })).await.is_err() {
            return std::future::pending().await;
        }
        tokio::time::sleep(timeout).await;
        if activity.frames.load(Ordering::Relaxed) == seen && !activity.held.load(Ordering::Relaxed) {
            return ClientError::Unresponsive(timeout);
        }
    }
}

/// Reads one connection's server frames until it ends; returns why it ended.
async fn read(
    shared: &Arc<Shared>,
    mut responses: tonic::Streaming<pb::ServerFrame>,
    activity: &Activity,
) -> ClientError {
    loop {
        let frame = match responses.message().await {
            Ok(Some(pb::ServerFrame { frame: Some(frame) })) => frame,
            Ok(Some(_)) => continue,
            Ok(None) => return ClientError::Closed,
            Err(status) => return ClientError::Status(status),
        };
        activity.frames.fetch_add(1, Ordering::Relaxed);
        activity.held.store(true, Ordering::Relaxed);
        let routed = router::route(shared, frame).await;
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
