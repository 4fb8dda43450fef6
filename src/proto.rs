//! Code generated from `proto/` by `build.rs`: the wire types, the gRPC server traits
//! and the clients. Only [`crate::convert`] turns these into domain types; nothing else
//! in the bus sees them.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]

/// The streambus protocol (`proto/streambus/v1/bus.proto`).
pub mod streambus {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("streambus.v1");
    }
}

/// The original article's echo chat service (`proto/stream/chat.proto`, package `stream`).
pub mod stream {
    tonic::include_proto!("stream");
}

/// The encoded `FileDescriptorSet` of every proto file, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("streambus_descriptor");
