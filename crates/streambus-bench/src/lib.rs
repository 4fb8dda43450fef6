//! `streambus-bench`: a load generator for streambus, run like `nats bench`.
//!
//! - [`echo`]: the original article's workload, `stream.ChatService/BidirectionalChat`
//!   over N connections, closed loop with a window of messages in flight per stream.
//! - [`baseline`]: a minimal tonic echo server for the same proto with no actors, the
//!   transport ceiling to compare the bus against.
//! - [`report`]: latency histograms, their merging, the human table and the JSON.
//! - [`proc_stats`]: peak RSS of a server process and this process's CPU, from /proc.
//!
//! It is a client: it talks to servers over gRPC only.

pub mod baseline;
pub mod echo;
pub mod proc_stats;
pub mod report;
