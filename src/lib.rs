//! streambus: an actor-model message bus on gRPC bidirectional streams.
//!
//! This root crate re-exports the embeddable core ([`streambus_core`]) and the domain
//! vocabulary ([`streambus_types`]), and adds the network edge:
//!
//! - [`proto`]: the code generated from `proto/` (the only place wire types live);
//! - [`convert`]: wire ⇄ domain conversion and the error-code table;
//! - [`server`]: the gRPC server (bus service, the article's chat service, health,
//!   reflection) and its one shutdown path;
//! - [`client`]: the client SDK (sessions, acks, credits, reconnect);
//! - [`config`]: loading the configuration from a file and the environment.
//!
//! The `streambus` binary (`src/main.rs`) is the CLI: `serve`, `pub`, `sub`, `chat`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), streambus::BusError> {
//! use futures::StreamExt;
//! use streambus::{Bus, BusConfig, SubscriptionOptions};
//!
//! let bus = Bus::start(BusConfig::default()).await?;
//! let mut readings = bus.subscribe("sensors.>", SubscriptionOptions::default()).await?;
//! bus.publish("sensors.dev1.temperature", "21.5").await?;
//! println!("{:?}", readings.next().await);
//! bus.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod client;
pub mod codec;
pub mod config;
pub mod convert;
pub mod proto;
mod quiet;
pub mod server;
pub mod tls;

pub use streambus_core::*;
pub use {streambus_core as core, streambus_types as types};

/// The README's examples, compiled as doc tests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
