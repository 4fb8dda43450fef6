//! The domain vocabulary of streambus, shared by every other crate.
//!
//! This crate has no runtime: no tokio, no actors, no wire format. It names things and
//! checks them.
//!
//! - [`topic`]: topic names and wildcard filters, their validation and matching.
//! - [`message`]: messages as published, deliveries, gaps, close reasons, events.
//! - [`policy`]: subscriber overflow policies and subscription options.
//! - [`error`]: the [`ErrorCode`] set and its gRPC / HTTP mapping table.
//! - [`config`]: the core's configuration structs and their validation.

pub mod config;
pub mod error;
pub mod message;
pub mod policy;
pub mod topic;

pub use config::{BusConfig, ConfigError, SinkConfig};
pub use error::ErrorCode;
pub use message::{CloseReason, Delivery, Event, Gap, Headers, Message};
pub use policy::{OverflowPolicy, SubscriptionOptions};
pub use topic::{Topic, TopicError, TopicFilter};
