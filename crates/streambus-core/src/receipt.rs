//! Durable receipts: how a publisher learns that every durable sink has its messages.
//!
//! A publish that asks for a durable ack carries a [`ReceiptToken`] to its topic. The
//! topic confirms that token once the batch is in every subscriber buffer, and hands
//! each durable sink's subscriber a sibling token covering the deliveries it pushed
//! there; the sink's intake confirms those after the deliveries are in its disk buffer.
//! The publisher waits until every token is gone ([`Receipt::wait`]): the publish is
//! durable if each one was confirmed in full before it was dropped.
//!
//! Tokens travel with the work and report on drop, like admission permits: a batch lost
//! in a topic crash, a buffer that refused records under `drop_newest`, a subscription
//! dropped with deliveries still queued, all drop their tokens unconfirmed, and the
//! publisher is told the publish is not durable. Nothing can confirm by mistake.
//!
//! # Invariants
//!
//! - A token counts the deliveries it covers (`expected`); confirmations add up to it.
//! - The receipt completes only when the last token is dropped, so a token created from
//!   a sibling while the batch is being fanned out keeps it open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// What all tokens of one publish share.
#[derive(Debug)]
struct Shared {
    /// Set by any token dropped short of its confirmations; read by the publisher.
    failed: Arc<AtomicBool>,
    /// Dropped with the last token: the publisher's `recv` then returns `None`.
    _done: mpsc::Sender<()>,
}

/// One holder's part of a durable publish.
#[derive(Debug)]
pub(crate) struct ReceiptToken {
    /// The publish's failure flag and completion signal, shared by all its tokens.
    shared: Arc<Shared>,
    /// Deliveries this token covers.
    expected: usize,
    /// Deliveries confirmed so far; short of `expected` at drop means not durable.
    confirmed: AtomicUsize,
}

impl ReceiptToken {
    /// Another token of the same publish, covering `expected` deliveries.
    pub(crate) fn sibling(&self, expected: usize) -> Arc<ReceiptToken> {
        Arc::new(ReceiptToken {
            shared: self.shared.clone(),
            expected,
            confirmed: AtomicUsize::new(0),
        })
    }

    /// Confirms `n` of the deliveries this token covers.
    pub(crate) fn confirm(&self, n: usize) {
        self.confirmed.fetch_add(n, Ordering::AcqRel);
    }
}

impl Drop for ReceiptToken {
    fn drop(&mut self) {
        if self.confirmed.load(Ordering::Acquire) < self.expected {
            self.shared.failed.store(true, Ordering::Release);
        }
    }
}

/// The publisher's end of a durable publish.
#[derive(Debug)]
pub(crate) struct Receipt {
    /// Set by any token dropped short of its confirmations.
    failed: Arc<AtomicBool>,
    /// Never receives a value: `recv` returns `None` once the last token (the last
    /// sender) is dropped, which is when the publish is settled.
    done: mpsc::Receiver<()>,
}

impl Receipt {
    /// A receipt and its first token, which covers one thing: the batch's fan-out.
    pub(crate) fn new() -> (Receipt, Arc<ReceiptToken>) {
        let (tx, rx) = mpsc::channel(1);
        let failed = Arc::new(AtomicBool::new(false));
        let token = Arc::new(ReceiptToken {
            shared: Arc::new(Shared {
                failed: failed.clone(),
                _done: tx,
            }),
            expected: 1,
            confirmed: AtomicUsize::new(0),
        });
        (Receipt { failed, done: rx }, token)
    }

    /// Waits until every token is gone; true if all were confirmed in full.
    pub(crate) async fn wait(mut self) -> bool {
        // Nothing is ever sent: `recv` returns `None` once the last sender is dropped.
        let _ = self.done.recv().await;
        !self.failed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Confirmed tokens make a durable receipt; one short token spoils it.
    #[tokio::test]
    async fn all_or_nothing() {
        let (receipt, first) = Receipt::new();
        let sink = first.sibling(3);
        first.confirm(1);
        drop(first);
        sink.confirm(2);
        let other = sink.clone();
        drop(sink);
        other.confirm(1);
        drop(other);
        assert!(receipt.wait().await);

        let (receipt, first) = Receipt::new();
        let sink = first.sibling(2);
        first.confirm(1);
        drop(first);
        sink.confirm(1);
        drop(sink);
        assert!(!receipt.wait().await);

        let (receipt, first) = Receipt::new();
        drop(first);
        assert!(!receipt.wait().await);
    }
}
