//! One sink incarnation at work: open, then batch, write, flush, acknowledge.
//!
//! [`run`] returns `Ok` when the source has ended and everything taken from it is
//! written (shutdown), and `Err` with the reason on a fatal error; a panic in the sink
//! unwinds out of it. Either way the batch being written stays in the sink's `pending`
//! slot for the next incarnation (or the quarantine drain).
//!
//! # Invariants
//!
//! - A batch leaves the `pending` slot only after it is acknowledged (written, or
//!   dead-lettered, or given up and counted): at least once, never silently lost.
//! - The source is read by one incarnation at a time: the `pending` lock is held from
//!   taking a batch until it is acknowledged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use streambus_sinks::{Record, Sink, SinkError, SinkErrorKind};
use tokio::time::Instant;

use super::shared::{Batch, SinkShared, SinkStatus, Source};

/// Takes the next batch from the source: waits for a first record, then up to
/// `batch.max_delay_ms` for the batch to fill. `None` once the source has ended.
pub(crate) async fn next_batch(shared: &SinkShared) -> Option<Batch> {
    let b = &shared.config.batch;
    let (max_events, max_bytes) = (b.max_events, b.max_bytes);
    let deadline = Instant::now() + Duration::from_millis(b.max_delay_ms);
    match &shared.source {
        Source::Memory(source) => {
            let mut source = source.lock().await;
            let mut records = std::mem::take(&mut source.carry);
            if records.is_empty() {
                records = source.rx.recv().await?;
            }
            let mut bytes: usize = records.iter().map(Record::byte_len).sum();
            while records.len() < max_events && bytes < max_bytes {
                match tokio::time::timeout_at(deadline, source.rx.recv()).await {
                    Ok(Some(more)) => {
                        bytes += more.iter().map(Record::byte_len).sum::<usize>();
                        records.extend(more);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if records.len() > max_events {
                source.carry = records.split_off(max_events);
            }
            Some(Batch { records, last_id: None })
        }
        Source::Disk(buffer) => {
            let mut got = match buffer.read(max_events, max_bytes).await {
                Ok(got) if !got.is_empty() => got,
                Ok(_) => return None,
                Err(e) => {
                    shared.set_error(e.to_string());
                    tracing::error!(sink = %shared.config.name, error = %e, "sink buffer read failed");
                    return None;
                }
            };
            let mut bytes: usize = got.iter().map(|(_, r)| r.byte_len()).sum();
            while got.len() < max_events && bytes < max_bytes {
                let more =
                    tokio::time::timeout_at(deadline, buffer.read(max_events - got.len(), max_bytes - bytes)).await;
                match more {
                    Ok(Ok(more)) if !more.is_empty() => {
                        bytes += more.iter().map(|(_, r)| r.byte_len()).sum::<usize>();
                        got.extend(more);
                    }
                    _ => break,
                }
            }
            let last_id = got.last().map(|(id, _)| *id);
            Some(Batch {
                records: got.into_iter().map(|(_, r)| r).collect(),
                last_id,
            })
        }
    }
}

/// Records a batch as done: acknowledged in the disk buffer, counted.
pub(crate) fn acknowledge(shared: &SinkShared, batch: &Batch, written: usize) {
    if let (Source::Disk(buffer), Some(id)) = (&shared.source, batch.last_id)
        && let Err(e) = buffer.ack(id)
    {
        shared.set_error(e.to_string());
        tracing::error!(sink = %shared.config.name, error = %e, "sink buffer acknowledgement failed; records will be written again after a restart");
    }
    shared.written.fetch_add(written as u64, Ordering::Relaxed);
}

/// One attempt: a write and its flush; only both together store a batch.
async fn write_and_flush(sink: &mut dyn Sink, records: &[Record]) -> Result<(), SinkError> {
    sink.write(records).await?;
    sink.flush().await
}

/// Writes `records`, retrying, isolating poison records and dead-lettering them.
/// Returns how many records the sink stored, or the fatal error.
///
/// The batch is worked as a queue of parts, first the whole of it. A retryable failure
/// retries the same part after a backoff (and dead-letters it past
/// `retry.max_attempts`, when that is set). A poison record named by index goes to the
/// dead-letter topic and the parts on either side of it are written next, in order; an
/// unnamed poison record is found by halving the part until it stands alone. So the
/// good records of a batch always land, in their order, whatever is wrong with the rest.
async fn deliver(sink: &mut dyn Sink, shared: &SinkShared, records: &[Record]) -> Result<usize, String> {
    let retry = &shared.config.retry;
    let mut parts: VecDeque<&[Record]> = VecDeque::from([records]);
    let mut stored = 0;
    while let Some(part) = parts.pop_front() {
        if part.is_empty() {
            continue;
        }
        let mut attempt = 0u32;
        loop {
            let error = match write_and_flush(sink, part).await {
                Ok(()) => {
                    stored += part.len();
                    shared.batches.fetch_add(1, Ordering::Relaxed);
                    if attempt > 0 {
                        shared.set_status(SinkStatus::Running);
                        tracing::info!(sink = %shared.config.name, attempts = attempt + 1, "sink write succeeded after retries");
                    }
                    break;
                }
                Err(e) => e,
            };
            shared.set_error(error.message.clone());
            // Each arm either retries this part (loop) or settles it (break), pushing
            // what is left of it to the front of the queue.
            match error.kind {
                SinkErrorKind::Retryable => {
                    attempt += 1;
                    if retry.max_attempts > 0 && attempt >= retry.max_attempts {
                        let reason = format!("gave up after {attempt} attempts: {}", error.message);
                        shared.dead_letter(part, &reason).await;
                        break;
                    }
                    if attempt == 1 {
                        tracing::warn!(sink = %shared.config.name, error = %error, "sink write failed; retrying with backoff");
                    }
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    shared.set_status(SinkStatus::Retrying);
                    let delay = SinkShared::backoff(retry.initial_backoff_ms, retry.max_backoff_ms, attempt);
                    tokio::time::sleep(delay).await;
                }
                SinkErrorKind::Fatal => return Err(error.message),
                SinkErrorKind::Poison { index: Some(i) } if i < part.len() => {
                    shared.dead_letter(&part[i..=i], &error.message).await;
                    parts.push_front(&part[i + 1..]);
                    parts.push_front(&part[..i]);
                    break;
                }
                SinkErrorKind::Poison { .. } if part.len() == 1 => {
                    shared.dead_letter(part, &error.message).await;
                    break;
                }
                SinkErrorKind::Poison { .. } => {
                    let (a, b) = part.split_at(part.len() / 2);
                    parts.push_front(b);
                    parts.push_front(a);
                    break;
                }
            }
        }
    }
    Ok(stored)
}

/// Opens the sink, retrying retryable failures for as long as it takes (a destination
/// that is down at start must not cost the sink its restart budget); a fatal one ends
/// the incarnation.
async fn open(sink: &mut dyn Sink, shared: &SinkShared) -> Result<(), String> {
    let retry = &shared.config.retry;
    let mut attempt = 0;
    loop {
        match sink.open().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() => {
                attempt += 1;
                shared.set_error(e.message.clone());
                if attempt == 1 {
                    tracing::warn!(sink = %shared.config.name, error = %e, "sink cannot open its destination; retrying with backoff");
                }
                shared.set_status(SinkStatus::Retrying);
                let delay = SinkShared::backoff(retry.initial_backoff_ms, retry.max_backoff_ms, attempt);
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.message),
        }
    }
}

/// The batch in `pending`, taken from the source first if there is none; `None` once
/// the source has ended.
async fn fill<'a>(shared: &SinkShared, pending: &'a mut Option<Batch>) -> Option<&'a Batch> {
    if pending.is_none() {
        *pending = next_batch(shared).await;
    }
    pending.as_ref()
}

/// Runs one incarnation until the source ends (`Ok`) or a fatal error (`Err`).
pub(crate) async fn run(mut sink: Box<dyn Sink>, shared: Arc<SinkShared>) -> Result<(), String> {
    shared.set_status(SinkStatus::Starting);
    open(sink.as_mut(), &shared).await?;
    shared.set_status(SinkStatus::Running);
    loop {
        // Held while the batch is written: a panic unwinds with the batch still in it.
        let mut pending = shared.pending.lock().await;
        let Some(batch) = fill(&shared, &mut pending).await else {
            break;
        };
        let stored = deliver(sink.as_mut(), &shared, &batch.records).await?;
        acknowledge(&shared, batch, stored);
        *pending = None;
    }
    if let Err(e) = sink.close().await {
        tracing::warn!(sink = %shared.config.name, error = %e, "sink close failed");
    }
    shared.set_status(SinkStatus::Stopped);
    Ok(())
}

/// Quarantine: the sink is given up; everything it would have received goes to its
/// dead-letter topic with `reason`, starting with the batch it failed on.
pub(crate) async fn drain_to_dead_letters(shared: Arc<SinkShared>, reason: String) {
    shared.set_status(SinkStatus::Quarantined);
    loop {
        let mut pending = shared.pending.lock().await;
        let Some(batch) = fill(&shared, &mut pending).await else {
            break;
        };
        shared.dead_letter(&batch.records, &reason).await;
        acknowledge(&shared, batch, 0);
        *pending = None;
    }
}
