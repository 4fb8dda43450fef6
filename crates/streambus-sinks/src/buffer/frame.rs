//! The frame format of the buffer's segment files, and the scanner that finds frames
//! again in bytes that may be torn or damaged.
//!
//! ```text
//! | body length: u32 LE | CRC32 of version + body: u32 LE | version: u8 | body |
//! body = record id: u64 LE, then the record in bincode (standard config, serde)
//! ```
//!
//! Version 2 added the record's `retain` flag. Version 1 frames (written before it)
//! are still read, as records without the flag, so a buffer left by an older bus
//! drains after an upgrade.
//!
//! [`scan`] looks at the start of a byte slice and says what is there: a valid frame, a
//! frame of another format version, damage to skip (and how far), or a frame cut by the
//! end of the slice. It is a pure function of the bytes, so recovery from any corruption
//! is tested (and fuzzed) without touching a file. Only recovery uses it: its verdict on
//! damage depends on what follows (the next valid frame), so a reader looking at part of
//! a segment could judge the same bytes differently. The reader uses [`exact`] on the
//! ranges recovery found whole, which never searches.

use bincode::error::EncodeError;

use crate::record::Record;

/// Format version written in every frame.
pub(super) const VERSION: u8 = 2;
/// The oldest format version still read.
const OLDEST_VERSION: u8 = 1;
/// Length, CRC and version.
pub(super) const HEADER: usize = 9;
/// Larger frames are taken as corruption (the bus's message limit is far below).
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// What scanning the start of a byte slice found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan<'a> {
    /// A valid frame: its format version, record id, record bytes and whole length.
    Frame {
        version: u8,
        id: u64,
        body: &'a [u8],
        len: usize,
    },
    /// A complete, checksummed frame of a format version this one cannot read.
    Version(u8),
    /// Not a valid frame: skip this many bytes to the next valid frame (or the end).
    Corrupt(usize),
    /// The frame is not complete in this slice.
    Incomplete,
}

fn frame_at(buf: &[u8]) -> Option<(u32, u8, &[u8])> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if !(8..=MAX_FRAME).contains(&len) {
        return None;
    }
    let checked = buf.get(8..HEADER + len)?;
    (crc32fast::hash(checked) == crc).then(|| (crc, checked[0], &checked[1..]))
}

pub(super) fn scan(buf: &[u8]) -> Scan<'_> {
    if buf.len() < HEADER {
        return Scan::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let plausible = (8..=MAX_FRAME).contains(&len) && (OLDEST_VERSION..=VERSION).contains(&buf[8]);
    if plausible && buf.len() < HEADER + len {
        // A frame cut by the end of what is written, or a damaged length: only a valid
        // frame further on tells the two apart.
        return match (1..buf.len()).find(|&k| frame_at(&buf[k..]).is_some()) {
            Some(skip) => Scan::Corrupt(skip),
            None => Scan::Incomplete,
        };
    }
    if let Some((_, version, body)) = frame_at(buf) {
        return found(version, body, len);
    }
    // A flipped byte in the body: the length is right if a valid frame (or the end)
    // follows. Otherwise the length itself is damaged: search for the next frame.
    if plausible {
        let next = HEADER + len;
        if next == buf.len() || frame_at(&buf[next..]).is_some() {
            return Scan::Corrupt(next);
        }
    }
    let skip = (1..buf.len())
        .find(|&k| frame_at(&buf[k..]).is_some())
        .unwrap_or(buf.len());
    Scan::Corrupt(skip)
}

fn found(version: u8, body: &[u8], len: usize) -> Scan<'_> {
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Scan::Version(version);
    }
    let id = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    Scan::Frame {
        version,
        id,
        body: &body[8..],
        len: HEADER + len,
    }
}

/// The frame at the start of bytes that hold whole frames back to back (what recovery
/// found whole, or what was appended since): `Incomplete` when the slice ends inside
/// it, `Corrupt` with the frame's length when the bytes changed after recovery.
pub(super) fn exact(buf: &[u8]) -> Scan<'_> {
    if buf.len() < HEADER {
        return Scan::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(8..=MAX_FRAME).contains(&len) {
        return Scan::Corrupt(buf.len());
    }
    if buf.len() < HEADER + len {
        return Scan::Incomplete;
    }
    match frame_at(buf) {
        Some((_, version, body)) => found(version, body, len),
        None => Scan::Corrupt(HEADER + len),
    }
}

pub(super) fn encode_frame(id: u64, record: &Record, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out[start + 8] = VERSION;
    out.extend_from_slice(&id.to_le_bytes());
    bincode::serde::encode_into_std_write(record, out, bincode::config::standard())?;
    let len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The record in a frame body of format `version`.
pub(super) fn decode_record(version: u8, body: &[u8]) -> Option<Record> {
    if version == 1 {
        let (r, _): (RecordV1, _) = bincode::serde::decode_from_slice(body, bincode::config::standard()).ok()?;
        return Some(Record {
            topic: r.topic,
            sequence: r.sequence,
            timestamp_ns: r.timestamp_ns,
            message_id: r.message_id,
            headers: r.headers,
            payload: r.payload,
            retain: false,
        });
    }
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .ok()
        .map(|(r, _)| r)
}

/// A record as format version 1 wrote it (no `retain` flag).
#[derive(serde::Deserialize, serde::Serialize)]
struct RecordV1 {
    topic: streambus_types::Topic,
    sequence: u64,
    timestamp_ns: u64,
    message_id: String,
    headers: streambus_types::Headers,
    payload: bytes::Bytes,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use streambus_types::Topic;

    use super::*;

    fn record(i: u64) -> Record {
        Record {
            topic: Topic::new("t.x").unwrap(),
            sequence: i,
            timestamp_ns: 1_000 + i,
            message_id: format!("m{i}"),
            headers: vec![("k".to_owned(), format!("v{i}"))].into(),
            payload: Bytes::from(format!("payload-{i}")),
            retain: i.is_multiple_of(2),
        }
    }

    /// Frames round-trip; a flipped body byte and a damaged length are both skipped to
    /// the next frame; a cut frame is incomplete.
    #[test]
    fn frame_scanning() {
        let mut buf = Vec::new();
        for i in 1..=3 {
            encode_frame(i, &record(i), &mut buf).unwrap();
        }
        let Scan::Frame { version, id, body, len } = scan(&buf) else {
            panic!("no frame")
        };
        assert_eq!((id, decode_record(version, body).unwrap()), (1, record(1)));
        let second = len;
        let mut flipped = buf.clone();
        flipped[HEADER + 10] ^= 0xff;
        assert_eq!(scan(&flipped), Scan::Corrupt(second));
        let mut bad_len = buf.clone();
        bad_len[1] ^= 0x40;
        assert_eq!(scan(&bad_len), Scan::Corrupt(second));
        assert_eq!(scan(&buf[..second - 1]), Scan::Incomplete);
        let mut future = Vec::new();
        encode_frame(9, &record(9), &mut future).unwrap();
        future[8] = VERSION + 1;
        let crc = crc32fast::hash(&future[8..]);
        future[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(scan(&future), Scan::Version(VERSION + 1));
    }

    /// A version 1 frame (no `retain` flag) is still found and read, as not retained.
    #[test]
    fn version_1_frames_are_read() {
        let r = record(2);
        let v1 = RecordV1 {
            topic: r.topic.clone(),
            sequence: r.sequence,
            timestamp_ns: r.timestamp_ns,
            message_id: r.message_id.clone(),
            headers: r.headers.clone(),
            payload: r.payload.clone(),
        };
        let mut body = vec![1u8];
        body.extend_from_slice(&7u64.to_le_bytes());
        bincode::serde::encode_into_std_write(&v1, &mut body, bincode::config::standard()).unwrap();
        let mut frame = ((body.len() - 1) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let Scan::Frame { version, id, body, len } = scan(&frame) else {
            panic!("no frame")
        };
        assert_eq!((version, id, len), (1, 7, frame.len()));
        assert_eq!(decode_record(version, body), Some(Record { retain: false, ..r }));
        assert_eq!(exact(&frame), scan(&frame));
    }
}
