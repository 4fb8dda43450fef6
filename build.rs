//! Generates the gRPC code for the wire protocol (`proto/streambus/v1/bus.proto`) and
//! the article's chat service (`proto/stream/chat.proto`), with a file descriptor set
//! for gRPC reflection.
//!
//! No system `protoc` is needed: the vendored binary from `protoc-bin-vendored` is used
//! unless `PROTOC` is set.

use std::path::PathBuf;

/// Every proto file compiled, relative to the crate root.
const PROTOS: [&str; 2] = ["proto/streambus/v1/bus.proto", "proto/stream/chat.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = tonic_prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The generated `BusClient::connect(addr)` constructor would clash with the
        // `Connect` rpc; clients are built from a `Channel` with `new` instead.
        .build_transport(false)
        // Payloads are `bytes::Bytes`: decoded without a copy, shared with the bus.
        .bytes(".streambus.v1")
        // Buffers that start small and grow on demand (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out_dir.join("streambus_descriptor.bin"))
        .compile_with_config(config, &PROTOS, &["proto"])?;
    Ok(())
}
