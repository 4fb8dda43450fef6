//! Failure-mode sinks for tests (feature `testsuite`).
//!
//! Each shares a [`Collector`] with the test: what the sink stored, how often it was
//! opened and written to, and switches that make it fail. A fresh sink made by a
//! factory closure over the same collector continues where the last incarnation left
//! off, which is how restarts are observed.
//!
//! - [`CollectingSink`]: stores every record; refuses records whose payload is
//!   [`POISON`] as poison (with the index, or without when `poison_index_known` is off).
//! - [`FailingSink`]: a collecting sink whose writes fail (retryable, or fatal) while
//!   the collector's `failing` switch is on.
//! - [`PanickingSink`]: panics on any batch holding a record whose payload is
//!   [`PANIC`], or while `panic_writes` is positive (decremented per panic).
//! - [`BlockingSink`]: its writes wait until the collector is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::record::Record;
use crate::sink::{Sink, SinkError};

/// A payload the collecting sinks refuse as poison.
pub const POISON: &[u8] = b"poison";
/// A payload that makes [`PanickingSink`] panic.
pub const PANIC: &[u8] = b"panic";

/// What a test sees of its sinks, and its switches.
#[derive(Debug, Default)]
pub struct Collector {
    records: Mutex<Vec<Record>>,
    /// Incarnations opened.
    pub opens: AtomicU64,
    /// Write calls (successful or not).
    pub writes: AtomicU64,
    /// While on, [`FailingSink`] fails its writes.
    pub failing: AtomicBool,
    /// [`FailingSink`] fails with a fatal (not retryable) error.
    pub fatal: AtomicBool,
    /// [`PanickingSink`] panics on this many more writes.
    pub panic_writes: AtomicUsize,
    /// Poison errors carry the index (else the runtime must bisect).
    pub poison_index_known: AtomicBool,
    released: AtomicBool,
    release: Notify,
}

impl Collector {
    /// A collector with every switch off, poison indexes known.
    pub fn new() -> Arc<Self> {
        let c = Collector::default();
        c.poison_index_known.store(true, Ordering::Relaxed);
        Arc::new(c)
    }

    /// Everything stored so far, in write order.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().clone()
    }

    /// How many records are stored.
    pub fn len(&self) -> usize {
        self.records.lock().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets [`BlockingSink`] writes go on, now and from then on.
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.release.notify_waiters();
    }

    fn store(&self, batch: &[Record]) -> Result<(), SinkError> {
        if let Some(i) = batch.iter().position(|r| r.payload == POISON) {
            return Err(if self.poison_index_known.load(Ordering::Relaxed) {
                SinkError::poison(i, "poison payload")
            } else {
                SinkError::poison_somewhere("poison payload somewhere")
            });
        }
        self.records.lock().extend_from_slice(batch);
        Ok(())
    }
}

/// Stores records in its [`Collector`].
#[derive(Debug)]
pub struct CollectingSink(pub Arc<Collector>);

#[async_trait]
impl Sink for CollectingSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.0.opens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
        self.0.store(batch)
    }
}

/// Fails while its collector's `failing` switch is on.
#[derive(Debug)]
pub struct FailingSink(pub Arc<Collector>);

#[async_trait]
impl Sink for FailingSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.0.opens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
        if self.0.failing.load(Ordering::Acquire) {
            return Err(if self.0.fatal.load(Ordering::Relaxed) {
                SinkError::fatal("test sink: fatal failure")
            } else {
                SinkError::retryable("test sink: destination unavailable")
            });
        }
        self.0.store(batch)
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        if self.0.failing.load(Ordering::Acquire) {
            return Err(SinkError::retryable("test sink: destination unavailable"));
        }
        Ok(())
    }
}

/// Panics on a [`PANIC`] payload, or while `panic_writes` is positive.
#[derive(Debug)]
pub struct PanickingSink(pub Arc<Collector>);

#[async_trait]
impl Sink for PanickingSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.0.opens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
        let scheduled = self
            .0
            .panic_writes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if scheduled || batch.iter().any(|r| r.payload == PANIC) {
            panic!("test sink panics on purpose");
        }
        self.0.store(batch)
    }
}

/// Its writes wait until the collector is released.
#[derive(Debug)]
pub struct BlockingSink(pub Arc<Collector>);

#[async_trait]
impl Sink for BlockingSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        self.0.opens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
        loop {
            let released = self.0.release.notified();
            if self.0.released.load(Ordering::Acquire) {
                break;
            }
            released.await;
        }
        self.0.store(batch)
    }
}
