//! Any bytes as a disk buffer's segment file (and the ack file from the first bytes):
//! opening recovers what is valid, reading returns records in increasing id order, and
//! acknowledging them empties the buffer; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streambus_sinks::{BufferOptions, DurableBuffer, FsyncPolicy};
use streambus_types::config::WhenFull;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in(std::env::var_os("FUZZ_TMP").unwrap_or_else(|| "/dev/shm".into()))
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    // The first 12 bytes, if the input starts with 'A', are the ack file.
    let segment = match data.split_first() {
        Some((b'A', rest)) if rest.len() >= 12 => {
            std::fs::write(dir.path().join("ack"), &rest[..12]).unwrap();
            &rest[12..]
        }
        _ => data,
    };
    std::fs::write(dir.path().join(format!("{:020}.seg", 1)), segment).unwrap();
    let options = BufferOptions {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 24,
        segment_bytes: 1 << 16,
        fsync: FsyncPolicy::Never,
        when_full: WhenFull::DropNewest,
    };
    let Ok(buffer) = DurableBuffer::open(options) else {
        return;
    };
    let mut last = 0;
    loop {
        let batch = match buffer.try_read(64, 1 << 20) {
            Ok(batch) if !batch.is_empty() => batch,
            _ => break,
        };
        for (id, _) in &batch {
            assert!(*id > last, "ids increase: {id} after {last}");
            last = *id;
        }
        buffer.ack(last).expect("acknowledging what was read");
    }
    assert_eq!(buffer.snapshot().unacked_records, 0);
});
