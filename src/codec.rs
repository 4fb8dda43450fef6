//! The gRPC codec of every service, server and client: prost, with small buffers that
//! grow on demand.
//!
//! tonic's default codec gives each stream an 8 KiB buffer for what it reads and another
//! for what it writes, allocated when the stream opens and kept for its life. At 10,000
//! device streams that is 160 MB held for messages that are mostly a few hundred bytes.
//! These start at 1 KiB and grow when a larger message comes (a 1 MiB batch takes what
//! it needs), so an idle or lightly used stream holds 2 KiB. The yield threshold (how
//! much encoded data the body hands the transport at once) stays tonic's 32 KiB.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of a stream's read and write buffers.
pub const INITIAL_BUFFER_BYTES: usize = 1024;
/// tonic's own initial buffer size.
pub const TONIC_BUFFER_BYTES: usize = 8 * 1024;
/// Encoded bytes the response body gathers before yielding them (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

static INITIAL: AtomicUsize = AtomicUsize::new(INITIAL_BUFFER_BYTES);

/// Sets the initial buffer size of the streams opened from now on, process-wide. The
/// load generator's raw tonic baseline sets [`TONIC_BUFFER_BYTES`], so that it is
/// tonic as it comes.
pub fn set_initial_buffer_bytes(bytes: usize) {
    INITIAL.store(bytes.max(64), Ordering::Relaxed);
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL.load(Ordering::Relaxed), YIELD_THRESHOLD_BYTES)
}

/// Prost encoding with buffers that start small (see the module docs); what the
/// generated services and clients use.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
