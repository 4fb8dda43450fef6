//! [`ClientSubscription`]: one subscription through a [`super::Client`], a `Stream` of
//! events that survives reconnects.
//!
//! The connection's reader hands it event batches through a bounded channel (see
//! [`super::shared::LiveSubscription`]); taking deliveries out counts them for the
//! credit window. Dropping it unsubscribes on the server (from a spawned task, since
//! `Drop` cannot wait).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use streambus_types::Event;
use tokio::sync::mpsc;

use super::ClientError;
use super::shared::{Pending, Shared};
use crate::proto::streambus::v1 as pb;
use pb::client_frame::Frame as Out;

/// A subscription through a [`super::Client`]: a `Stream` of events. Dropping it
/// unsubscribes.
pub struct ClientSubscription {
    /// The client's own id for it, stable across reconnects.
    local: u64,
    /// The client it belongs to (not a [`super::Client`] clone: a subscription alone
    /// does not keep the session open).
    shared: Arc<Shared>,
    /// Event batches from the connection's reader; ends when the subscription ends.
    events: mpsc::Receiver<Vec<Event>>,
    /// What is left of the batch being handed out one event at a time.
    current: VecDeque<Event>,
    /// Unsubscribed explicitly: `Drop` has nothing left to do.
    done: bool,
}

impl std::fmt::Debug for ClientSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSubscription").field("id", &self.local).finish()
    }
}

impl ClientSubscription {
    /// The application's end of the client's subscription `local`.
    pub(super) fn new(local: u64, shared: Arc<Shared>, events: mpsc::Receiver<Vec<Event>>) -> Self {
        ClientSubscription {
            local,
            shared,
            events,
            current: VecDeque::new(),
            done: false,
        }
    }

    /// Unsubscribes and waits for the server's confirmation.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.done = true;
        let entry = self.shared.state().subscriptions.remove(&self.local);
        let Some(server_id) = entry.and_then(|e| e.server_id) else {
            return Ok(());
        };
        self.shared.state().by_server_id.remove(&server_id);
        let id = self.shared.next_id();
        let frame = Out::Unsubscribe(pb::Unsubscribe {
            request_id: id,
            subscription_id: server_id,
        });
        self.shared.request(id, Pending::Unsubscribe, frame).await?
    }

    /// The next batch of events as the server sent them (one frame's worth).
    pub async fn next_batch(&mut self) -> Option<Vec<Event>> {
        if !self.current.is_empty() {
            let batch: Vec<Event> = self.current.drain(..).collect();
            self.shared.consumed(count_deliveries(&batch));
            return Some(batch);
        }
        let batch = self.events.recv().await?;
        self.shared.consumed(count_deliveries(&batch));
        Some(batch)
    }
}

fn count_deliveries(events: &[Event]) -> u64 {
    events.iter().filter(|e| matches!(e, Event::Delivery(_))).count() as u64
}

impl Stream for ClientSubscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.current.pop_front() {
                if matches!(event, Event::Delivery(_)) {
                    this.shared.consumed(1);
                }
                return Poll::Ready(Some(event));
            }
            match this.events.poll_recv(cx) {
                Poll::Ready(Some(batch)) => this.current.extend(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for ClientSubscription {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.shared.state();
        let Some(server_id) = state.subscriptions.remove(&self.local).and_then(|e| e.server_id) else {
            return;
        };
        state.by_server_id.remove(&server_id);
        drop(state);
        let shared = self.shared.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let frame = Out::Unsubscribe(pb::Unsubscribe {
                    request_id: 0,
                    subscription_id: server_id,
                });
                let _ = shared.send(frame).await;
            });
        }
    }
}
